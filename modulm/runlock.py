"""One process at a time in a run (or sweep) directory: an advisory ``flock`` on a lock file in it.

Two ``modulm run`` started on the same ``checkpointing.checkpoint_dir`` would write over each
other's checkpoints and logs; the second is refused in one line while the first holds the lock.
The kernel drops a ``flock`` when its process ends, however it ends (``kill -9`` included), so a
crashed run never leaves the directory locked: a stale lock file is simply taken over. A clean
release removes the file. Where ``fcntl`` is missing (Windows) the lock is a no-op.

:func:`check_free` only looks (it writes nothing: the preflight's check); :func:`acquire` takes
the lock when the directory is first written to, and :func:`release` gives it back.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from modulm.errors import ModulmError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None

LOCK_FILE = ".modulm.lock"
RUN = ("another modulm run", "checkpointing.checkpoint_dir")  # (who holds it, how to choose another)

_held: dict[Path, int] = {}  # directory -> the open descriptor holding its lock, in this process


def _busy(directory: Path, fd: int, holder: tuple[str, str]) -> ModulmError:
    who, elsewhere = holder
    with contextlib.suppress(OSError, ValueError):
        pid = os.pread(fd, 32, 0).decode("ascii").strip()
        if pid.isdigit():
            who += f" (pid {pid})"
    return ModulmError(f"{directory}: {who} is using this directory; wait for it to finish, or give this "
                       f"one a directory of its own ({elsewhere})")


def check_free(directory: str | os.PathLike, holder: tuple[str, str] = RUN) -> None:
    """Raise a :class:`ModulmError` if another process holds ``directory``'s lock; write nothing."""
    directory = Path(directory)
    if fcntl is None or directory.resolve() in _held:
        return
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDONLY)
    except OSError:  # no lock file (or none readable): nobody holds it
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(directory, fd, holder) from None
    finally:
        os.close(fd)  # closing drops the probe's own lock


def acquire(directory: str | os.PathLike, holder: tuple[str, str] = RUN) -> None:
    """Hold ``directory``'s lock until :func:`release` or the end of this process (again: no-op)."""
    directory = Path(directory)
    key = directory.resolve()
    if fcntl is None or key in _held:
        return
    path = directory / LOCK_FILE
    tries = 0
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            tries += 1
            if tries < 10:  # a peer's check_free holds it for microseconds: look again shortly
                os.close(fd)
                time.sleep(0.02)
                continue
            error = _busy(directory, fd, holder)
            os.close(fd)
            raise error from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file a releasing holder unlinked after we opened it
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    _held[key] = fd


def release(directory: str | os.PathLike) -> None:
    """Give ``directory``'s lock back and remove its file (nothing if this process does not hold it)."""
    fd = _held.pop(Path(directory).resolve(), None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.unlink(Path(directory) / LOCK_FILE)  # while still locked, so no one takes the old file
    os.close(fd)
