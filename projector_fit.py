"""
The teaching model's projector fit: before its e2e stage, the projector is solved for, not left at random.

The teaching decoder learnt to copy (train_lm.py's copy exercises): a line "spoken" one token at a time with <pad>
silence between, then written out. After the ctc stage the encoder knows where each token of the transcript is
spoken (ctc.forced_align of the reference). So each audio frame has a target the frozen decoder already reads:
the embedding row of the token spoken there (the first frame of its span), and <pad>'s row on every other frame.

The projector is Linear then RMSNorm (recipe §2). Its Linear is the least-squares fit (ridge) of those rows on the
encoder output; the norm's gain is set to the rows' typical size. The e2e stage then starts from a decoder that
already reads the audio, and training refines the fit through the CE loss as the recipe says (and, in the teach
preset, through train.py's row-CTC, which keeps the frames on the decoder's rows). The released model
started its projector at random: `train.py --no-projector-fit`.

    python train.py --stage e2e                         # the teach preset fits the projector first
"""
import torch
import torch.nn.functional as F

from ctc import forced_align
from dataset import collate


def frame_targets(log_probs: torch.Tensor, tokens: list[int], pad_id: int) -> torch.Tensor | None:
    """(T, V) CTC log-probs of one utterance, its transcript ids -> (T,) ids: each token at the first frame of its
    forced-aligned span, pad_id elsewhere ([5, 9] over 6 frames -> [pad, 5, pad, pad, 9, pad]); None when the
    frames are too few for the tokens."""
    spans = forced_align(log_probs, tokens)
    if spans is None:
        return None
    ids = torch.full((log_probs.shape[0],), pad_id, dtype=torch.long)
    for token, (first, _) in zip(tokens, spans):
        ids[first] = token
    return ids


@torch.no_grad()
def collect(model, dataset, pad_id: int, max_utts: int, batch_size: int = 16):
    """Encoder outputs (N, d_enc) and frame targets (N,) of the first max_utts utterances of dataset."""
    device = next(model.parameters()).device
    feats, targets = [], []
    n = min(max_utts, len(dataset))
    for start in range(0, n, batch_size):
        batch = collate([dataset[i] for i in range(start, min(n, start + batch_size))])
        if not batch["size"]:
            continue
        enc, _, lengths = model.encode(batch["mel"].to(device), batch["mel_lengths"].to(device))
        log_probs = model.ctc_log_probs(enc)
        for b in range(batch["size"]):
            T = int(lengths[b])
            ids = frame_targets(log_probs[b, :T], batch["tokens"][b, : batch["token_lengths"][b]].tolist(), pad_id)
            if ids is not None:
                feats.append(enc[b, :T].float().cpu())
                targets.append(ids)
    if not feats:
        raise ValueError("projector fit: no utterance could be aligned")
    return torch.cat(feats), torch.cat(targets)


@torch.no_grad()
def fit_projector(model, dataset, pad_id: int, max_utts: int = 512, token_weight: float = 4.0,
                  ridge: float = 1e-2) -> dict:
    """Solve model.projector for the frame targets of dataset's first max_utts utterances; returns figures.

    Weighted least squares: the few token frames weigh token_weight times a <pad> frame, so the fit does not settle
    for <pad> everywhere. The fit is exact maths (no randomness), so a run started twice starts the same.
    """
    was_training = model.training
    model.eval()  # no dropout: the fit sees the encoder as decoding will
    H, ids = collect(model, dataset, pad_id, max_utts)
    emb = model.llm.embed(ids.to(model.llm.tok_embeddings.weight.device)).float().cpu()  # (N, d_dec) rows to hit
    X = torch.cat([H, torch.ones(len(H), 1)], dim=1).double()  # the bias as a last input of ones
    w = torch.where(ids == pad_id, 1.0, token_weight).double()[:, None]
    A = X.T @ (w * X)
    A += ridge * A.diagonal().mean() * torch.eye(len(A), dtype=A.dtype)
    W = torch.linalg.solve(A, X.T @ (w * emb.double())).float()  # (d_enc + 1, d_dec)
    proj = model.projector
    proj.linear.weight.copy_(W[:-1].T)
    proj.linear.bias.copy_(W[-1])
    proj.norm.weight.fill_(float(emb.pow(2).mean(-1).sqrt().mean()))  # RMSNorm: unit rms x gain = the rows' size
    # how often the embedding row nearest in direction to a projected frame is its target (the decoder's first
    # RMSNorm keeps only the direction): the fit's accuracy, before e2e
    rows = F.normalize(model.llm.tok_embeddings.weight.float().cpu(), dim=-1)
    nearest = torch.cat([(proj(H[i: i + 4096].to(proj.linear.weight.device)).float().cpu() @ rows.T).argmax(-1)
                         for i in range(0, len(H), 4096)])
    token = ids != pad_id
    model.train(was_training)
    return dict(frames=len(ids), token_frames=int(token.sum()),
                token_accuracy=float((nearest[token] == ids[token]).float().mean()),
                pad_accuracy=float((nearest[~token] == ids[~token]).float().mean()))
