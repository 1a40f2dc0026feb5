"""
Pretrain a small Llama on Kazakh text, saved in Hugging Face format: the teaching model's frozen decoder.

The released recipe starts from a Kazakh Llama pretrained elsewhere (recipe §3) and freezes it. The teaching
model does the same at toy scale, so `decoder.load_llama` reads ours exactly as it reads the real 300M base:

    python train_lm.py --text data/synth/text/lm.txt --tokenizer data/synth/tokenizer.model --out data/synth/llama

Each line is one normalised segment; lines are tokenised, each followed by EOS (id 0, as the ASR targets end),
packed into blocks of --seq-len tokens, and trained with next-token cross-entropy. Not a general LM trainer: no
data loader workers, no mixed precision, one process.
"""
import argparse
import math
import random
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import cli
from decoder import DEVICES, Llama, LlamaConfig, load_llama, pick_device, save_llama
from tokenizer import Tokenizer


def load_lines(text_path, tokenizer, valid_fraction, seed) -> tuple[list[list[int]], list[list[int]]]:
    """Text file -> (train, valid) lists of token ids, one a line, shuffled."""
    try:
        lines = [l.strip() for l in open(text_path, encoding="utf-8") if l.strip()]
    except OSError as e:
        raise ValueError(f"{text_path}: cannot read ({e.strerror})") from None
    if not lines:
        raise ValueError(f"{text_path}: no text")
    random.Random(seed).shuffle(lines)
    n_valid = max(1, int(len(lines) * valid_fraction))
    ids = [tokenizer.encode(line) for line in lines]
    train, valid = [i for i in ids[n_valid:] if i], [i for i in ids[:n_valid] if i]
    if not train or not valid:  # one line, or lines the tokenizer makes nothing of: no text to learn or measure
        raise ValueError(f"{text_path}: {len(train)} training and {len(valid)} validation lines with tokens "
                         f"(--valid-fraction {valid_fraction}); each needs one")
    return train, valid


