"""Decoding speed, measured side by side in one run (CPU; run by hand, not by the tests).

    python bench/bench_decode.py                 # everything, 256 tokens (minutes, ~5 GB of RAM)
    python bench/bench_decode.py --steps 32      # a quick look
    python bench/bench_decode.py --parts 3       # only the batching throughput

1. The release's decoding (recipe §9) at the release's dimensions, random weights in its format: the 300m
   encoder preset, a Llama 1024 wide / 18 layers / 16 heads / 3584 ffn with 50257 rows extended to 100000,
   15 s of audio. Ours (search.reference_greedy over our KVCache) against the original's way: transformers'
   LlamaForCausalLM.generate with its KV cache, repetition_penalty=1.15, no_repeat_ngram_size=3 (dev-only).
   EOS's embedding row is zero, so its logit is 0 and never the largest: both run the full --steps tokens.
   Goal: identical tokens, ours at most half the wall time.
2. Ours in bfloat16 against float32 (same model, same audio): time and how many leading tokens agree.
3. Throughput of 16 files (3-8 s) decoded in one padded batch against one at a time, on a random model of
   the teaching model's size (encoder preset "teach", a 256-wide 4-layer Llama, 4000 ids). Goal: >= 4x.

Timings are wall-clock on whatever else the machine is doing: report them with its load. `--device cuda` runs the
same parts on a GPU, with synchronised timings (bench/gpu_check.sh runs them all).
Not here: accuracy (evaluate.py).
"""
import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from decode import DecodeOptions, Transcriber  # noqa: E402
from decoder import Llama, LlamaConfig, hf_names  # noqa: E402
from encoder import ENCODER_PRESETS, EncoderConfig  # noqa: E402
from mel import N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram  # noqa: E402
from model import ASRModel  # noqa: E402
from search import reference_greedy  # noqa: E402

RELEASE_LLM = dict(vocab_size=50257, dim=1024, n_layers=18, n_heads=16, n_kv_heads=16, ffn_dim=3584)
TEACH_LLM = dict(vocab_size=4000, dim=256, n_layers=4, n_heads=4, n_kv_heads=4, ffn_dim=704)
# part 3's models: the teaching size (tiny matmuls, compute- and overhead-bound; a batch's attention no longer fits
# the CPU's cache as one file's does), and a mid size with the release's 100000-id vocabulary (reading the weights
# dominates a step, as at the release's size). Encoder, CTC head and prefill cost the same batched or not on a CPU.
BATCH_MODELS = {"teach": (TEACH_LLM, "teach", 4000),
                "mid": (dict(vocab_size=50257, dim=512, n_layers=8, n_heads=8, n_kv_heads=8, ffn_dim=1536), "150m",
                        100000)}


def random_model(llm_dims: dict, encoder: str, vocab: int) -> ASRModel:
    """Random weights (HF's 0.02 init) in the release's layout; EOS's row zeroed so EOS never wins."""
    torch.manual_seed(0)
    llm = Llama(LlamaConfig(**llm_dims))
    with torch.no_grad():
        llm.tok_embeddings.weight[0] = 0.0
    llm.extend_vocab(vocab, trainable=False)  # the release's frozen mean rows (recipe §3)
    model = ASRModel(EncoderConfig(**ENCODER_PRESETS[encoder], dropout=0.0), llm.freeze(), vocab)
    return model.eval().requires_grad_(False).to(DEVICE)


def hf_llama(llm: Llama):
    """transformers' LlamaForCausalLM holding our weights (shared, except the one concatenated embedding)."""
    import transformers
    cfg = transformers.LlamaConfig(**llm.config.to_hf())
    cfg.vocab_size = llm.vocab_size
    hf = transformers.LlamaForCausalLM(cfg).eval()
    ours = llm.state_dict()
    sd = {hf_name: ours[name] for hf_name, name in hf_names(llm.config.n_layers).items() if name in ours}
    sd["model.embed_tokens.weight"] = torch.cat([llm.tok_embeddings.weight, llm.new_rows])
    hf.load_state_dict(sd, strict=False, assign=True)
    hf.lm_head.weight = hf.model.embed_tokens.weight  # tied, as the release
    return hf.requires_grad_(False).to(DEVICE)


