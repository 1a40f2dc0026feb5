"""Benchmark: log-mel features of many 15 s clips, ours (mel.py) against librosa, in one run.

Times mel.batch_log_mel on all clips at once, mel.log_mel_spectrogram one clip at a time, and librosa's
melspectrogram (the tests' reference: htk, norm=None, reflect padding) one clip at a time and on the stacked
batch. Best of --repeats runs; prints wall-clock and CPU seconds and ours/librosa ratios (< 1: ours is faster).
librosa is a dev-only dependency.
"""

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mel  # noqa: E402


def best_time(fn, repeats: int) -> tuple[float, float]:
    """Smallest (wall-clock, process CPU) seconds over `repeats` calls: the runs least disturbed by other processes.

    CPU time is the steadier figure on a shared machine; it counts every thread, so with N threads it can reach N x wall.
    """
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu)


def librosa_log_mel(y: np.ndarray) -> np.ndarray:
    """(..., samples) -> (..., 80, frames), the same features via librosa."""
    import librosa

    m = librosa.feature.melspectrogram(
        y=y, sr=mel.SAMPLE_RATE, n_fft=mel.N_FFT, hop_length=mel.HOP_LENGTH, n_mels=mel.N_MELS, htk=True,
        norm=None, center=True, power=2.0, pad_mode="reflect", fmin=0.0, fmax=mel.F_MAX,
    )
    return np.log(np.maximum(m, mel.LOG_FLOOR))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=100, help="number of clips (default: 100)")
    parser.add_argument("--seconds", type=float, default=mel.CHUNK_SECONDS, help="length of each clip in seconds (default: 15)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions; the best is reported (default: 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; 1 matches numpy's single-threaded FFT under librosa, 0 keeps torch's default (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random test audio (default: 0)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    # white noise at speech-like level: the cost of an stft does not depend on the content
    n = int(args.seconds * mel.SAMPLE_RATE)
    audio = (0.1 * np.random.default_rng(args.seed).standard_normal((args.clips, n))).astype(np.float32)  # (B, n)
    waves = [torch.from_numpy(a) for a in audio]
    print(f"{args.clips} clips x {args.seconds:g} s, torch threads {torch.get_num_threads()}, best of {args.repeats}")

    mels, _ = mel.batch_log_mel(waves)  # warm-up, and a check that both compute the same thing
    diff = np.abs(mels[0].numpy() - librosa_log_mel(audio[0]))
    print(f"max |ours - librosa| on clip 0: {diff.max():.2e} (mean {diff.mean():.2e})")

    results = {
        "ours batched (batch_log_mel)": best_time(lambda: mel.batch_log_mel(waves), args.repeats),
        "ours per clip (log_mel_spectrogram)": best_time(lambda: [mel.log_mel_spectrogram(w) for w in waves], args.repeats),
        "librosa per clip": best_time(lambda: [librosa_log_mel(a) for a in audio], args.repeats),
        "librosa batched (2-D y)": best_time(lambda: librosa_log_mel(audio), args.repeats),
    }
    for name, (wall, cpu) in results.items():
        print(f"{name:38s} wall {wall:7.3f} s   cpu {cpu:7.3f} s   {args.clips * args.seconds / wall:6.0f} x real time")
    for kind, i in (("wall", 0), ("cpu", 1)):
        reference = min(results["librosa per clip"][i], results["librosa batched (2-D y)"][i])
        for ours in ("ours batched (batch_log_mel)", "ours per clip (log_mel_spectrogram)"):
            print(f"ratio {kind}: {ours} / best librosa = {results[ours][i] / reference:.3f}")

if __name__ == "__main__":
    main()
