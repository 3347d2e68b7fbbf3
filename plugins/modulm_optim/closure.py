"""The closure protocol every ``torch.optim.Optimizer.step`` shares."""

from __future__ import annotations

from typing import Any, Callable

import torch


def closure_loss(closure: Callable[[], Any] | None) -> Any:
    """``closure()`` run with gradients enabled (a step runs under ``no_grad``), or None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
