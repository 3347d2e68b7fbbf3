"""Muon's matrix update with the Newton-Schulz iteration in a chosen dtype.

``torch.optim.Muon`` always orthogonalises in bfloat16. That is native on GPUs and AVX512-bf16 /
AMX CPUs, but a CPU with AVX2 only emulates bfloat16 matrix products at about 1/50 of its float32
speed, and there the iteration would dominate a training step. :func:`muon_update` is the same
update (torch's order of operations: the momentum buffer as a running average, the Nesterov
look-ahead as a ``lerp``, decoupled decay before the step) with the iteration in ``dtype``; in
bfloat16 it equals torch's to rounding (batched products round a little differently from
single ones; the tests bound it), in float32 it is the more accurate of the two.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch
from torch import Tensor


def orthogonalise(update: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> Tensor:
    """``steps`` iterations of ``X <- a X + (b S + c S S) X`` with ``S = X Xᵀ`` on ``U / ||U||_F``
    (transposed when it has more rows than columns), computed in ``dtype``; returns ``U``'s shape.
    ``update`` is one matrix ``(A, B)`` or a stack of them ``(n, A, B)``, each normalised alone."""
    a, b, c = coefficients
    x = update.to(dtype)
    tall = update.size(-2) > update.size(-1)
    if tall:
        x = x.mT
    x = x / torch.linalg.matrix_norm(x, keepdim=True).clamp(min=eps) if x.dim() > 2 else x / x.norm().clamp(min=eps)
    multiply_add = torch.addmm if x.dim() == 2 else torch.baddbmm
    for _ in range(steps):
        gram = x @ x.mT
        x = multiply_add(x, multiply_add(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def scale(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """The step size multiplier of an ``A x B`` matrix: ``"original"`` or ``"match_rms_adamw"``."""
    rows, cols = shape[:2]
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


#: Matrices of up to this many elements are orthogonalised as stacks of their shape. Measured on
#: 2 cores with bf16: the speedrun model's 128 x 128 and 128 x 512 matrices take 5.2 ms stacked
#: against 14 ms one by one; bench-small's 512 x 512 and 512 x 1344 ones 10% longer stacked.
STACK_LIMIT = 1 << 18


@torch.no_grad()
def muon_update(group: dict[str, Any], state: dict, dtype: torch.dtype) -> None:
    """One Muon step of every parameter of ``group`` that has a gradient (state: ``momentum_buffer``).

    Small matrices of one shape are orthogonalised together, as one stack (batched matrix
    products): a model's layers repeat a few shapes, so a step makes a handful of kernel launches
    instead of some thirty per matrix. The element-wise parts run as ``torch._foreach_*`` calls.
    """
    lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
    params = [p for p in group["params"] if p.grad is not None]
    if not params:
        return
    if any(p.grad.is_sparse or torch.is_complex(p) for p in params):
        raise RuntimeError("Muon supports dense real 2-D parameters only")
    grads = [p.grad for p in params]
    buffers = [state[p].setdefault("momentum_buffer", torch.zeros_like(g, memory_format=torch.preserve_format))
               for p, g in zip(params, grads)]
    torch._foreach_lerp_(buffers, grads, 1 - momentum)
    directions = torch._foreach_lerp(grads, buffers, momentum) if group["nesterov"] else buffers
    if weight_decay:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    same_shape: dict[tuple, list[int]] = defaultdict(list)
    for index, param in enumerate(params):
        same_shape[(tuple(param.shape), param.device, param.dtype)].append(index)
    for (shape, _, param_dtype), indices in same_shape.items():
        args = (group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)
        if math.prod(shape) <= STACK_LIMIT:
            steps = list(orthogonalise(torch.stack([directions[i] for i in indices]), *args).unbind(0))
        else:  # big matrices already fill the cores; stacking would only add a copy
            steps = [orthogonalise(directions[i], *args) for i in indices]
        torch._foreach_add_([params[i] for i in indices], [step.to(param_dtype) for step in steps],
                            alpha=-lr * scale(group["adjust_lr_fn"], shape))
