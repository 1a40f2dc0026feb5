"""Write files and folders so that no reader ever sees half of one: write beside the target, then rename.

    with atomic_file("results.jsonl") as f:        # a text file (mode="wb" for bytes)
        f.write(...)
    with atomic_path("clip.wav") as tmp:            # any writer that takes a path: torch.save, sf.write, ...
        sf.write(tmp, wave, 16000)
    with atomic_folder("runs/asr/best") as tmp:     # a whole folder: a model, a checkpoint
        save_file(tensors, tmp / "model.safetensors")

The temporary lies in the target's own folder (a rename is atomic only within one file system) and is named
`.NAME.tmp-XXXX`. On success it replaces the target in one rename (a folder that exists is first moved aside to
`.NAME.old`, since a rename cannot replace a non-empty folder, and removed after); on any error the target is left as
it was and the temporary is removed. A process killed mid-write can leave those two names behind: `clean_up(folder)`
removes the temporaries and puts back a `.NAME.old` whose NAME is missing (killed between the two renames).
Not here: fsync (a power cut may still lose the newest file, never leave half of it readable as whole).
"""
import errno
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary Path beside `path` to write to; renamed onto `path` when the block succeeds.

    suffix: for writers that choose a format from the name (".wav" for soundfile)."""
    path = Path(path)
    _refuse_special(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; an output is for everyone
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _refuse_special(path: Path):
    """OSError when `path` (followed through links) is there and is not a regular file: the rename would put a
    plain file in place of /dev/null, a FIFO or a socket (as root, of the device itself), not write into it."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # not there (the usual case), or a parent that is not a folder: mkdir or mkstemp says so
        return
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device")
        raise OSError(errno.EINVAL, f"is {kind}, not a regular file", str(path))


@contextmanager
def atomic_file(path, mode: str = "w", encoding: str | None = "utf-8"):
    """Yield an open file (text, UTF-8 by default) whose contents replace `path` when the block succeeds."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f


def write_text(path, text: str):
    """Path.write_text, atomically."""
    with atomic_file(path) as f:
        f.write(text)


@contextmanager
def atomic_folder(folder):
    """Yield an empty temporary folder (a Path) beside `folder`; it becomes `folder` when the block succeeds."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is for everyone
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def clean_up(folder) -> int:
    """Undo what writes killed midway left in `folder`: temporaries removed, a `.NAME.old` put back as NAME when NAME
    is missing (else removed). Returns how many temporaries were removed."""
    folder = Path(folder)
    for old in folder.glob(".*.old"):
        final = folder / old.name[1:-len(".old")]
        if final.exists():
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        else:
            os.replace(old, final)
    stale = list(folder.glob(".*.tmp-*"))
    for p in stale:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return len(stale)
