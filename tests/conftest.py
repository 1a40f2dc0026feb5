"""Shared test settings."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # subprocesses (CLI tests, DDP workers) inherit it
import torch  # noqa: E402

# the tests use tiny models: one thread is as fast, and two busy-waiting threads per process on 2 shared cores
# (DDP workers, CLI subprocesses, other jobs) made the suite ~10x slower
torch.set_num_threads(1)
