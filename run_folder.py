"""
The output folder of a training run: one run at a time, no half-written files, a full disk named.

- lock_out / release_out: --out/train.lock, an flock with the holder's pid inside; the kernel drops it when the
  process dies, so a killed run's folder is taken over, never stuck;
- remove_stale_temporaries: what a run killed mid-write left (train.py's and model.save_model's temporary names);
- write_text and Log: files written whole (a temporary file and a rename) and a log whose failed write names it;
- write_problem: a failed write in a few words (torch.save reports a full disk as a bare RuntimeError).
"""
import os
import shutil
from pathlib import Path

from safetensors import SafetensorError

from atomic import clean_up

try:
    import fcntl
except ImportError:  # Windows: the pid in the file decides alone
    fcntl = None


WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)  # torch.save reports a full disk as a RuntimeError


def write_problem(e, folder):
    """Why a write failed, in a few words: the OS's reason, else the free space left (what is usually wrong)."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free there"
    except OSError:
        free = "free space unknown"
    return f"write failed, {free}"


HELD_LOCKS = {}  # output folder -> this process's open train.lock


def lock_out(out: Path):
    """
    Take out/train.lock, so a second run on the same folder is refused instead of mixing checkpoints. The lock is
    an flock, which the kernel drops when its process dies: a killed run never leaves the folder stuck. The file
    holds the pid, for the message (and decides alone where the file system has no flock).
    """
    release_out(out)  # an earlier train() of this process that ended in an error
    path = out / "train.lock"
    f = open(path, "a+")
    f.seek(0)
    holder = f.read().strip()
    try:
        if fcntl is None:
            raise OSError("no fcntl")
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise ValueError(f"{path}: another run (pid {holder or '?'}) is training in this folder") from None
    except OSError:
        if holder.isdigit() and int(holder) != os.getpid() and pid_alive(int(holder)):
            f.close()
            raise ValueError(f"{path}: another run (pid {holder}) is training in this folder") from None
    if holder and holder != str(os.getpid()):
        print(f"warning: {path}: the run that held it (pid {holder}) is gone; taking it over")
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    HELD_LOCKS[out.resolve()] = f


def release_out(out: Path):
    """Give train.lock back (emptied: the next run sees a clean end, not a dead pid)."""
    f = HELD_LOCKS.pop(Path(out).resolve(), None)
    if f is not None:
        f.seek(0)
        f.truncate()
        f.close()  # closing drops the flock


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temporaries(out: Path, master=True):
    """What runs killed mid-write left in `out` (atomic.clean_up): half-written folders and files are removed; a
    folder caught between its two renames (moved to .NAME.old, the new one not yet in place) is put back."""
    n = clean_up(out)
    if n and master:
        print(f"{out}: removed {n} temporary file(s) left by an interrupted run")


class Log:
    """log.jsonl, appended to (fresh: started anew): a failed write (a full disk) is an OSError naming the file."""

    def __init__(self, path: Path, fresh: bool = False):
        self.path, self.f = path, open(path, "w" if fresh else "a", encoding="utf-8")

    def write(self, text):
        self.named(self.f.write, text)

    def flush(self):
        self.named(self.f.flush)

    def named(self, fn, *args):
        try:
            fn(*args)
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.path)) from None
