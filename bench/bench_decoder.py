"""Benchmark decoder.py at the release's decoder size: prefill and one cached greedy step (B=1).

Random weights built in memory (no download): the base Llama of recipe §3 (50257 ids, hidden 1024, ffn 3584,
18 layers, 16 heads), extended to 100000 ids as the release does. A decoding step with batch 1 reads every
weight once (the 100000-row output head included), so it is bound by memory bandwidth: the script prints the
bytes a step reads, the GB/s achieved and the fraction of the --bandwidth floor, then the top ops from
torch.profiler. Run: python bench/bench_decoder.py [--dtypes float32 bfloat16] [--steps 20]
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from decoder import Llama, LlamaConfig  # noqa: E402

RELEASE = LlamaConfig(vocab_size=50257, dim=1024, n_layers=18, n_heads=16, n_kv_heads=16, ffn_dim=3584)


def step_bytes(model: Llama, cache_len: int, dtype: torch.dtype) -> int:
    """Bytes one cached step must read: every weight but the embedding lookup's one row, plus the KV cache."""
    size = torch.finfo(dtype).bits // 8
    weights = sum(p.numel() for p in model.parameters()) * size  # tied: the embedding matrix is the output head
    c = model.config
    return weights + 2 * c.n_layers * c.n_kv_heads * cache_len * c.head_dim * size


def decode_step(model, caches, token, pos):
    """One greedy step: (1, 1) id -> next (1, 1) id, through embed, forward with the cache, logits, argmax."""
    hidden = model(model.embed(token), pos, caches)  # (1, 1, dim)
    return model.logits(hidden).argmax(-1)  # (1, 1)


def bench(model, dtype, args):
    """Print prefill ms, step ms, GB/s and the fraction of the bandwidth floor for one dtype."""
    dim = model.config.dim
    caches = model.new_caches(1, args.prefix + args.steps + args.warmup + args.profile_steps + 1, dtype=dtype)
    audio = torch.randn(1, args.prefix, dim, dtype=dtype)  # stands in for the projected audio embeddings
    prefill = []
    for _ in range(args.prefill_reps):
        t0 = time.perf_counter()
        token = model.logits(model(audio, 0, caches)[:, -1:]).argmax(-1)  # (1, 1)
        prefill.append((time.perf_counter() - t0) * 1e3)
    pos, times = args.prefix, []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        token = decode_step(model, caches, token, pos)
        if i >= args.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
        pos += 1
    ms = statistics.median(times)
    nbytes = step_bytes(model, pos, dtype)
    floor_ms = nbytes / (args.bandwidth * 1e9) * 1e3
    name = str(dtype).removeprefix("torch.")
    print(f"{name}: prefill {args.prefix} frames {statistics.median(prefill):.1f} ms (median of {args.prefill_reps})")
    print(f"{name}: step {ms:.1f} ms median, {min(times):.1f} min, {statistics.mean(times):.1f} mean "
          f"over {args.steps}; reads {nbytes / 1e9:.3f} GB -> {nbytes / ms / 1e6:.1f} GB/s, "
          f"floor {floor_ms:.1f} ms at {args.bandwidth:g} GB/s = {floor_ms / ms:.0%} of the floor")
    if args.profile_steps:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(args.profile_steps):
                token = decode_step(model, caches, token, pos)
                pos += 1
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"],
                   help="weight and activation dtypes to time, in order (default: both)")
    p.add_argument("--vocab", type=int, default=100000, help="ids after extend_vocab (release: 100000)")
    p.add_argument("--prefix", type=int, default=376, help="prefill length: audio frames of 15 s (default 376)")
    p.add_argument("--steps", type=int, default=20, help="timed decoding steps (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--prefill-reps", type=int, default=3, help="prefills timed; the median is printed (default 3)")
    p.add_argument("--profile-steps", type=int, default=5, help="steps under torch.profiler; 0 = no profile")
    p.add_argument("--top", type=int, default=12, help="ops shown from the profile (default 12)")
    p.add_argument("--bandwidth", type=float, default=16.0, help="memory bandwidth in GB/s for the floor (default 16)")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = Llama(RELEASE).freeze().eval()
    model.extend_vocab(args.vocab, trainable=False)
    print(f"built {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters in "
          f"{time.perf_counter() - t0:.1f} s (vocab {RELEASE.vocab_size} -> {model.vocab_size})")
    with torch.inference_mode():
        for name in args.dtypes:
            dtype = getattr(torch, name)
            model.to(dtype)  # in place: float32 then bfloat16 never holds two copies
            bench(model, dtype, args)


if __name__ == "__main__":
    main()
