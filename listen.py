"""
Does the decoder listen? The cross-entropy of the true transcripts under three prompts.

The frozen Llama continues [audio embeddings | text] with the transcript (recipe §4). If it reads the audio, the
transcript is much more likely after its own audio than after someone else's. Three numbers, in nats per target
token (the text's tokens and EOS, no label smoothing):

    own       each utterance's own audio, as in training
    shuffled  the audio of another utterance of the set (each item paired with the next one)
    none      no audio: a single EOS as the prompt, the text-only LM's own start of a line

With the model's tokenizer it also scores a fourth prompt, and reads the prompt back as text:

    aligned   the prompt a perfect projector would write at this audio's own timing: each transcript token's
              exact decoder row at the first frame CTC aligns it to, <pad>'s row on every other frame (the layout
              of projector_fit.py's targets and of train_lm.py's copy exercises)

own - aligned is what the projector loses; aligned itself is what the decoder loses to the audio's timing (its
pauses, its silence at the end) even when every row is exact. The prompt read back as text: each projected audio
frame as the decoder row nearest it in direction (what the decoder's first norm keeps), repeats merged and <pad>
dropped, as CTC's greedy path with <pad> as the blank. Its CER against the transcripts says how plainly the
projector writes what was said in the decoder's own words (the layout train_lm.py's copy exercises teach the
decoder to read).

gap = shuffled - own. Near 0: the decoder writes from its language model alone and the audio is decoration (then only
CTC carries recognition). A few nats: the transcript is written from the audio. own < none < shuffled is the usual
order: someone else's audio misleads more than none.

    python listen.py --manifest data/synth/test.jsonl               # the shipped teaching model
    python listen.py --manifest valid.jsonl --model runs/e2e/best --max-utts 100

A row whose audio cannot be read (missing, a FIFO or a device, a broken header) is one line on stderr naming
manifest:line and the file; the others are measured and the exit status is 1, as decode.py's.
"""
import argparse
import sys

import torch

import cli
from dataset import SpeechDataset, audio_problem, collate, read_manifest
from decoder import DEVICES, pick_device
from tokenizer import Tokenizer
from wer import ErrorStats, corpus_stats


@torch.no_grad()
def listen_sums(model, batch, eos_id: int, encoded=None, pad_id: int | None = None) -> dict:
    """Summed CE (nats) of one batch under the three prompts, and the number of target tokens. Needs >= 2 items.
    encoded: the batch's model.encode output, when the caller has it already; pad_id: also under aligned_prompt."""
    from train import ce_loss, ce_targets  # the training loss: the diagnostic measures what training optimises

    mel, mel_len, tokens, tok_len = batch["mel"], batch["mel_lengths"], batch["tokens"], batch["token_lengths"]
    B = tokens.shape[0]
    if B < 2:
        raise ValueError("the listen test needs at least 2 utterances (one's audio prompts another's text)")
    enc, audio, audio_len = encoded or model.encode(mel, mel_len)  # (B, T', D)
    none = model.llm.embed(torch.full((B, 1), eos_id, dtype=torch.long, device=tokens.device)).to(audio.dtype)
    roll = torch.roll(torch.arange(B, device=tokens.device), -1)  # item b hears item b+1's audio
    targets = ce_targets(tokens, tok_len, eos_id)
    ce = lambda a, n: ce_loss(model.text_logits(a, n, tokens), targets, 0.0).item()  # noqa: E731
    sums = dict(own=ce(audio, audio_len), shuffled=ce(audio[roll], audio_len[roll]),
                none=ce(none, torch.ones(B, dtype=torch.long, device=tokens.device)),
                tokens=float(tok_len.sum() + B))
    if pad_id is not None:
        sums["aligned"] = ce(aligned_prompt(model, enc, audio_len, tokens, tok_len, pad_id), audio_len)
    return sums


@torch.no_grad()
def prompt_tokens(llm, audio, lengths, pad_id: int) -> list[list[int]]:
    """Projected audio (B, T', d) and lengths (B,) -> each item's prompt read as tokens: every frame's nearest row
    (cosine), repeats merged, <pad> dropped: rows of [pad, 5, 5, pad, 7, pad, 7] -> [5, 7, 7]."""
    from train import row_log_probs

    rows = llm.rows()
    best = row_log_probs(audio, rows).argmax(-1).tolist()  # (B, T')
    out = []
    for path, n in zip(best, lengths.tolist()):
        path = path[:n]
        out.append([t for i, t in enumerate(path) if t != pad_id and (i == 0 or t != path[i - 1])])
    return out


@torch.no_grad()
def aligned_prompt(model, enc, lengths, tokens, token_lengths, pad_id: int):
    """Encoder output (B, T', d_enc) and lengths (B,) -> (B, T', d) prompts of exact decoder rows: each token of
    the transcript at the first frame of its CTC forced alignment, <pad> elsewhere (projector_fit.frame_targets);
    an item whose frames are too few for its tokens keeps <pad> throughout."""
    from projector_fit import frame_targets

    log_probs = model.ctc_log_probs(enc)
    ids = torch.full(enc.shape[:2], pad_id, dtype=torch.long)
    for b, (n, k) in enumerate(zip(lengths.tolist(), token_lengths.tolist())):
        path = frame_targets(log_probs[b, :n], tokens[b, :k].tolist(), pad_id)
        if path is not None:
            ids[b, :n] = path
    return model.llm.embed(ids.to(enc.device)).to(enc.dtype)


