"""Gradient clipping by global L2 norm, from scratch.

The global norm is ``sqrt(sum over every gradient entry of g**2)``. If it is at least
``max_l2_norm`` every gradient is scaled by ``max_l2_norm / (norm + eps)``, which leaves the norm
just under the limit; otherwise the gradients are left exactly as they are.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import torch
from torch import Tensor


@torch.no_grad()
def clip_gradients(parameters: Iterable[Tensor], max_l2_norm: float, eps: float = 1e-6) -> Tensor:
    """Clip the gradients of ``parameters`` in place to global L2 norm ``max_l2_norm``.

    Parameters whose ``.grad`` is ``None`` are skipped. Returns the norm before clipping, a float32
    0-dim tensor (0 when no parameter has a gradient), so the trainer can log it. Norms are
    accumulated in float32 whatever the gradients' dtype. A non-finite norm scales the gradients
    to non-finite values; the caller decides what to do with the step. Sharded ``DTensor``
    gradients (FSDP) give the norm over all their shards, the same on every process.
    """
    if max_l2_norm < 0:
        raise ValueError(f"clip_gradients: max_l2_norm must be >= 0, got {max_l2_norm}")
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = defaultdict(list)
    for p in parameters:
        if p.grad is not None:
            groups[(p.grad.device, p.grad.dtype)].append(p.grad)
    if not groups:
        return torch.zeros((), dtype=torch.float32)
    devices = {device for device, _ in groups}
    first = next(iter(devices))
    squares = [
        torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32)).square().sum().to(first)
        for grads in groups.values()
    ]
    total = torch.stack(squares).sum().sqrt()
    if hasattr(total, "full_tensor"):  # DTensor (FSDP) gradients: the squares were reduced over every shard
        total = total.full_tensor()
    if devices == {torch.device("cpu")}:
        norm = total.item()
        if norm >= max_l2_norm:
            for grads in groups.values():
                torch._foreach_mul_(grads, max_l2_norm / (norm + eps))
        return total
    _scale_without_sync(groups, total, max_l2_norm, eps)
    return total


def _scale_without_sync(groups: dict, total: Tensor, max_l2_norm: float, eps: float) -> None:
    # On an accelerator, deciding in Python would wait for the device; select the factor there
    # (a factor of exactly 1 leaves the gradients bit for bit as they were).
    scale = torch.where(total >= max_l2_norm, max_l2_norm / (total + eps), torch.ones_like(total))
    for (device, dtype), grads in groups.items():
        torch._foreach_mul_(grads, scale.to(device=device, dtype=dtype))
