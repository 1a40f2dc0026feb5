"""Waveform augmentation: what each degradation does to a model's transcript, and what the ops cost (run by hand).

    python bench/bench_augment.py                          # models/teach on samples/sample1.wav
    python bench/bench_augment.py --model runs/teach/e2e/best --out /tmp/degraded

1. Writes degraded copies of --audio to --out as float wavs (unclipped, so +12 dB stays +12 dB): gain -40/-20/+12/+20
   dB, white/pink/brown/babble noise at 10 dB SNR, the file resampled to an 8 kHz wav, the telephone op, reverb with
   RT60 0.5 s. Babble talkers are the other samples in the folder of --audio. Each copy is decoded by --model the way
   decode.py does (load_audio, then the Transcriber), once as it is and once with mel.normalize_level in front, and
   scored against the reference in samples.tsv. `python decode.py --model M OUT/*.wav` gives the first column.
2. Times each op and the teaching preset's composition (TEACH below, averaged over seeds) on a 10 s clip, against
   the log-mel of the same clip, in one thread.
Not here: the effect of training with augmentation (that needs a training run).
"""
import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import augment as A  # noqa: E402
from mel import SAMPLE_RATE, load_audio, log_mel_spectrogram, normalize_level, resample  # noqa: E402
from wer import word_stats  # noqa: E402

TEACH = A.AugmentConfig(p_reverb=0.3, p_noise=0.5, p_telephone=0.15, p_gain=0.8)  # train.py --preset teach


def degraded_copies(wave: torch.Tensor, pool: list, seed: int) -> dict:
    """name -> (waveform, sample rate) of each degradation of `wave` (16 kHz), deterministic in seed."""
    g = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
    db = lambda d: wave * 10 ** (d / 20)  # noqa: E731
    noise = {c: A.mix_at_snr(wave, A.coloured_noise(wave.shape[0], b, g()), 10.0) for c, b in A.NOISE_COLOURS.items()}
    h = A.room_impulse_response(g(), rt60=0.5, drr_db=5.0)
    wet = A.fft_convolve(wave, h)
    return {
        "clean": (wave, SAMPLE_RATE),
        "gain-40dB": (db(-40), SAMPLE_RATE), "gain-20dB": (db(-20), SAMPLE_RATE),
        "gain+12dB": (db(12), SAMPLE_RATE), "gain+20dB": (db(20), SAMPLE_RATE),
        **{f"{c}-10dB": (w, SAMPLE_RATE) for c, w in noise.items()},
        "babble-10dB": (A.mix_at_snr(wave, A.babble(wave.shape[0], pool, g()), 10.0), SAMPLE_RATE),
        "rate-8kHz": (resample(wave, SAMPLE_RATE, 8000), 8000),
        "telephone": (A.telephone(wave, g()), SAMPLE_RATE),
        "reverb-0.5s": (wet * (A.power(wave) / A.power(wet)) ** 0.5, SAMPLE_RATE),
    }


def decode_table(model_dir, files: dict, ref: str):
    """Decode each file as decode.py does, plain and level-normalised; print text and WER for both."""
    from decode import DecodeOptions, Transcriber
    from model import load_model, tokenizer_path
    from tokenizer import Tokenizer

    defaults = json.loads((Path(model_dir) / "config.json").read_text()).get("decode", {})
    t = Transcriber(load_model(model_dir), Tokenizer.load(tokenizer_path(model_dir)), DecodeOptions(**defaults))
    for name, path in files.items():
        wave = load_audio(path)
        plain, normed = (r["text"] for r in t.transcribe([wave, normalize_level(wave)]))
        print(f"{name:12s} WER {word_stats(ref, plain).errors / len(ref.split()):6.1%}  "
              f"normalised {word_stats(ref, normed).errors / len(ref.split()):6.1%}  | {plain}")


def best_ms(fn, repeats=20) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


def timing(wave: torch.Tensor, pool: list):
    """ms per 10 s clip for each op, the TEACH composition (mean over seeds) and the log-mel."""
    clip = wave.repeat(-(-10 * SAMPLE_RATE // wave.shape[0]))[: 10 * SAMPLE_RATE]
    g = torch.Generator().manual_seed(0)
    ops = {"gain": lambda: A.gain(clip, g), "noise (coloured)": lambda: A.add_noise(clip, g, p_babble=0.0),
           "noise (babble)": lambda: A.add_noise(clip, g, p_babble=1.0, pool=pool),
           "telephone": lambda: A.telephone(clip, g), "reverb": lambda: A.reverb(clip, g),
           "log-mel (for scale)": lambda: log_mel_spectrogram(clip)}
    for name, fn in ops.items():
        print(f"{name:22s} {best_ms(fn):7.2f} ms per 10 s clip")
    t0 = time.perf_counter()
    for seed in range(200):
        A.augment(clip, torch.Generator().manual_seed(seed), TEACH, pool)
    print(f"{'TEACH composition':22s} {(time.perf_counter() - t0) * 1000 / 200:7.2f} ms per 10 s clip (mean of 200 seeds)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/teach", help="model folder to decode with (default: %(default)s)")
    p.add_argument("--audio", default="samples/sample1.wav", help="clip to degrade (default: %(default)s)")
    p.add_argument("--out", default="/tmp/degraded", help="folder for the degraded copies (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and room (default: %(default)s)")
    p.add_argument("--no-decode", action="store_true", help="write the copies and time the ops only")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 1)))

    audio = Path(args.audio)
    refs = dict(csv.reader(open(audio.parent / "samples.tsv", encoding="utf-8"), delimiter="\t"))
    wave = load_audio(audio)
    pool = [load_audio(audio.parent / f)[: 10 * SAMPLE_RATE] for f in sorted(refs) if f != audio.name]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, (w, sr) in degraded_copies(wave, pool, args.seed).items():
        files[name] = out / f"{audio.stem}-{name}.wav"
        sf.write(files[name], w.numpy(), sr, subtype="FLOAT")
    print(f"{len(files)} copies in {out}")
    if not args.no_decode:
        decode_table(args.model, files, refs[audio.name])
    timing(wave, pool)


if __name__ == "__main__":
    main()
