"""Safe file writing shared by the core and plugins."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, fsync it, then rename it over
    ``path``: a crash at any moment leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def plain_copy(path: Path, work: Path) -> Path:
    """``path`` itself when plain, else its ``.xz`` content decompressed into directory ``work``.

    For readers that seek by byte offset (BPE training splits its input that way). A broken
    archive is a one-line :class:`~modulm.errors.ModulmError` naming the file.
    """
    import lzma
    import shutil

    from modulm.errors import ModulmError

    path, work = Path(path), Path(work)
    if path.suffix != ".xz":
        return path
    target = work / f"{len(list(work.iterdir()))}-{path.stem}"
    try:
        with lzma.open(path, "rb") as packed, target.open("wb") as plain:
            shutil.copyfileobj(packed, plain, 1 << 20)
    except (lzma.LZMAError, EOFError) as exc:
        raise ModulmError(f"{path}: not a readable .xz file ({exc})") from None
    return target
