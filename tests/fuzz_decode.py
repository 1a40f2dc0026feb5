"""Byte-level fuzzing of decode.py: seeded mutations of a small wav, transcribed in-process through decode.main.

    python tests/fuzz_decode.py --model models/teach --n 200 --seed 0 --limit-gb 3 --dir /tmp/fuzz

Each mutant changes the header (sample rate, channels, sizes, format tag, bits) or the body (flipped,
inserted, overwritten or cut bytes). decode.main gets them ten at a time, as a user would pass them, with
stdout, stderr and file descriptor 2 captured. With --limit-gb the address space is capped (RLIMIT_AS), so an
allocation that grows with a header field fails at once instead of swapping. Prints one JSON object: for each
call its exit status, seconds, output lines, any exception, and the peak resident memory of the process;
tests/test_robustness.py states what must hold.
"""
import argparse
import io
import json
import os
import random
import resource
import struct
import sys
import tempfile
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# values a header field is set to: edges, and sample rates that broke resamplers (coprime to 16000, out of range)
INTERESTING = [0, 1, 2, 3, 7, 255, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 999, 7919, 8000, 44100, 44101,
               96001, 768001, 2**31 - 1]


def base_wav(seconds: float = 0.4) -> bytes:
    """A small 16 kHz PCM-16 wav of a tone with a little noise."""
    import soundfile as sf
    t = np.arange(int(seconds * 16000)) / 16000
    x = 0.3 * np.sin(2 * np.pi * 330 * t) + 0.02 * np.random.default_rng(0).standard_normal(len(t))
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def header_fields(wav: bytes) -> list[tuple[str, int, int]]:
    """(name, byte offset, size) of every field of the RIFF, fmt and data chunk headers."""
    fmt, data = wav.index(b"fmt "), wav.index(b"data")
    return [("riff size", 4, 4), ("fmt size", fmt + 4, 4), ("format tag", fmt + 8, 2), ("channels", fmt + 10, 2),
            ("sample rate", fmt + 12, 4), ("byte rate", fmt + 16, 4), ("block align", fmt + 20, 2),
            ("bits", fmt + 22, 2), ("data size", data + 4, 4)]


def mutate(wav: bytes, rng: random.Random, fields: list[tuple[str, int, int]]) -> tuple[str, bytes]:
    """One random mutation of wav: (what was done, the new bytes); fields: header_fields of the original."""
    b = bytearray(wav)
    kind = rng.choices(["field", "flip", "cut", "insert", "overwrite", "repeat"], [8, 4, 2, 2, 2, 2])[0]
    if kind == "field":
        name, at, size = rng.choice(fields)
        value = rng.choice(INTERESTING + [rng.getrandbits(32)] * 4) & (0xFFFF if size == 2 else 0xFFFFFFFF)
        b[at: at + size] = struct.pack("<H" if size == 2 else "<I", value)
        return f"{name}={value}", bytes(b)
    if kind == "flip":
        spots = [rng.randrange(len(b)) if rng.random() < 0.5 else rng.randrange(44) for _ in range(rng.randint(1, 16))]
        for at in spots:
            b[at] ^= 1 << rng.randrange(8)
        return f"flip {len(spots)} bits", bytes(b)
    if kind == "cut":
        at = rng.randrange(len(b))
        return f"cut at {at}", bytes(b[:at])
    at = rng.randrange(len(b))
    if kind == "insert":
        extra = rng.randbytes(rng.randint(1, 64))
        return f"insert {len(extra)} at {at}", bytes(b[:at] + extra + b[at:])
    if kind == "overwrite":
        n = rng.randint(1, 512)
        b[at: at + n] = rng.randbytes(min(n, len(b) - at))
        return f"overwrite {n} at {at}", bytes(b)
    n = rng.randint(4, 200)  # a run of bytes repeated: a chunk header twice, a frame doubled
    return f"repeat {n} at {at}", bytes(b[:at + n] + b[at: at + n] + b[at + n:])


def mutants(n: int, seed: int) -> list[tuple[str, bytes]]:
    """n seeded mutants of base_wav(); the same (n, seed) always gives the same bytes."""
    rng, wav = random.Random(seed), base_wav()
    fields, out = header_fields(wav), []
    for _ in range(n):
        what, data = mutate(wav, rng, fields)
        if rng.random() < 0.3 and len(data) > 44:  # some get a second mutation on top
            more, data = mutate(data, rng, fields)
            what = f"{what}; {more}"
        out.append((what, data))
    return out


def write_mutants(folder: Path, n: int, seed: int) -> list[tuple[str, str]]:
    """The mutants as files m000.wav ...: [(path, what)]."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k, (what, data) in enumerate(mutants(n, seed)):
        path = folder / f"m{k:03d}.wav"
        path.write_bytes(data)
        files.append((str(path), what))
    return files


def run_calls(model: str, files: list[tuple[str, str]], per_call: int = 10) -> list[dict]:
    """decode.main over the files, per_call at a time, each call's outputs captured (fd 2 included)."""
    import decode
    calls = []
    modes = ["ctc", "greedy", "ctc", "joint"]
    for k in range(0, len(files), per_call):
        paths = [p for p, _ in files[k: k + per_call]]
        argv = ["--model", model, "--mode", modes[(k // per_call) % len(modes)], "--max-tokens", "8", *paths]
        out, err = io.StringIO(), io.StringIO()
        with tempfile.TemporaryFile() as fd2:
            saved = os.dup(2)
            os.dup2(fd2.fileno(), 2)
            start = time.perf_counter()
            try:
                with redirect_stdout(out), redirect_stderr(err):
                    rc, exc = decode.main(argv), None
            except BaseException:  # what must never happen: recorded, the run goes on
                rc, exc = None, traceback.format_exc()
            seconds = time.perf_counter() - start
            os.dup2(saved, 2)
            os.close(saved)
            fd2.seek(0)
            raw_stderr = fd2.read().decode("utf-8", "replace")
        calls.append({"argv": argv, "rc": rc, "exception": exc, "seconds": seconds, "stdout": out.getvalue(),
                      "stderr": err.getvalue(), "fd2": raw_stderr,
                      "what": {p: w for p, w in files[k: k + per_call]}})
    return calls


def main(argv=None):
    p = argparse.ArgumentParser(description="Fuzz decode.py with mutated wavs (prints a JSON report).")
    p.add_argument("--model", required=True, help="model folder to decode with")
    p.add_argument("--n", type=int, default=200, help="how many mutants (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="mutation seed (default: %(default)s)")
    p.add_argument("--dir", required=True, help="folder for the mutant files")
    p.add_argument("--limit-gb", type=float, default=None, help="cap the address space at this many GB")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch  # noqa: F401 (imported before the cap: its libraries' mappings are not what is measured)
    import decode  # noqa: F401
    torch.set_num_threads(1)
    if args.limit_gb:
        limit = int(args.limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    files = write_mutants(Path(args.dir), args.n, args.seed)
    calls = run_calls(args.model, files)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"calls": calls, "peak_rss_mb": peak_mb, "files": len(files)}))


if __name__ == "__main__":
    main()
