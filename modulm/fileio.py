"""Safe file writing shared by the core and plugins.

:func:`atomic_write` writes beside the destination and renames: a crash at any moment leaves the old
file or the new one. The temporary file is named ``.NAME.XXXX.tmp`` (:func:`is_temp_file`), so one
left by a process killed mid-write (``kill -9``) can be found and removed at the next start
(:func:`remove_stale_temp_files`). The new file gets the permissions the umask gives any new file
(``mkstemp`` alone would leave it 0600). A failed write raises the :class:`OSError` that caused it
(disk full, permission, I/O error) with ``filename`` set to the destination, even when the writer
(``torch.save``) would only have reported a generic error.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$")


def cache_dir() -> Path:
    """Where modulm caches derived files (data, the CPU's matmul timing): ``$MODULM_CACHE_DIR`` or
    ``~/.cache/modulm``. Where that cannot be made or written (a read-only home, no home at all),
    this user's ``modulm-cache-UID`` in the system's temporary directory, said once per process on
    stderr; where neither can, the first (the write that needs it then names it)."""
    return _usable_cache_dir(os.environ.get("MODULM_CACHE_DIR") or "")


_CACHE_FALLBACKS_SAID: set[str] = set()


def nearest_existing(path: Path) -> Path | None:
    """``path`` itself where it exists, else its nearest existing parent (None: none exists)."""
    path = Path(path).absolute()
    return next((candidate for candidate in (path, *path.parents) if candidate.exists()), None)


def _writable_dir(path: Path) -> str | None:
    """None where ``path`` is a directory this process can write, or could be made one (its
    nearest existing parent is a writable directory: nothing is created here); else why not."""
    existing = nearest_existing(path)
    if existing is None:
        return "no existing parent"
    if not existing.is_dir():
        return "Not a directory"
    return None if os.access(existing, os.W_OK | os.X_OK) else "not writable"


def _usable_cache_dir(requested: str) -> Path:
    try:
        chosen = Path(requested) if requested else Path.home() / ".cache" / "modulm"
    except RuntimeError:  # no HOME and no password entry to find one
        chosen = None
    why = "no home directory" if chosen is None else _writable_dir(chosen)
    if why is None:
        return chosen
    fallback = Path(tempfile.gettempdir()) / f"modulm-cache-{getattr(os, 'getuid', lambda: 'user')()}"
    if _writable_dir(fallback) is not None:
        return chosen if chosen is not None else fallback
    if str(fallback) not in _CACHE_FALLBACKS_SAID:
        _CACHE_FALLBACKS_SAID.add(str(fallback))
        where = f"the cache directory {chosen}" if chosen is not None else "a cache directory"
        print(f"modulm: warning: cannot use {where} ({why}); caching in {fallback} instead "
              "(set MODULM_CACHE_DIR to choose)", file=sys.stderr)
    return fallback


def umask() -> int:
    """The process's current umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _RecordingFile:
    """A file object that remembers the first OSError its ``write`` raised (torch.save hides it)."""

    def __init__(self, fh: Any) -> None:
        self._fh, self.error = fh, None

    def write(self, data: Any) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, fsync it, then rename it over
    ``path``: a crash at any moment leaves either the old file or the new one, never half of one.
    On any failure the temporary file is removed; an OSError names ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    recording = None
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as fh:
            recording = _RecordingFile(fh)
            write(recording)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        cause = recording.error if recording is not None else None
        if cause is not None and isinstance(exc, Exception):  # the writer wrapped an OSError: report that
            raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from exc
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


def atomic_directory(path: str | os.PathLike, fill: Any) -> None:
    """Call ``fill(tmpdir)`` on a temporary directory beside ``path``, then rename it to ``path``
    (which must not exist): a crash leaves no half-filled ``path``, only a temporary directory
    that :func:`remove_stale_temp_files` removes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~umask())
        fill(tmp)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_temp_file(name: str) -> bool:
    """Whether ``name`` is a temporary file :func:`atomic_write` makes."""
    return bool(_TEMP_NAME.match(name))


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (and directories) an interrupted :func:`atomic_write` or
    :func:`atomic_directory` left in ``directory``; return them.

    Call it only where no other process is writing into ``directory``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if is_temp_file(p.name)]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale
