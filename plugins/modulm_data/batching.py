"""Sampling training batches from a 1-D token array.

:func:`get_batch` draws ``batch_size`` start offsets uniformly from every valid start
``0 .. len(x) - context_length - 1`` with a ``torch.Generator`` (so a seed, or a saved generator
state, reproduces the batches exactly), reads each window of ``context_length + 1`` tokens and
returns inputs and targets shifted by one, as int64 tensors on the requested device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from modulm.errors import ModulmError


def num_starts(length: int, context_length: int) -> int:
    """How many windows of ``context_length + 1`` tokens fit in ``length`` tokens (may be <= 0)."""
    return length - context_length


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
    windows are read, so a memory-mapped ``x`` is never loaded. On CUDA the batch is copied from
    pinned memory with ``non_blocking=True``.
    """
    if batch_size < 1 or context_length < 1:
        raise ModulmError(f"batch_size and context_length must be >= 1, got {batch_size} and {context_length}")
    length = len(x)
    starts_count = num_starts(length, context_length)
    if starts_count < 1:
        raise ModulmError(
            f"token array of {length} tokens is too short for context_length {context_length}: "
            f"need at least {context_length + 1}"
        )
    starts = torch.randint(0, starts_count, (batch_size,), generator=generator).numpy()
    windows = _read_windows(x, starts, context_length + 1)
    batch = torch.from_numpy(windows)
    device = torch.device(device)
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    elif device.type != "cpu":
        batch = batch.to(device)
    return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()


def _read_windows(x: Any, starts: np.ndarray, width: int) -> np.ndarray:
    """Rows ``x[s : s + width]`` for each start, as a fresh contiguous int64 array."""
    if isinstance(x, torch.Tensor):
        x = x.numpy()
    index = starts[:, None] + np.arange(width)
    return np.asarray(x[index], dtype=np.int64)
