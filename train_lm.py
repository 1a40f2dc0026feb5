"""
Pretrain a small Llama on Kazakh text, saved in Hugging Face format: the teaching model's frozen decoder.

The released recipe starts from a Kazakh Llama pretrained elsewhere (SPEC section 3) and freezes it. The teaching
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

from decoder import Llama, LlamaConfig, save_llama
from tokenizer import Tokenizer


def load_blocks(text_path, tokenizer, seq_len, valid_fraction, seed):
    """Text file -> (train, valid) LongTensors of shape (n_blocks, seq_len + 1), packed with EOS between lines."""
    try:
        lines = [l.strip() for l in open(text_path, encoding="utf-8") if l.strip()]
    except OSError as e:
        raise ValueError(f"{text_path}: cannot read ({e.strerror})") from None
    if not lines:
        raise ValueError(f"{text_path}: no text")
    random.Random(seed).shuffle(lines)
    n_valid = max(1, int(len(lines) * valid_fraction))
    out = []
    for part in (lines[n_valid:], lines[:n_valid]):
        ids = [i for line in part for i in tokenizer.encode(line) + [tokenizer.eos_id]]
        n = max(1, (len(ids) - 1) // seq_len)
        ids = torch.tensor((ids * 2)[: n * seq_len + 1])  # a tiny valid split may need to wrap once
        out.append(torch.stack([ids[i * seq_len: (i + 1) * seq_len + 1] for i in range(n)]))
    return out


def lm_loss(model, block):  # block: (B, T+1) token ids
    hidden = model(model.embed(block[:, :-1]))
    return F.cross_entropy(model.logits(hidden).flatten(0, 1), block[:, 1:].flatten())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", required=True, help="training text, one normalised segment a line")
    p.add_argument("--tokenizer", required=True, help="sentencepiece .model (its ids are the LM's vocabulary)")
    p.add_argument("--out", required=True, help="output folder: config.json + model.safetensors (HF Llama format)")
    p.add_argument("--dim", type=int, default=256, help="hidden size (default: %(default)s)")
    p.add_argument("--n-layers", type=int, default=4, help="transformer layers (default: %(default)s)")
    p.add_argument("--n-heads", type=int, default=4, help="attention heads (default: %(default)s)")
    p.add_argument("--n-kv-heads", type=int, default=4, help="key/value heads, < heads for GQA (default: %(default)s)")
    p.add_argument("--ffn-dim", type=int, default=704, help="SwiGLU hidden size (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per training block (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="blocks per step (default: %(default)s)")
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps (default: %(default)s)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate, cosine decay (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=100, help="warm-up steps (default: %(default)s)")
    p.add_argument("--valid-fraction", type=float, default=0.02, help="lines held out (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype the weights are saved in (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        run(args)
    except ValueError as e:
        sys.exit(f"error: {e}")


def run(args):
    torch.manual_seed(args.seed)
    tok = Tokenizer.load(args.tokenizer)
    train, valid = load_blocks(args.text, tok, args.seq_len, args.valid_fraction, args.seed)
    cfg = LlamaConfig(vocab_size=tok.vocab_size, dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads,
                      n_kv_heads=args.n_kv_heads, ffn_dim=args.ffn_dim, max_seq_len=2048, tie_embeddings=True,
                      bos_id=tok.eos_id, eos_id=tok.eos_id, pad_id=tok.pad_id)
    model = Llama(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params / 1e6:.2f}M parameters, {len(train)} training blocks of {args.seq_len} tokens")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(args.seed)
    bar = tqdm(range(args.steps), dynamic_ncols=True)
    t0 = time.time()
    for step in bar:
        warm = min(1.0, (step + 1) / args.warmup)
        lr = args.lr * warm * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = lm_loss(model, train[torch.randint(len(train), (args.batch_size,), generator=g)])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.1e}")
    model.eval()
    with torch.no_grad():
        v = sum(lm_loss(model, valid[i: i + 64]).item() * len(valid[i: i + 64]) for i in range(0, len(valid), 64))
    v /= len(valid)
    print(f"done in {time.time() - t0:.0f} s: train loss {loss.item():.3f}, valid loss {v:.3f} "
          f"(perplexity {math.exp(v):.1f})")
    save_llama(model.to(getattr(torch, args.dtype)), args.out)


if __name__ == "__main__":
    main()
