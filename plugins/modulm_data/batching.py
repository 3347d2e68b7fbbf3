"""Sampling training batches from a 1-D token array.

:func:`get_batch` draws ``batch_size`` start offsets uniformly from every valid start
``0 .. len(x) - context_length - 1`` with a ``torch.Generator`` (so a seed, or a saved generator
state, reproduces the batches exactly), reads each window of ``context_length + 1`` tokens and
returns inputs and targets shifted by one, as int64 tensors on the requested device.

The data sources read their windows with :class:`FileWindows` instead: positioned reads
(``pread``) from the token file, which draw the same windows from the same generator but leave
no file pages mapped into the process. Touching a window through a memory map maps whole
page-cache folios (up to 2 MiB each on recent kernels), so a long run would slowly map the
entire file into its resident set; with ``pread`` the resident set stays flat.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from modulm.errors import ModulmError


def sample_starts(length: int, batch_size: int, context_length: int, generator: torch.Generator | None) -> np.ndarray:
    """``batch_size`` start offsets drawn uniformly from ``[0, length - context_length)``."""
    if batch_size < 1 or context_length < 1:
        raise ModulmError(f"batch_size and context_length must be >= 1, got {batch_size} and {context_length}")
    if length < context_length + 1:
        raise ModulmError(
            f"token array of {length} tokens is too short for context_length {context_length}: "
            f"need at least {context_length + 1}"
        )
    return torch.randint(0, length - context_length, (batch_size,), generator=generator).numpy()


def to_device(windows: np.ndarray, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Split int64 windows ``(batch, context + 1)`` into contiguous inputs and targets on ``device``.

    On CUDA the copy goes from pinned memory with ``non_blocking=True``.
    """
    batch = torch.from_numpy(windows)
    device = torch.device(device)
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    elif device.type != "cpu":
        batch = batch.to(device)
    return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()


def get_batch(
    x: Any,
    batch_size: int,
    context_length: int,
    device: Any = "cpu",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``(inputs, targets)``, each ``(batch_size, context_length)`` int64 on ``device``.

    ``x`` is a 1-D integer array (a NumPy array or memmap, or a CPU tensor). Row ``i`` of inputs
    is ``x[s_i : s_i + context_length]`` and row ``i`` of targets is ``x[s_i + 1 : s_i +
    context_length + 1]``, with each ``s_i`` uniform over all valid starts. Only the sampled
    windows are read, so a memory-mapped ``x`` is never loaded.
    """
    starts = sample_starts(len(x), batch_size, context_length, generator)
    if isinstance(x, torch.Tensor):
        x = x.numpy()
    index = starts[:, None] + np.arange(context_length + 1)
    return to_device(np.asarray(x[index], dtype=np.int64), device)


class FileWindows:
    """Reads token windows from the file behind a memory-mapped token array with ``pread``."""

    def __init__(self, path: str | os.PathLike, array: np.ndarray) -> None:
        self.path = os.fspath(path)
        self.array = array
        self.offset = int(getattr(array, "offset", 0))
        self._fd: int | None = None

    def read(self, starts: np.ndarray, width: int) -> np.ndarray:
        """Rows ``tokens[s : s + width]`` for each start, as an int64 array."""
        if not hasattr(os, "preadv"):  # pragma: no cover - not POSIX
            return np.asarray(self.array[starts[:, None] + np.arange(width)], dtype=np.int64)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        itemsize = self.array.dtype.itemsize
        row_bytes = width * itemsize
        out = np.empty((len(starts), width), dtype=self.array.dtype)
        view = memoryview(out).cast("B")
        for row, start in enumerate(starts.tolist()):
            got = os.preadv(self._fd, [view[row * row_bytes : (row + 1) * row_bytes]], self.offset + start * itemsize)
            if got != row_bytes:
                raise ModulmError(f"{self.path}: short read at token {start} (the file changed while in use?)")
        return out.astype(np.int64)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}
