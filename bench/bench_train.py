"""Training-step cost of our E2E loss against the original's way, measured side by side in one run (by hand).

    python bench/bench_train.py --small          # 2-4 minutes on one CPU thread
    python bench/bench_train.py                  # the release's dimensions (needs a GPU or much patience and RAM)

Both variants share the same random weights, the same batch and a frozen decoder; the encoder, projector and CTC
head train. One step = forward + backward (+ AdamW with --adamw).
- ours:     train.Objective with the defaults (padding masks, label smoothing 0.1, CE logits only at the L+1
            positions that predict text; recipe §4). "ours, no masks": the same with --no-masks and no
            smoothing, i.e. the original's maths; the two take turns step by step in one process.
- original: transformers' LlamaForCausalLM(inputs_embeds=cat([audio, embed(text + EOS)]), labels) with -100 on the
            audio and padding, so it projects EVERY position (audio frames included) onto the vocabulary and takes its
            own shifted CE; CTC over the padded length; 0.7 CE + 0.3 CTC (transformers is dev-only, imported here).
The decoder is one random HF Llama saved with save_pretrained and read by both transformers and decoder.load_llama,
its vocabulary extended with frozen mean rows as the release (recipe §3). Each variant runs in a fresh
process: a step's peak memory is the growth of the resident set over what the step started with (VmHWM, reset
before each step via /proc/self/clear_refs; glibc told to unmap freed tensors at once) on CPU,
torch.cuda.max_memory_allocated growth on CUDA (bf16 autocast there). Wall and process CPU time are both reported.
Also checks that the two losses agree when ours is set to the original's maths (masks off, no smoothing, no dropout).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from decoder import load_llama  # noqa: E402
from encoder import ENCODER_PRESETS, EncoderConfig, subsampled_lengths  # noqa: E402
from mel import N_MELS, SAMPLE_RATE, n_frames  # noqa: E402
from model import ASRModel  # noqa: E402
from train import Objective, TrainConfig  # noqa: E402

SMALL = dict(layers=6, batch=2, seconds=8.0, text=50)  # --small: vocabulary kept, it is where the saving is


def make_batch(args, device):
    """Random mels (B, 80, T) with lengths from 60% to 100% of --seconds, tokens (B, L) padded with 0."""
    g = torch.Generator().manual_seed(0)
    T = n_frames(int(args.seconds * SAMPLE_RATE))
    mel_lengths = torch.linspace(T, 0.6 * T, args.batch).long()  # the longest item fills the batch
    token_lengths = torch.linspace(args.text, 0.6 * args.text, args.batch).long()
    tokens = torch.randint(2, args.vocab, (args.batch, args.text), generator=g)  # no EOS inside the text
    tokens = tokens * (torch.arange(args.text)[None] < token_lengths[:, None])
    mel = torch.randn(args.batch, N_MELS, T, generator=g) * (torch.arange(T)[None] < mel_lengths[:, None])[:, None]
    return [t.to(device) for t in (mel, mel_lengths, tokens, token_lengths)]


def front(args, llm=None):
    """The trained parts, seeded alike in both processes: ASRModel builds encoder, projector, ctc head in this order."""
    torch.manual_seed(0)
    cfg = EncoderConfig(**ENCODER_PRESETS[args.encoder], dropout=0.1)
    if llm is not None:
        return ASRModel(cfg, llm, args.vocab)
    from encoder import AudioEncoder, Projector
    m = torch.nn.Module()
    m.encoder, m.projector = AudioEncoder(cfg), Projector(cfg.dim, args.dim, cfg.norm_eps)
    m.ctc_head = torch.nn.Linear(cfg.dim, args.vocab)
    return m


def ours(args, folder, device):
    """(model, {name: step loss}, original-maths loss) for train.Objective on our decoder."""
    llm = load_llama(folder)
    llm.extend_vocab(args.vocab, trainable=False)  # frozen mean rows, as the release
    model = front(args, llm).to(device)
    model.llm.requires_grad_(False)
    fixed = Objective(model, TrainConfig(stage="e2e"), eos_id=0)  # masks on, label smoothing 0.1
    orig = Objective(model, TrainConfig(stage="e2e", masks=False, label_smoothing=0.0), eos_id=0)

    def loss(objective, mel, mel_lengths, tokens, token_lengths):
        n_tokens, n_items = float(token_lengths.sum() + len(tokens)), float(len(tokens))  # one micro-batch window
        return objective(mel, mel_lengths, tokens, token_lengths, n_tokens, n_items)[0]
    orig_loss = lambda *b: loss(orig, *b)  # noqa: E731
    return model, {"ours": lambda *b: loss(fixed, *b), "ours, no masks": orig_loss}, orig_loss


def original(args, folder, device):
    """The same computation the original's way: HF logits at every position, HF's shifted CE, padded-length CTC."""
    from transformers import LlamaForCausalLM
    from transformers.utils.logging import disable_progress_bar
    disable_progress_bar()
    hf = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    base = hf.config.vocab_size
    hf.resize_token_embeddings(args.vocab, mean_resizing=False)
    with torch.no_grad():  # the rows decoder.extend_vocab adds: the mean base row, taken in float32
        w = hf.get_input_embeddings().weight
        w[base:] = w[:base].float().mean(0).to(w.dtype)
    hf.requires_grad_(False)
    model = front(args).to(device)
    model.llm = hf.to(device)

    def loss(mel, mel_lengths, tokens, token_lengths):
        enc = model.encoder(mel)[0]  # (B, T', d): no masks, as the original
        audio = model.projector(enc)  # (B, T', D)
        B, Ta, L = len(tokens), audio.shape[1], tokens.shape[1]
        j = torch.arange(L + 1, device=device)[None]
        ids = torch.cat([tokens, torch.zeros_like(tokens[:, :1])], 1)  # text + EOS (0) + padding (0): (B, L+1)
        labels = torch.where(j <= token_lengths[:, None], ids, -100)
        labels = torch.cat([torch.full((B, Ta), -100, device=device), labels], 1)  # (B, Ta+L+1)
        x = torch.cat([audio, hf.get_input_embeddings()(ids).to(audio.dtype)], 1)
        ce = hf(inputs_embeds=x, labels=labels).loss  # logits (B, Ta+L+1, V) at every position
        lengths = torch.full((B,), Ta, device=device)
        log_probs = model.ctc_head(enc).float().log_softmax(-1)
        ctc = F.ctc_loss(log_probs.transpose(0, 1), tokens, lengths, token_lengths, blank=0, zero_infinity=True)
        return 0.7 * ce + 0.3 * ctc
    return model, {"original": loss}, loss


def memory(device, reset=False):
    """(now, peak) bytes: CUDA allocator stats, or this process's resident set (VmRSS, VmHWM) on CPU."""
    if device == "cuda":
        torch.cuda.synchronize()
        if reset:
            torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()
    if reset:
        with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM (Linux >= 4.0): setup's peak is not counted
            f.write("5")
    with open("/proc/self/status") as f:
        kb = {line.split(":")[0]: int(line.split()[1]) for line in f if line.startswith(("VmRSS:", "VmHWM:"))}
    return kb["VmRSS"] * 1024, kb["VmHWM"] * 1024


