"""SGD with a 1/sqrt(t+1) decaying step, the example optimizer of CS336 §4.2.

For each parameter at its step ``t = 0, 1, ...``: ``theta <- theta - lr / sqrt(t + 1) * g``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Annotated, Any, Callable, Iterable

import torch
from annotated_types import Gt
from torch import Tensor

from modulm.errors import ModulmError

from .closure import closure_loss
from .groups import named


class SGD(torch.optim.Optimizer):
    """``SGD(params, lr=1e-3)``: plain SGD whose step shrinks as ``lr / sqrt(t + 1)``.

    State per parameter: ``t``, the number of updates it has had.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3) -> None:
        if not lr >= 0:
            raise ValueError(f"SGD: lr must be >= 0, got {lr}")
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Apply one update to every parameter that has a gradient; returns ``closure()``'s loss."""
        loss = closure_loss(closure)
        for group in self.param_groups:
            # (device, dtype, t) -> parameters and gradients updated with one foreach call
            buckets: dict[tuple, tuple[list[Tensor], list[Tensor]]] = defaultdict(lambda: ([], []))
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                t = int(state.get("t", 0))
                params, grads = buckets[(p.device, p.dtype, t)]
                params.append(p)
                grads.append(p.grad)
                state["t"] = t + 1
            for (_, _, t), (params, grads) in buckets.items():
                torch._foreach_add_(params, grads, alpha=-group["lr"] / math.sqrt(t + 1))
        return loss


def sgd(lr: Annotated[float, Gt(0)] = 1e-3, *, params: Iterable[Any]) -> SGD:
    """SGD with step lr / sqrt(t + 1) at the t-th update (CS336 §4.2's example).

    lr: learning rate before the 1/sqrt(t + 1) decay (the schedule scales it each step)
    """
    if not lr >= 0:
        raise ModulmError(f"optimizer sgd: lr must be >= 0, got {lr}")
    tensors = [t for _, t in named(params)]
    if not tensors:
        raise ModulmError("optimizer sgd: the model has no parameters to optimize")
    return SGD(tensors, lr=lr)