def items(batch) -> list[dict]:
    """A padded batch back into its items (mel and tokens cut to their lengths)."""
    return [dict(mel=batch["mel"][i, :, : batch["mel_lengths"][i]], tokens=batch["tokens"][i, : batch["token_lengths"][i]])
            for i in range(batch["size"])]


def listen_batches(loader):
    """Batches of >= 2 items: a batch of one (the last, or one that lost rows it could not read) joins a neighbour."""
    held = None
    for batch in loader:
        if not batch["size"]:
            continue
        if held is not None and min(held["size"], batch["size"]) < 2:
            batch, held = collate(items(held) + items(batch)), None
        if held is not None:
            yield held
        held = batch
    if held is not None:
        yield held


def listen(model, loader, eos_id: int, device="cpu", max_utts: int = 0, tokenizer=None) -> dict:
    """Mean CE per target token under each prompt, over the loader's batches (the first max_utts, 0 = all); with a
    tokenizer, also aligned (the CE after aligned_prompt) and prompt_cer: the CER of the prompts read back as text
    (prompt_tokens)."""
    was_training = model.training
    model.eval()
    tot = dict(own=0.0, shuffled=0.0, none=0.0, aligned=0.0, tokens=0.0)
    seen, refs, hyps = 0, [], []
    pad_id = None if tokenizer is None else tokenizer.pad_id  # the aligned prompt needs the <pad> row
    for batch in listen_batches(loader):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.no_grad():
            encoded = model.encode(batch["mel"], batch["mel_lengths"])
        for k, v in listen_sums(model, batch, eos_id, encoded, pad_id).items():
            tot[k] += v
        if tokenizer is not None:
            _, audio, lengths = encoded
            hyps += [tokenizer.decode(t) for t in prompt_tokens(model.llm, audio, lengths, tokenizer.pad_id)]
            refs += [tokenizer.decode(t[:n].tolist()) for t, n in zip(batch["tokens"], batch["token_lengths"])]
        seen += batch["size"]
        if max_utts and seen >= max_utts:
            break
    model.train(was_training)
    if not tot["tokens"]:
        raise ValueError("no utterance with readable audio and a transcript to test")
    out = {k: tot[k] / tot["tokens"] for k in ("own", "shuffled", "none")}
    out["gap"] = out["shuffled"] - out["own"]
    out["utterances"] = seen
    if tokenizer is not None:
        out["aligned"] = tot["aligned"] / tot["tokens"]
        out["prompt_cer"] = sum(corpus_stats(refs, hyps, "char"), ErrorStats()).rate
    return out


def readable_rows(rows, manifest) -> tuple[list, int]:
    """The rows whose audio header mel.open_audio accepts, and how many were not: each of those is one line on
    stderr naming manifest:line and the file, as decode.py names a file it cannot read."""
    good = []
    for row in rows:
        problem, _ = audio_problem(row["audio_filepath"])
        if problem:
            print(f"listen.py: {manifest}:{row['_line']}: {row['audio_filepath']}: {problem}", file=sys.stderr)
        else:
            good.append(row)
    return good, len(rows) - len(good)


def main(argv=None) -> int:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="JSONL manifest (audio_filepath, text) of the utterances to test")
    p.add_argument("--model", default="models/teach", help="model folder (default: %(default)s, the teaching model)")
    p.add_argument("--decoder", default=None, help="decoder folder, if not the one the model folder names")
    p.add_argument("--max-utts", type=int, default=0, help="test only the first N utterances; 0 = all (default: 0)")
    p.add_argument("--batch-size", type=int, default=16, help="utterances per batch (default: %(default)s)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where to run; auto: cuda when available, else cpu (default: %(default)s)")
    args = p.parse_args(argv)
    if args.batch_size < 2 or args.max_utts < 0:
        p.error("--batch-size must be >= 2 and --max-utts >= 0")
    from model import load_model, tokenizer_path

    try:
        device = pick_device(args.device)
        model = load_model(args.model, decoder=args.decoder, device=device)
        tokenizer = Tokenizer.load(str(tokenizer_path(args.model)))
        rows, unreadable = readable_rows(read_manifest(args.manifest), args.manifest)
        data = SpeechDataset(rows, tokenizer, max_seconds=15.0, n_mels=model.encoder.cfg.n_mels,
                             level_dbfs=model.level_dbfs)  # the model's own front end, as decode.py
        loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, collate_fn=collate)
        r = listen(model, loader, tokenizer.eos_id, device=device, max_utts=args.max_utts, tokenizer=tokenizer)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{r['utterances']} utterances, CE in nats/token: own audio {r['own']:.3f}, shuffled audio "
          f"{r['shuffled']:.3f}, no audio {r['none']:.3f}; listen gap (shuffled - own) {r['gap']:.3f}")
    print(f"a perfect projector's prompt (the transcript's exact rows at the CTC-aligned frames): CE "
          f"{r['aligned']:.3f}")
    print(f"the prompt read back as text (each frame's nearest decoder row): CER {100 * r['prompt_cer']:.1f} %")
    return 1 if unreadable else 0  # decode.py's status when some file could not be read


if __name__ == "__main__":
    sys.exit(main())