def run_variant(args):
    """In a fresh process: build one variant, check its original-maths loss, time its steps; print a JSON line."""
    torch.set_num_threads(args.threads)
    device = args.device
    model, steps, orig_loss = (ours if args.variant == "ours" else original)(args, args.decoder_dir, device)
    batch = make_batch(args, device)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()
    model.eval()
    with torch.no_grad(), ctx:
        check = orig_loss(*batch).item()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6) if args.adamw else None
    res = {name: dict(times=[], cpu=[], peak=0) for name in steps}
    for i in range(args.warmup + args.steps):
        for name, step_loss in steps.items():  # several variants of one process take turns, step by step
            before = memory(device, reset=True)[0]
            t0, c0 = time.perf_counter(), time.process_time()
            with ctx:
                loss = step_loss(*batch)
            loss.backward()
            if opt:
                opt.step()
            for p in params:
                p.grad = None
            peak = memory(device)[1] - before  # synchronises CUDA too
            if i >= args.warmup:
                res[name]["times"].append(time.perf_counter() - t0)
                res[name]["cpu"].append(time.process_time() - c0)  # CPU seconds: steadier than wall on a busy box
                res[name]["peak"] = max(res[name]["peak"], peak)
                res[name]["loss"] = loss.item()
    print(json.dumps(dict(check=check, res=res, trained=sum(p.numel() for p in params))))