DEVICE = torch.device("cpu")  # --device


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeat=1):
    """(result, best wall seconds of `repeat` runs)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return out, best


def first_difference(a, b) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def interleaved(ways: dict, steps: int, repeat: int) -> dict:
    """{name: run(n_tokens) -> tokens} -> {name: (tokens, first-token s, s per later token)}, best of `repeat`.

    The ways take turns (each repeat runs every way for 1 token, then for `steps`), so a change in the machine's
    load hits them alike; per later token = (t(steps) - t(1)) / (steps - 1), each the best of its repeats.
    """
    t1 = {n: float("inf") for n in ways}
    tn = dict(t1)
    tokens = {}
    for _ in range(repeat):
        for n, run in ways.items():
            _, t = timed(lambda: run(1))
            t1[n] = min(t1[n], t)
        for n, run in ways.items():
            tokens[n], t = timed(lambda: run(steps))
            tn[n] = min(tn[n], t)
    return {n: (tokens[n], t1[n], (tn[n] - t1[n]) / max(1, len(tokens[n]) - 1)) for n in ways}


@torch.no_grad()
def part_release(steps: int, repeat: int, with_hf: bool, with_bf16: bool):
    print("== 1./2. reference greedy at the release's dimensions (300m encoder, Llama 1024x18, 100000 ids, 15 s)")
    model = random_model(RELEASE_LLM, "300m", 100000)
    wav = torch.randn(N_SAMPLES, generator=torch.Generator().manual_seed(0)) * 0.1
    mel = log_mel_spectrogram(wav)[None].to(DEVICE)  # (1, 80, 1501)
    (_, audio, _), t_enc = timed(lambda: model.encode(mel), repeat)
    print(f"encoder float32 (1501 mel frames -> {audio.shape[1]} frames): {t_enc:.2f} s, the same for both ways")
    ways = {"ours": lambda n: reference_greedy(model.llm, audio, n)}
    if with_hf:
        hf = hf_llama(model.llm)
        x = audio[:, :7]
        torch.testing.assert_close(hf(inputs_embeds=x).logits, model.llm.logits(model.llm(x)), atol=1e-4, rtol=1e-4)
        mask = torch.ones(audio.shape[:2], dtype=torch.long, device=DEVICE)
        ways["transformers"] = lambda n: [t for t in hf.generate(
            inputs_embeds=audio, attention_mask=mask, max_new_tokens=n, do_sample=False, num_beams=1,
            repetition_penalty=1.15, no_repeat_ngram_size=3, eos_token_id=0, pad_token_id=1)[0].tolist() if t != 0]
    if with_bf16:
        model16 = copy.deepcopy(model).to(torch.bfloat16)
        (_, audio16, _), t_enc16 = timed(lambda: model16.encode(mel.to(torch.bfloat16)), repeat)
        ways["ours bf16"] = lambda n: reference_greedy(model16.llm, audio16, n)
    res = interleaved(ways, steps, repeat)
    for n, (tokens, first, later) in res.items():
        print(f"{n:13s}: {len(tokens)} tokens: first token {first:.2f} s (the audio prompt) + {1000 * later:.0f} ms "
              f"per later token = {first + later * (len(tokens) - 1):.1f} s")
    ours, o1, o_tok = res["ours"]
    total = lambda r: r[1] + r[2] * (len(r[0]) - 1)
    if with_hf:
        theirs, h1, h_tok = res["transformers"]
        print(f"1. identical tokens: {ours == theirs} (first difference at {first_difference(ours, theirs)} of "
              f"{len(ours)});  ours / transformers wall time {total(res['ours']) / total(res['transformers']):.2f} "
              f"(per later token {o_tok / h_tok:.2f}, first token {o1 / h1:.2f}; with the encoder "
              f"{(total(res['ours']) + t_enc) / (total(res['transformers']) + t_enc):.2f}); goal <= 0.5")
    if with_bf16:
        ours16, b1, b_tok = res["ours bf16"]
        print(f"2. bfloat16 vs float32: encoder {t_enc / t_enc16:.2f}x faster ({t_enc16:.2f} s), decoder "
              f"{total(res['ours']) / total(res['ours bf16']):.2f}x (first token {o1 / b1:.2f}x, later tokens "
              f"{o_tok / b_tok:.2f}x); tokens agree up to {first_difference(ours, ours16)} of {len(ours)} "
              f"(random weights: near-tied logits, bf16 rounding flips them)")


@torch.no_grad()
def part_batching(steps: int, repeat: int, files: int, modes: list[str], size: str = "teach"):
    llm, encoder, vocab = BATCH_MODELS[size]
    print(f"== 3. {files} files (3-8 s) batched vs one at a time; random model '{size}' (encoder '{encoder}', "
          f"Llama {llm['dim']}x{llm['n_layers']}, {vocab} ids), {steps} tokens max")
    model = random_model(llm, encoder, vocab)
    g = torch.Generator().manual_seed(0)
    waves = [torch.randn(int((3 + 5 * i / max(1, files - 1)) * SAMPLE_RATE), generator=g) * 0.1 for i in range(files)]
    for mode in modes:
        opts = dict(mode=mode, max_tokens=steps, beam_size=4)
        batched = Transcriber(model, _NullTokenizer(), DecodeOptions(batch_size=files, **opts), DEVICE)
        single = Transcriber(model, _NullTokenizer(), DecodeOptions(batch_size=1, **opts), DEVICE)
        t_b = t_1 = float("inf")
        for _ in range(repeat):  # interleaved, best of each
            a, t = timed(lambda: batched.transcribe(waves))
            t_b = min(t_b, t)
            b, t = timed(lambda: single.transcribe(waves))
            t_1 = min(t_1, t)
        same = sum(x["text"] == y["text"] for x, y in zip(a, b))
        n_tok = sum(len(x["text"].split()) for x in a)
        print(f"{mode:6s}: batched {t_b:.2f} s, one at a time {t_1:.2f} s -> {t_1 / t_b:.1f}x throughput "
              f"(goal >= 4x); {n_tok} tokens in all; same text for {same}/{files}")


class _NullTokenizer:
    """Ids as text: a random model's tokens need no real vocabulary."""

    def decode(self, ids):
        return " ".join(map(str, ids))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=256, help="tokens per decode (default: %(default)s, the release's)")
    p.add_argument("--repeat", type=int, default=2, help="runs of each timing, interleaved, best kept (default: %(default)s)")
    p.add_argument("--parts", default="1,2,3", help="which parts to run, comma-separated (default: %(default)s)")
    p.add_argument("--files", type=int, default=16, help="part 3: files in the batch (default: %(default)s)")
    p.add_argument("--modes", default="greedy,joint", help="part 3: decoding modes (default: %(default)s)")
    p.add_argument("--batch-model", choices=list(BATCH_MODELS), default="teach",
                   help="part 3: model size (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    args = p.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    where = torch.cuda.get_device_name() if DEVICE.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"torch {torch.__version__}, {where}, load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs (shared with other work: timings are indicative)")
    if parts & {"1", "2"}:
        part_release(args.steps, args.repeat, "1" in parts, "2" in parts)
    if "3" in parts:
        part_batching(args.steps, args.repeat, args.files, args.modes.split(","), args.batch_model)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