def text_blocks(lines: list[list[int]], seq_len: int, eos_id: int) -> torch.Tensor:
    """Lines packed with EOS between them -> (n_blocks, seq_len + 1) token ids (a tiny split wraps round)."""
    ids = [i for line in lines for i in line + [eos_id]]
    n = max(1, (len(ids) - 1) // seq_len)
    need = n * seq_len + 1
    ids = torch.tensor((ids * -(-need // len(ids)))[:need])  # a split shorter than one block repeats to fill it
    return torch.stack([ids[i * seq_len: (i + 1) * seq_len + 1] for i in range(n)])


MAX_SILENCE = 8  # <pad> positions after each "spoken" token, at most: ~5 prompt slots a token, as in the audio


def copy_exercise(ids: list[int], rng: random.Random, pad_id: int, eos_id: int, max_silence: int = MAX_SILENCE,
                  slips: float = 0.0, lines=None, pauses: float = 0.0) -> tuple[list[int], list[int]]:
    """
    One line as a copy exercise shaped like the ASR prompt: the line "spoken" slowly (each token once, as a CTC
    spike, then 0..max_silence positions of <pad> silence), then the line written out, then EOS. Only the written
    part is a target:
        [5, 9] -> inputs  [pad, 5, pad, pad, 9, pad, 5, 9, eos]
                  targets [ -,  -,   -,   -, -,   5, 9, eos, -]
    ~5 prompt positions a token, as 25 audio frames a second carry ~4 tokens. slips > 0: the spoken line has a
    recogniser's slips (misspeak), the written one is still the true line. pauses > 0: timed as speech is (silence):
    that share of the gaps are pauses, and the line starts and ends in longer silence.
    """
    long = pauses > 0 and max_silence > 0
    prompt = [pad_id] * rng.randint(0, 2 * max_silence if long else max_silence)
    for t in misspeak(ids, rng, slips, lines) if slips else ids:
        prompt += [t] + [pad_id] * silence(rng, max_silence, pauses if long else 0.0)
    prompt += [pad_id] * rng.randint(1, max(1, 4 * max_silence if long else max_silence))
    inputs = prompt + ids + [eos_id]
    targets = [-100] * (len(prompt) - 1) + ids + [eos_id, -100]
    return inputs, targets


def silence(rng: random.Random, max_silence: int, pauses: float) -> int:
    """<pad> slots after a spoken token: 0..max_silence, or with chance `pauses` a pause of max_silence+1 to
    3 max_silence. Speech is timed so: between the CTC spikes of the teaching encoder, 1 gap in 10 is longer than
    8 frames (a word boundary, a comma), and a clip ends in ~12 frames of silence on average."""
    if pauses and rng.random() < pauses:
        return rng.randint(max_silence + 1, 3 * max_silence)
    return rng.randint(0, max_silence)


def misspeak(ids: list[int], rng: random.Random, p: float, lines: list[list[int]]) -> list[int]:
    """The line as a recogniser might hear it: each token, with probability p, swapped for a token of a random line
    (2 times in 3) or dropped (1 in 3). The decoder that reads such prompts learns to write the true line where its
    own knowledge of the language outweighs one wrong token, not to copy every slip."""
    out = []
    for t in ids:
        if rng.random() >= p:
            out.append(t)
        elif rng.random() < 2 / 3:
            other = lines[rng.randrange(len(lines))]
            out.append(other[rng.randrange(len(other))])
    return out


def copy_blocks(lines: list[list[int]], n: int, seq_len: int, rng: random.Random, pad_id: int, eos_id: int,
                max_silence: int = MAX_SILENCE, spoken: bool = False, slips: float = 0.0, pauses: float = 0.0):
    """n blocks of copy exercises packed end to end -> (inputs, targets), each (n, seq_len); spoken=True adds a
    third (n, seq_len) bool tensor, True on the spoken (prompt) part of each exercise; slips, pauses:
    copy_exercise's."""
    xs, ys, ss = [], [], []
    for _ in range(n):
        x, y, sp = [], [], []
        while len(x) < seq_len:
            line = lines[rng.randrange(len(lines))]
            a, b = copy_exercise(line, rng, pad_id, eos_id, max_silence, slips, lines, pauses)
            x, y = x + a, y + b
            n_spoken = len(a) - len(line) - 1  # what comes before the written line and its EOS
            sp += [True] * n_spoken + [False] * (len(line) + 1)
        xs.append(x[:seq_len])
        ys.append(y[:seq_len])
        ss.append(sp[:seq_len])
    return (torch.tensor(xs), torch.tensor(ys)) + ((torch.tensor(ss),) if spoken else ())


def blur(embeds, where, max_noise: float, g: torch.Generator):
    """Gaussian noise on the embeddings (B, T, d) at `where` (B, T): each block's noise a uniform draw in
    [0, max_noise] times each row's own rms, so the row keeps a cosine of ~1/sqrt(1 + s^2) with what it was (s=2:
    0.45). A prompt of exact rows is not what a projector writes: the decoder learns to read blurred ones."""
    B, T, d = embeds.shape
    rms = embeds.detach().float().pow(2).mean(-1, keepdim=True).sqrt()  # (B, T, 1)
    size = max_noise * torch.rand(B, 1, 1, generator=g).to(rms.device) * rms * where[..., None]
    return embeds + (torch.randn(B, T, d, generator=g).to(rms.device) * size).to(embeds.dtype)


def lm_loss(model, inputs, targets, embeds=None):  # (B, T) token ids; targets -100 where nothing is predicted
    hidden = model(model.embed(inputs) if embeds is None else embeds)  # embeds: the inputs' rows, changed
    return F.cross_entropy(model.logits(hidden).flatten(0, 1), targets.flatten(), ignore_index=-100)


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", required=True, help="training text, one normalised segment a line")
    p.add_argument("--tokenizer", required=True, help="sentencepiece .model (its ids are the LM's vocabulary)")
    p.add_argument("--out", required=True, help="output folder: config.json + model.safetensors (HF Llama format)")
    # the defaults are the teaching model's decoder (scripts/train_teaching_model.sh)
    p.add_argument("--dim", type=int, default=192, help="hidden size (default: %(default)s)")
    p.add_argument("--n-layers", type=int, default=4, help="transformer layers (default: %(default)s)")
    p.add_argument("--n-heads", type=int, default=4, help="attention heads (default: %(default)s)")
    p.add_argument("--n-kv-heads", type=int, default=4, help="key/value heads, < heads for GQA (default: %(default)s)")
    p.add_argument("--ffn-dim", type=int, default=512, help="SwiGLU hidden size (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per training block (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="blocks per step (default: %(default)s)")
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps (default: %(default)s)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate, cosine decay (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=100, help="warm-up steps (default: %(default)s)")
    p.add_argument("--valid-fraction", type=float, default=0.02, help="lines held out (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype the weights are saved in (default: %(default)s)")
    p.add_argument("--copy-fraction", type=float, default=0.5,
                   help="share of each batch that is copy exercises: a line held slowly then written out, the "
                        "shape of the ASR prompt, so the frozen LM can read the audio (default: %(default)s)")
    p.add_argument("--silence-ramp", type=float, default=0.4,
                   help="share of the steps over which the copy exercises' silences grow from none to "
                        f"{MAX_SILENCE} <pad> positions: plain copying first, then reading past silence; 0: full "
                        "silence from the start, where the copy loss stalls near 2 nats (default: %(default)s)")
    p.add_argument("--copy-noise", type=float, default=0.0,
                   help="blur the copy exercises' spoken part: Gaussian noise on its embeddings, up to this many "
                        "times a row's rms (a uniform draw per block; 2: down to cosine 0.45 with the row), so the "
                        "LM reads a prompt that is only near the right rows, as a projector's is; 0: exact rows "
                        "(default: %(default)s)")
    p.add_argument("--copy-slips", type=float, default=0.0,
                   help="chance that a copy exercise's spoken token slips, as a recogniser's do: swapped for a token "
                        "of a random line (maybe the same one) or dropped; the written line stays true, so the LM "
                        "learns to correct a prompt from what it knows of the language; 0: every spoken token right "
                        "(default: %(default)s)")
    p.add_argument("--copy-pauses", type=float, default=0.0,
                   help="time the copy exercises as speech is: this share of the gaps between spoken tokens are "
                        f"pauses of {MAX_SILENCE + 1}-{3 * MAX_SILENCE} <pad> slots, and each line starts after up to "
                        f"{2 * MAX_SILENCE} and ends in up to {4 * MAX_SILENCE}; 0: gaps of at most {MAX_SILENCE} "
                        "(default: %(default)s)")
    p.add_argument("--eval-every", type=int, default=250,
                   help="steps between validation lines (text and copy-exercise loss) (default: %(default)s)")
    p.add_argument("--init", default=None,
                   help="continue pretraining this Llama folder (a --out of an earlier run): its shape, not --dim "
                        "and the rest; the schedule starts afresh (default: a new model)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where to train; auto: cuda when available, else cpu (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        check_args(args)
        args.device = pick_device(args.device)
        run(args)
    except ValueError as e:  # bad input (CheckpointError is one too): one line, exit 2 (as argparse's errors)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


MAX_PARAMETERS = 10**9  # a one-process CPU trainer of toy decoders: a larger request is a typo, not a plan
MAX_SEQ_LEN = 2048  # the RoPE table run() builds (LlamaConfig.max_seq_len)


def check_args(args):
    """ValueError naming the first flag out of range (argparse checks only the type; nan passes it, as every
    comparison with nan is False), before any text is read or any weight allocated."""
    heads_ok = 1 <= args.n_heads <= args.dim and args.dim % args.n_heads == 0 and args.dim // args.n_heads % 2 == 0
    ranges = [
        ("dim", 2 <= args.dim <= 1 << 16, "in [2, 65536]"), ("n_layers", 1 <= args.n_layers <= 1024, "in [1, 1024]"),
        ("n_heads", heads_ok, f"a count that divides --dim {args.dim} into heads of even size"),
        ("n_kv_heads", 1 <= args.n_kv_heads <= args.n_heads and args.n_heads % args.n_kv_heads == 0,
         f"a count that divides --n-heads {args.n_heads}"),
        ("ffn_dim", 1 <= args.ffn_dim <= 1 << 20, "in [1, 1048576]"),
        ("seq_len", 1 <= args.seq_len <= MAX_SEQ_LEN, f"in [1, {MAX_SEQ_LEN}]"),
        ("batch_size", 1 <= args.batch_size <= 1 << 16, "in [1, 65536]"), ("steps", args.steps >= 1, ">= 1"),
        ("lr", 0 < args.lr < math.inf, "> 0"), ("warmup", args.warmup >= 1, ">= 1 (steps)"),
        ("valid_fraction", 0 <= args.valid_fraction < 1, "in [0, 1)"),
        ("copy_fraction", 0 <= args.copy_fraction <= 1, "in [0, 1]"),
        ("copy_noise", 0 <= args.copy_noise <= 100, "in [0, 100]"),
        ("copy_slips", 0 <= args.copy_slips <= 1, "in [0, 1]"),
        ("copy_pauses", 0 <= args.copy_pauses <= 1, "in [0, 1]"),
        ("silence_ramp", 0 <= args.silence_ramp <= 1, "in [0, 1]"), ("eval_every", args.eval_every >= 1, ">= 1"),
        ("seed", 0 <= args.seed < 2**32, "in [0, 2**32 - 1]"),
    ]
    for name, ok, want in ranges:
        if not ok:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be {want}")
    for name in ("copy_noise", "copy_slips", "copy_pauses"):
        if getattr(args, name) and not round(args.batch_size * args.copy_fraction):
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)}: changes copy exercises, but "
                             f"--copy-fraction {args.copy_fraction:g} makes none"
                             + (f" in a --batch-size {args.batch_size} batch" if args.copy_fraction else ""))
    with torch.device("meta"):  # counted without memory
        n = sum(p.numel() for p in Llama(llama_config(args, vocab_size=1, eos_id=0, pad_id=0)).parameters())
    n += (1 << 20) * args.dim  # the embedding rows of a vocabulary up to 1M ids, before the tokenizer is read
    if n > MAX_PARAMETERS:
        raise ValueError(f"--dim {args.dim}, --n-layers {args.n_layers}, --ffn-dim {args.ffn_dim} make over "
                         f"{MAX_PARAMETERS:.0e} parameters; this trainer is for small decoders")


def llama_config(args, vocab_size: int, eos_id: int, pad_id: int) -> LlamaConfig:
    """The decoder the flags describe (tied embeddings, RoPE tables of MAX_SEQ_LEN positions)."""
    return LlamaConfig(vocab_size=vocab_size, dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads,
                       n_kv_heads=args.n_kv_heads, ffn_dim=args.ffn_dim, max_seq_len=MAX_SEQ_LEN,
                       tie_embeddings=True, bos_id=eos_id, eos_id=eos_id, pad_id=pad_id)


def max_silence(step: int, args) -> int:
    """The longest silence of step `step`'s copy exercises: 0 (plain copying) growing to MAX_SILENCE by
    --silence-ramp of the run. A small LM learns to copy first, then to skip the <pad> slots between tokens."""
    ramp = args.silence_ramp * args.steps
    return MAX_SILENCE if step >= ramp else int(MAX_SILENCE * step / ramp)


def batch(step, train, lines, args, rng, g, pad_id, eos_id):
    """Step `step`'s (inputs, targets, spoken): plain text blocks, and --copy-fraction of them copy exercises;
    spoken (B, T) is True on the exercises' spoken parts."""
    n_copy = round(args.batch_size * args.copy_fraction)
    block = train[torch.randint(len(train), (args.batch_size - n_copy,), generator=g)]
    x, y = block[:, :-1], block[:, 1:]
    spoken = torch.zeros_like(x, dtype=torch.bool)
    if n_copy:
        cx, cy, cs = copy_blocks(lines, n_copy, args.seq_len, rng, pad_id, eos_id, max_silence(step, args), True,
                                 args.copy_slips, args.copy_pauses)
        x, y, spoken = torch.cat([x, cx]), torch.cat([y, cy]), torch.cat([spoken, cs])
    return x, y, spoken


@torch.no_grad()
def evaluate(model, blocks: tuple, max_noise: float = 0.0) -> float:
    """Mean CE per target token over (inputs, targets[, spoken]); max_noise: spoken parts blurred (the same noise
    every call)."""
    x, y, *spoken = (b.to(model.tok_embeddings.weight.device) for b in blocks)
    g = torch.Generator().manual_seed(0)
    tot = n = 0
    for i in range(0, len(x), 32):
        k = int((y[i: i + 32] != -100).sum())
        embeds = blur(model.embed(x[i: i + 32]), spoken[0][i: i + 32], max_noise, g) if max_noise else None
        tot, n = tot + lm_loss(model, x[i: i + 32], y[i: i + 32], embeds).item() * k, n + k
    return tot / max(1, n)


def copy_report(model, valid_copy, args, valid_slips=None, valid_pauses=None) -> str:
    """The validation copy-exercise loss, with --copy-noise the same exercises blurred, with --copy-slips
    exercises whose spoken lines slip, with --copy-pauses exercises timed as speech (valid_slips, valid_pauses: the
    same seed, but slips and pauses change the draws after them, so not the same exercises)."""
    text = f"copy-exercise loss {evaluate(model, valid_copy):.3f}"
    text += (f", blurred (up to {args.copy_noise:g}x) {evaluate(model, valid_copy, args.copy_noise):.3f}"
             if args.copy_noise else "")
    blurred = " and blurred" if args.copy_noise else ""
    text += (f", with slips{blurred} {evaluate(model, valid_slips, args.copy_noise):.3f}" if valid_slips else "")
    return text + (f", with pauses{blurred} {evaluate(model, valid_pauses, args.copy_noise):.3f}"
                   if valid_pauses else "")


def run(args):
    torch.manual_seed(args.seed)
    tok = Tokenizer.load(args.tokenizer)
    lines, valid_lines = load_lines(args.text, tok, args.valid_fraction, args.seed)
    train, valid = text_blocks(lines, args.seq_len, tok.eos_id), text_blocks(valid_lines, args.seq_len, tok.eos_id)
    if args.init:
        model = load_llama(args.init, device=args.device)
        if model.vocab_size != tok.vocab_size:
            raise ValueError(f"{args.init}: {model.vocab_size} rows, but {args.tokenizer} has {tok.vocab_size} ids")
        model.requires_grad_(True)  # load_llama freezes: here it is the one being trained
    else:
        model = Llama(llama_config(args, tok.vocab_size, tok.eos_id, tok.pad_id)).to(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params / 1e6:.2f}M parameters, {len(train)} text blocks of {args.seq_len} tokens, "
          f"{args.copy_fraction:.0%} of each batch copy exercises")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    g, rng = torch.Generator().manual_seed(args.seed), random.Random(args.seed)
    valid_text = (valid[:64, :-1], valid[:64, 1:])
    valid_copy = copy_blocks(valid_lines, 32, args.seq_len, random.Random(args.seed), tok.pad_id, tok.eos_id,
                             spoken=True)
    valid_slips = copy_blocks(valid_lines, 32, args.seq_len, random.Random(args.seed), tok.pad_id, tok.eos_id,
                              spoken=True, slips=args.copy_slips) if args.copy_slips else None
    valid_pauses = copy_blocks(valid_lines, 32, args.seq_len, random.Random(args.seed), tok.pad_id, tok.eos_id,
                               spoken=True, pauses=0.1) if args.copy_pauses else None  # the audio's own rate
    if args.copy_fraction > 0 and not (valid_copy[1] != -100).any():  # every exercise cut before its written part
        raise ValueError(f"--seq-len {args.seq_len}: too short for a copy exercise of these lines (a line's tokens, "
                         f"each with up to {MAX_SILENCE} slots of silence, then the line again); raise it or "
                         "give --copy-fraction 0")
    bar = tqdm(range(args.steps), dynamic_ncols=True)
    t0 = time.time()
    for step in bar:
        warm = min(1.0, (step + 1) / args.warmup)
        lr = args.lr * warm * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        x, y, spoken = batch(step, train, lines, args, rng, g, tok.pad_id, tok.eos_id)
        x, y = x.to(args.device), y.to(args.device)
        embeds = blur(model.embed(x), spoken.to(args.device), args.copy_noise, g) if args.copy_noise else None
        loss = lm_loss(model, x, y, embeds)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.1e}")
        if (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            model.eval()
            report = copy_report(model, valid_copy, args, valid_slips, valid_pauses)
            tqdm.write(f"step {step + 1}: valid text loss {evaluate(model, valid_text):.3f}, {report} "
                       f"(silences up to {max_silence(step, args)})")
            model.train()
    model.eval()
    v = evaluate(model, (valid[:, :-1], valid[:, 1:]))
    print(f"done in {time.time() - t0:.0f} s: train loss {loss.item():.3f}, valid loss {v:.3f} "
          f"(perplexity {math.exp(v):.1f}), valid {copy_report(model, valid_copy, args, valid_slips, valid_pauses)}")
    save_llama(model.to(getattr(torch, args.dtype)), args.out)


if __name__ == "__main__":
    main()
