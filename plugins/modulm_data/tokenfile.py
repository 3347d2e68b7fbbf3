"""Token files on disk: opening them memory-mapped, and writing them atomically.

A token file is a 1-D array of integer token ids, either a ``.npy`` file (dtype in its header)
or a raw ``.bin`` file (headerless; the dtype must be given). Opening never loads the data:
``.npy`` files go through ``np.load(mmap_mode="r")``, raw files through ``np.memmap``.

:class:`NpyWriter` streams a ``.npy`` file of unknown final length to a temporary file beside
the destination and renames it into place only when complete, so a reader never sees a partial
file and a failed write leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from modulm.errors import ModulmError
from modulm.fileio import umask

#: The dtypes a token file may hold.
TOKEN_DTYPES: tuple[str, ...] = ("uint16", "uint32", "int32", "int64")
#: The dtypes the writers produce ("auto" picks the smallest that holds the vocabulary).
WRITE_DTYPES: tuple[str, ...] = ("auto", "uint16", "uint32")


def _dtype_list() -> str:
    return ", ".join(TOKEN_DTYPES)


def open_token_file(path: str | os.PathLike, dtype: str = "auto") -> np.ndarray:
    """Memory-map the token file at ``path`` read-only; a one-line error for every problem.

    ``dtype="auto"`` takes the dtype from a ``.npy`` header; raw files (any other suffix) need an
    explicit ``dtype`` from :data:`TOKEN_DTYPES`. For a ``.npy`` file an explicit dtype must
    match the header.
    """
    path = Path(path)
    if dtype != "auto" and dtype not in TOKEN_DTYPES:
        raise ModulmError(f"{path}: unknown dtype {dtype!r}; use auto, {_dtype_list()}")
    if not path.exists():
        raise ModulmError(f"{path}: token file not found")
    if path.is_dir():
        raise ModulmError(f"{path}: is a directory, expected a token file")
    size = path.stat().st_size
    if size == 0:
        raise ModulmError(f"{path}: token file is empty")
    if path.suffix == ".npy":
        return _open_npy(path, dtype)
    if dtype == "auto":
        raise ModulmError(f"{path}: a raw token file needs an explicit dtype ({_dtype_list()})")
    itemsize = np.dtype(dtype).itemsize
    if size % itemsize:
        raise ModulmError(
            f"{path}: size {size} bytes is not a multiple of the {dtype} item size {itemsize} (wrong dtype?)"
        )
    return np.memmap(path, dtype=dtype, mode="r")


def _open_npy(path: Path, dtype: str) -> np.ndarray:
    try:
        with path.open("rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read_header:
                raise ValueError(f"unsupported .npy format version {version}")
            shape, _fortran, file_dtype = read_header[version](fh)
    except (ValueError, OSError, SyntaxError) as exc:
        raise ModulmError(f"{path}: not a valid .npy file ({exc})") from None
    if len(shape) != 1:
        raise ModulmError(f"{path}: token arrays must be 1-D, this one has shape {shape}")
    if file_dtype.name not in TOKEN_DTYPES:
        raise ModulmError(f"{path}: holds {file_dtype.name}; token files must hold {_dtype_list()}")
    if dtype != "auto" and file_dtype.name != dtype:
        raise ModulmError(f"{path}: dtype mismatch: the file holds {file_dtype.name} but dtype {dtype!r} was given")
    if shape[0] == 0:
        raise ModulmError(f"{path}: token file is empty (0 tokens)")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:  # e.g. truncated data
        raise ModulmError(f"{path}: cannot memory-map the .npy file ({exc})") from None


def data_offset(array: np.ndarray) -> int:
    """Byte offset of the first token in the file behind a memory-mapped ``array``."""
    return int(getattr(array, "offset", 0))


def storage_dtype(vocab_size: int, dtype: str = "auto") -> np.dtype:
    """The dtype to write ids ``< vocab_size`` with: ``auto`` is the smallest of uint16, uint32 and
    int64 that holds them; a named ``dtype`` that cannot hold them is a :class:`ModulmError`."""
    if dtype == "auto":
        return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32 if vocab_size <= 2**32 else np.int64)
    if dtype not in TOKEN_DTYPES:
        raise ModulmError(f"unknown dtype {dtype!r}; use auto, {_dtype_list()}")
    chosen = np.dtype(dtype)
    if vocab_size - 1 > np.iinfo(chosen).max:
        raise ModulmError(f"dtype {dtype} cannot hold token ids up to {vocab_size - 1} (vocab_size {vocab_size})")
    return chosen


# -- writing ----------------------------------------------------------------------------------
def make_readable(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a file made by ``mkstemp``/``mkdtemp`` (private, 0600/0700) the usual umask permissions."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


_HEADER_BYTES = 128  # a fixed-size v1.0 header, so the length can be filled in at the end


def _npy_header(dtype: np.dtype, length: int) -> bytes:
    body = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (length,)})
    prefix = b"\x93NUMPY\x01\x00"
    room = _HEADER_BYTES - len(prefix) - 2
    text = body.encode("latin1")
    if len(text) + 1 > room:
        raise ValueError(f"npy header for shape ({length},) does not fit in {_HEADER_BYTES} bytes")
    text = text + b" " * (room - len(text) - 1) + b"\n"
    return prefix + room.to_bytes(2, "little") + text


def check_output_path(path: str | os.PathLike, suffix: str = ".npy") -> Path:
    """Check that ``path`` can be written (right suffix, existing directory) before any work."""
    path = Path(path)
    if path.suffix != suffix:
        raise ModulmError(f"{path}: output file name must end in {suffix}")
    if path.is_dir():
        raise ModulmError(f"{path}: is a directory, expected an output file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ModulmError(f"{path}: output directory {parent} does not exist")
    return path


class NpyWriter:
    """Append 1-D chunks to a ``.npy`` file written atomically.

    Use as a context manager: on a clean exit the header gets the final length, the file is
    fsynced and renamed to ``path``; on an exception the temporary file is deleted.
    """

    def __init__(self, path: str | os.PathLike, dtype: Any) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.length = 0
        self._file = None
        self._tmp: str | None = None

    def __enter__(self) -> "NpyWriter":
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent or ".")
        self._file = os.fdopen(fd, "wb")
        make_readable(self._tmp)
        self._file.write(_npy_header(self.dtype, 0))
        return self

    def write(self, tokens: Any) -> None:
        """Append ``tokens`` (any 1-D integer array-like; cast to the file's dtype)."""
        chunk = np.asarray(tokens)
        if chunk.dtype != self.dtype:
            chunk = chunk.astype(self.dtype)
        self._file.write(np.ascontiguousarray(chunk).tobytes())
        self.length += int(chunk.size)

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._file is not None and self._tmp is not None
        try:
            if exc_type is None:
                self._file.seek(0)
                self._file.write(_npy_header(self.dtype, self.length))
                self._file.flush()
                os.fsync(self._file.fileno())
            self._file.close()
            if exc_type is None:
                os.replace(self._tmp, self.path)
                self._tmp = None
        finally:
            if self._tmp is not None and os.path.exists(self._tmp):
                os.unlink(self._tmp)


def write_json_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        make_readable(tmp)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
