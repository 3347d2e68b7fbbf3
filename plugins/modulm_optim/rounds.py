"""Cutting lists of same-shaped tensors into cache-sized rounds for ``torch._foreach_*`` updates.

An optimizer update is a short chain of element-wise ops over parameters, gradients and state.
Run op by op over whole tensors, each op streams every tensor through main memory again. On the CPU
it is faster to cut the flat tensors into pieces and run the whole chain over one round of
pieces at a time (a few MiB, so it stays in the last-level cache): results are identical, since
every op is element-wise. Accelerators get one round with everything (their foreach kernels
already fuse across tensors and gain nothing from cutting).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor

#: Elements per round on the CPU (across all tensors of the round): 1 MiB per float32 list, so the
#: four lists and a temporary fit a shared 32 MiB L3 with room to spare. Measured on an AdamW
#: step over bench-small's shapes (benchmarks/bench_optimizer.py): 2**17 to 2**19 are within a few
#: per cent of each other, 2**15 is 1.6x slower and whole tensors 2.5x slower.
CPU_ROUND_ELEMENTS = 1 << 18


def cache_sized_rounds(lists: Sequence[Sequence[Tensor]], device: torch.device) -> Iterator[tuple[list[Tensor], ...]]:
    """Yield parallel lists of views of ``lists`` (parallel lists of tensors of equal shapes).

    Every element of every tensor appears in exactly one round, at the same position across the
    parallel lists. Non-contiguous tensors are passed whole.
    """
    if device.type != "cpu":
        yield tuple(list(items) for items in lists)
        return
    budget = CPU_ROUND_ELEMENTS
    current: tuple[list[Tensor], ...] = tuple([] for _ in lists)
    filled = 0
    for group in zip(*lists):
        if not all(t.is_contiguous() for t in group):
            for out, t in zip(current, group):
                out.append(t)
            continue
        flats = [t.view(-1) for t in group]
        numel, start = flats[0].numel(), 0
        while start < numel:
            take = min(numel - start, budget - filled)
            for out, flat in zip(current, flats):
                out.append(flat[start : start + take])
            start += take
            filled += take
            if filled >= budget:
                yield current
                current, filled = tuple([] for _ in lists), 0
    if current[0]:
        yield current
