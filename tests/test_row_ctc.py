"""train.py's row-CTC: the projected audio scored against the frozen decoder's own embedding rows, <pad> the blank."""
import math

import pytest
import torch
import torch.nn.functional as F

import train as T
from test_projector_fit import PAD, peaky, small_model


def test_row_log_probs_score_each_frames_direction_against_every_row():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(6, 8, generator=g)
    audio = torch.stack([2 * rows[3], 0.5 * rows[1], -rows[2]])[None]  # (1, 3, 8)
    lp = T.row_log_probs(audio, rows)
    assert lp.shape == (1, 3, 6) and lp.dtype == torch.float32
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(1, 3))
    assert lp[0, :2].argmax(-1).tolist() == [3, 1]
    assert lp[0, 2].argmin() == 2  # pointing away from a row is the least likely
    torch.testing.assert_close(T.row_log_probs(7 * audio, rows), lp)  # the size is not scored: the decoder's norm drops it
    # a frame exactly on a row, against a row at cosine 0: ROW_SCALE nats apart
    two = torch.eye(2)
    d = T.row_log_probs(two[:1][None], two)[0, 0]
    assert math.isclose(float(d[0] - d[1]), T.ROW_SCALE, rel_tol=1e-5)


def sequences(n_utts=48, frames=30, seed=0):
    """Encoder outputs (N, T, 24) carrying a token on about 1 frame in 5 (a class mean + noise), <pad> elsewhere;
    the transcripts are those tokens in order (N, max_len) with their lengths."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(40, 24, generator=g) * 2
    ids = torch.where(torch.rand(n_utts, frames, generator=g) < 0.8, PAD, torch.randint(4, 40, (n_utts, frames), generator=g))
    H = means[ids] + 0.1 * torch.randn(n_utts, frames, 24, generator=g)
    texts = [row[row != PAD] for row in ids]
    tokens = torch.nn.utils.rnn.pad_sequence(texts, batch_first=True)
    return H, ids, tokens, torch.tensor([len(t) for t in texts])


def token_accuracy(model, H, ids):
    rows = F.normalize(model.llm.tok_embeddings.weight, dim=-1)
    with torch.no_grad():
        nearest = (F.normalize(model.projector(H), dim=-1) @ rows.T).argmax(-1)
    token = ids != PAD
    return float((nearest[token] == ids[token]).float().mean()), float((nearest[~token] == PAD).float().mean())


def test_row_ctc_alone_teaches_a_projector_to_write_the_decoders_rows():
    """No alignment is given, only the transcripts: the loss finds where each token is and puts its row there,
    and <pad>'s row on the frames between (the layout train_lm.py's copy exercises read)."""
    model = small_model()
    H, ids, tokens, lengths = sequences()
    before, _ = token_accuracy(model, H, ids)
    opt = torch.optim.Adam(model.projector.parameters(), lr=1e-2)
    frames = torch.full((len(H),), H.shape[1])
    for _ in range(150):
        lp = T.row_log_probs(model.projector(H), model.llm.tok_embeddings.weight.detach())
        loss = T.ctc_loss(lp, frames, tokens, lengths, blank=PAD) / len(H)
        loss.backward()
        opt.step()
        opt.zero_grad()
    token, pad = token_accuracy(model, H, ids)
    assert before < 0.2 and token > 0.9 and pad > 0.9, (before, token, pad)
    assert not any(p.grad is not None for p in model.llm.parameters())  # the rows are read, never trained


@pytest.mark.parametrize("kw, match", [
    (dict(stage="ctc", row_ctc_weight=0.3), "e2e-stage option"),
    (dict(stage="ctc", projector_fit=True), "e2e-stage option"),
    (dict(stage="e2e", row_ctc_weight=-1.0), r"in \[0, 100\]"),
    (dict(stage="e2e", row_ctc_weight=float("nan")), r"in \[0, 100\]"),
    (dict(stage="e2e", row_ctc_weight=1e30), r"in \[0, 100\]"),
])
def test_row_ctc_and_fit_flags_are_checked(kw, match):
    cfg = T.TrainConfig(train="x.jsonl", tokenizer="t.model", **kw)
    with pytest.raises(ValueError, match=match):
        T.check_config(cfg)


def test_the_prompt_read_back_merges_repeats_drops_pad_and_stops_at_each_length():
    from listen import prompt_tokens

    llm = small_model().llm
    rows = llm.tok_embeddings.weight.detach()
    path = [PAD, 5, 5, PAD, 7, PAD, 7, 9]
    audio = torch.stack([rows[path], 3 * rows[[8, 8, PAD, 6, 6, 6, 6, 6]]])  # the size of a frame does not matter
    audio = audio + 1e-3 * torch.randn(audio.shape, generator=torch.Generator().manual_seed(0))
    assert prompt_tokens(llm, audio, torch.tensor([7, 4]), PAD) == [[5, 7, 7], [8, 6]]


def test_the_aligned_prompt_puts_each_tokens_exact_row_at_its_aligned_frame():
    """listen.py's `aligned` prompt: what a perfect projector would write at this audio's timing."""
    from listen import aligned_prompt

    model = small_model()
    lp = torch.stack([peaky(8, 40, [(1, 5), (2, 5), (5, 7)]), peaky(8, 40, [(0, 9), (2, 6)])])  # 5 spoken on 2 frames
    model.ctc_log_probs = lambda enc: lp  # the CTC head's output, as planted
    tokens, tok_len = torch.tensor([[5, 7], [9, 6]]), torch.tensor([2, 2])
    prompt = aligned_prompt(model, torch.zeros(2, 8, 24), torch.tensor([8, 3]), tokens, tok_len, PAD)
    rows = model.llm.tok_embeddings.weight
    want = [[PAD, 5, PAD, PAD, PAD, 7, PAD, PAD], [9, PAD, 6, PAD, PAD, PAD, PAD, PAD]]  # first frame of each span
    torch.testing.assert_close(prompt, rows[torch.tensor(want)])
    # frames too few for the tokens (3 tokens, 1 frame): no alignment, <pad> throughout
    short = aligned_prompt(model, torch.zeros(1, 8, 24), torch.tensor([1]), torch.tensor([[5, 7, 9]]),
                           torch.tensor([3]), PAD)
    torch.testing.assert_close(short, rows[PAD].expand(1, 8, -1))
