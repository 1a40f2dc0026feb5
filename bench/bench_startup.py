"""Start-up: how much longer `python decode.py samples/sample1.wav` takes than `python -c "import torch"` (run by hand).

    python bench/bench_startup.py                 # 7 pairs, OMP_NUM_THREADS=1
    python bench/bench_startup.py --runs 15 -- python decode.py --mode ctc samples/sample1.wav

Both commands run as whole processes, one after the other (A B A B ...), after one unmeasured warm-up of each
(the page cache), and the ratio A/B is taken pair by pair: a machine whose speed drifts during the run moves both
halves of a pair alike. Reported: median wall and CPU (user + system, from the finished child's rusage) seconds of
each, and the median of the pairwise ratios. Import torch is the floor any program here pays; what decode.py adds is
our imports, reading the 14 MB model folder, one log-mel and one short joint decode.
Not here: the time of a long decode (bench/bench_decode.py).
"""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = [sys.executable, "-c", "import torch"]


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """Run cmd to its end in the repo root -> (wall seconds, CPU seconds of that child); its output is dropped."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.decode(errors='replace').strip()[-300:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--runs", type=int, default=7, help="measured pairs (after one warm-up pair)")
    ap.add_argument("--threads", default="1", help="OMP_NUM_THREADS for both commands")
    ap.add_argument("command", nargs="*", help="command A (after --); default: python decode.py samples/sample1.wav")
    args = ap.parse_args()
    cmd = args.command or [sys.executable, "decode.py", "samples/sample1.wav"]
    env = dict(os.environ, OMP_NUM_THREADS=args.threads)
    timed(cmd, env), timed(BASELINE, env)  # warm-up: the first run of each reads its files from disk
    a, b = [], []
    for _ in range(args.runs):
        a.append(timed(cmd, env))
        b.append(timed(BASELINE, env))
    med = lambda xs: statistics.median(xs)  # noqa: E731
    print(f"A: {' '.join(cmd)}\nB: python -c 'import torch'   ({args.runs} pairs, OMP_NUM_THREADS={args.threads})")
    print(f"{'':8}{'A median':>10}{'B median':>10}{'A/B (median of pairs)':>24}")
    for i, name in enumerate(("wall s", "cpu s")):
        ratio = med([x[i] / y[i] for x, y in zip(a, b)])
        print(f"{name:8}{med([x[i] for x in a]):10.3f}{med([y[i] for y in b]):10.3f}{ratio:24.2f}")


if __name__ == "__main__":
    main()