def save_decoder(args, folder):
    """One random HF Llama (the release's layout, recipe §3) written with save_pretrained."""
    import transformers
    transformers.utils.logging.disable_progress_bar()
    cfg = transformers.LlamaConfig(vocab_size=args.base_vocab, hidden_size=args.dim, intermediate_size=args.ffn,
                                   num_hidden_layers=args.layers, num_attention_heads=args.heads,
                                   num_key_value_heads=args.heads, rms_norm_eps=1e-6, rope_theta=10000.0,
                                   max_position_embeddings=2048, tie_word_embeddings=True,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=1)
    torch.manual_seed(1)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help=f"CPU-sized run: {SMALL}, other dims as the release")
    p.add_argument("--encoder", default="300m", choices=list(ENCODER_PRESETS), help="encoder preset (default: 300m)")
    p.add_argument("--dim", type=int, default=1024, help="decoder width (default: 1024)")
    p.add_argument("--layers", type=int, default=18, help="decoder layers (default: 18)")
    p.add_argument("--heads", type=int, default=16, help="decoder heads (default: 16)")
    p.add_argument("--ffn", type=int, default=3584, help="decoder SwiGLU width (default: 3584)")
    p.add_argument("--base-vocab", type=int, default=50257, help="decoder rows stored (default: 50257)")
    p.add_argument("--vocab", type=int, default=100000, help="vocabulary after the resize (default: 100000)")
    p.add_argument("--batch", type=int, default=12, help="utterances per step (default: 12)")
    p.add_argument("--seconds", type=float, default=15.0, help="longest audio in the batch (default: 15)")
    p.add_argument("--text", type=int, default=100, help="longest text in tokens (default: 100)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant, median reported (default: 3)")
    p.add_argument("--rounds", type=int, default=1, help="processes per variant, alternated (default: 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    p.add_argument("--adamw", action="store_true", help="include an AdamW step in each step (default: off)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1: a shared 2-core box)")
    p.add_argument("--device", default="auto", help="auto (cuda with bf16 autocast if present), cuda or cpu")
    p.add_argument("--variant", choices=["ours", "original"], help=argparse.SUPPRESS)  # internal: one subprocess
    p.add_argument("--decoder-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.small:
        for k, v in SMALL.items():
            if getattr(args, k) == p.get_default(k):
                setattr(args, k, v)
    args.device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    return args


def main():
    args = parse_args()
    if args.variant:
        return run_variant(args)
    frames = int(subsampled_lengths(torch.tensor(n_frames(int(args.seconds * SAMPLE_RATE)))))
    print(f"device {args.device}{' (bf16 autocast)' if args.device == 'cuda' else ', float32'}, "
          f"{args.threads} torch thread(s); encoder {args.encoder}, Llama {args.dim}x{args.layers} ({args.heads} "
          f"heads, ffn {args.ffn}), {args.base_vocab} -> {args.vocab} ids; batch {args.batch}, <= {args.seconds} s "
          f"audio ({frames} decoder frames), <= {args.text} text tokens; step = forward + backward"
          f"{' + AdamW' if args.adamw else ' (no optimiser)'}, {args.warmup} warm-up step(s) untimed")
    load = os.getloadavg()[0]
    res, checks, trained = run_all(args)
    report(args, res, checks, trained, load)


def run_all(args):
    """Each variant in its own process, alternated --rounds times: {name: timings}, {variant: check loss}, trained."""
    res, checks = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        save_decoder(args, tmp)
        for v in ["ours", "original"] * args.rounds:  # alternated: the machine's load drifts
            cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", v, "--decoder-dir", tmp,
                   "--device", args.device]
            # glibc then returns every freed tensor to the OS at once, so the resident set follows live memory
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
            out = json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
                             .strip().splitlines()[-1])
            checks[v], trained = out["check"], out["trained"]
            for name, r in out["res"].items():
                res.setdefault(name, dict(times=[], cpu=[], peak=0, loss=r["loss"]))
                res[name]["times"] += r["times"]
                res[name]["cpu"] += r["cpu"]
                res[name]["peak"] = max(res[name]["peak"], r["peak"])
    return res, checks, trained


def report(args, res, checks, trained, load):
    a, b = checks["ours"], checks["original"]
    print(f"loss in the original's maths (no masks, no smoothing, eval): ours {a:.6f}  original {b:.6f}  "
          f"|diff| {abs(a - b):.1e}")
    what = "peak CUDA memory growth" if args.device == "cuda" else "peak RSS growth"
    print(f"{trained / 1e6:.1f}M parameters trained; load average {load:.1f} -> {os.getloadavg()[0]:.1f}; "
          f"per step: medians of wall and process CPU time over {args.rounds} x {args.steps} steps, "
          f"{what} over what the step started with")
    med = {name: statistics.median(r["times"]) for name, r in res.items()}
    cpu = {name: statistics.median(r["cpu"]) for name, r in res.items()}
    for name, r in res.items():
        print(f"{name:15s}: wall {med[name]:6.2f} s/step (min {min(r['times']):.2f}, max {max(r['times']):.2f}), "
              f"CPU {cpu[name]:6.2f} s, {r['peak'] / 2**30:.2f} GiB, loss {r['loss']:.4f}", end="")
        print(f";  / original: wall {med[name] / med['original']:.2f}, CPU {cpu[name] / cpu['original']:.2f}, "
              f"memory {r['peak'] / res['original']['peak']:.2f}" if name != "original" else "")


if __name__ == "__main__":
    main()
