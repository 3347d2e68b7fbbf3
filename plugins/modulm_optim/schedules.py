"""Learning-rate schedules: pure functions of the iteration (resuming needs only the iteration).

A component is a frozen dataclass holding its settings, called as ``schedule(iteration) -> lr``.
Iterations may be fractional; every schedule is continuous wherever its definition allows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Mapping

from annotated_types import Ge, Interval

from modulm.constraints import checks, warning
from modulm.errors import ModulmError


def _within(value: float, a: float, b: float) -> float:
    # The formulas can land one rounding step outside the interval between a and b at a phase's end.
    return min(max(value, min(a, b)), max(a, b))


def _cosine_between(progress: float, high: float, low: float) -> float:
    """From ``high`` at progress 0 down to ``low`` at progress 1 along half a cosine wave."""
    return _within(low + 0.5 * (1 + math.cos(math.pi * progress)) * (high - low), low, high)


def get_lr_cosine_schedule(
    it: float,
    max_learning_rate: float,
    min_learning_rate: float,
    warmup_iters: int,
    cosine_cycle_iters: int,
) -> float:
    """Cosine annealing with linear warm-up, exactly as CS336 §4.4 defines it.

    ``it < warmup_iters``: ``it / warmup_iters * max_learning_rate``;
    ``warmup_iters <= it <= cosine_cycle_iters``: ``min + (1 + cos(pi * (it - warmup_iters) /
    (cosine_cycle_iters - warmup_iters))) / 2 * (max - min)``; afterwards ``min_learning_rate``.
    (When the cycle has zero length the cosine phase is the single point ``it = warmup_iters``,
    where the rate is ``max_learning_rate``.)
    """
    if it < warmup_iters:
        return it / warmup_iters * max_learning_rate
    if it <= cosine_cycle_iters:
        span = cosine_cycle_iters - warmup_iters
        progress = (it - warmup_iters) / span if span > 0 else 0.0
        return _cosine_between(progress, max_learning_rate, min_learning_rate)
    return min_learning_rate


def _check(component: str, base_lr: float, min_lr: float | None = None, **counts: float) -> None:
    if not base_lr >= 0:
        raise ModulmError(f"schedule {component}: the optimizer's lr must be >= 0, got {base_lr}")
    if min_lr is not None and not 0 <= min_lr <= base_lr:
        raise ModulmError(
            f"schedule {component}: min_lr ({min_lr}) must lie between 0 and the optimizer's lr ({base_lr})"
        )
    for name, value in counts.items():
        if value is not None and value < 0:
            raise ModulmError(f"schedule {component}: {name} must be >= 0, got {value}")


@dataclass(frozen=True)
class CosineWarmup:
    """``get_lr_cosine_schedule`` with its settings bound."""

    base_lr: float
    min_lr: float
    warmup_iters: int
    cosine_cycle_iters: int

    def __call__(self, iteration: float) -> float:
        return get_lr_cosine_schedule(iteration, self.base_lr, self.min_lr, self.warmup_iters, self.cosine_cycle_iters)


def _cycle_after_warmup(p: Mapping[str, Any]) -> list:
    """warning: cosine_cycle_iters <= warmup_iters (no cosine decay at all)."""
    cycle, warmup = p["cosine_cycle_iters"], p["warmup_iters"]
    if cycle is not None and cycle <= warmup:
        return [warning(f"{cycle} <= warmup_iters ({warmup}): the learning rate drops to min_lr right after warm-up, "
                        "with no cosine decay", key="cosine_cycle_iters")]
    return []


@checks(_cycle_after_warmup)
def cosine_warmup(
    warmup_iters: Annotated[int, Ge(0)] = 100,
    min_lr: Annotated[float, Ge(0)] = 3e-5,
    cosine_cycle_iters: Annotated[int, Ge(1)] | None = None,
    *,
    base_lr: float,
    max_iterations: int,
) -> CosineWarmup:
    """Linear warm-up from 0 to lr, cosine decay to min_lr, then min_lr (CS336 §4.4).

    warmup_iters: iterations of linear warm-up from 0 (at iteration 0) to the optimizer's lr (0: none)
    min_lr: learning rate at the end of the cosine cycle and afterwards
    cosine_cycle_iters: iteration where the cosine reaches min_lr (default: the run's max_iterations)
    """
    _check("cosine-warmup", base_lr, min_lr, warmup_iters=warmup_iters, cosine_cycle_iters=cosine_cycle_iters)
    cycle = max_iterations if cosine_cycle_iters is None else cosine_cycle_iters
    return CosineWarmup(base_lr, min_lr, warmup_iters, cycle)


@dataclass(frozen=True)
class Constant:
    """The same learning rate at every iteration."""

    base_lr: float

    def __call__(self, iteration: float) -> float:
        return self.base_lr


def constant(*, base_lr: float, max_iterations: int) -> Constant:
    """The optimizer's lr at every iteration."""
    _check("constant", base_lr)
    return Constant(base_lr)


@dataclass(frozen=True)
class WarmupStableDecay:
    """Warm-up, a stable plateau at ``base_lr``, and a decay to ``min_lr`` ending at ``max_iterations``."""

    base_lr: float
    min_lr: float
    warmup_iters: int
    decay_start: float
    max_iterations: int
    decay_shape: str

    def __call__(self, iteration: float) -> float:
        if iteration < self.warmup_iters:
            return iteration / self.warmup_iters * self.base_lr
        if iteration < self.decay_start:
            return self.base_lr
        if iteration >= self.max_iterations:
            return self.min_lr
        progress = (iteration - self.decay_start) / (self.max_iterations - self.decay_start)
        if self.decay_shape == "cosine":
            return _cosine_between(progress, self.base_lr, self.min_lr)
        return _within(self.base_lr - progress * (self.base_lr - self.min_lr), self.min_lr, self.base_lr)


def wsd(
    warmup_iters: Annotated[int, Ge(0)] = 100,
    decay_fraction: Annotated[float, Interval(ge=0, le=1)] = 0.2,
    decay_shape: Literal["linear", "cosine"] = "linear",
    min_lr: Annotated[float, Ge(0)] = 3e-5,
    *,
    base_lr: float,
    max_iterations: int,
) -> WarmupStableDecay:
    """Warm-up, stable at lr, then decay to min_lr over the run's last decay_fraction.

    warmup_iters: iterations of linear warm-up from 0 (at iteration 0) to the optimizer's lr (0: none)
    decay_fraction: share of max_iterations, at the end of the run, spent decaying (never before warm-up ends)
    decay_shape: "linear" or "cosine" (half a cosine wave) from lr down to min_lr
    min_lr: learning rate at max_iterations and afterwards
    """
    _check("wsd", base_lr, min_lr, warmup_iters=warmup_iters)
    if not 0 <= decay_fraction <= 1:
        raise ModulmError(f"schedule wsd: decay_fraction must be in [0, 1], got {decay_fraction}")
    if decay_shape not in ("linear", "cosine"):
        raise ModulmError(f"schedule wsd: decay_shape must be 'linear' or 'cosine', got {decay_shape!r}")
    decay_start = max(float(warmup_iters), max_iterations * (1 - decay_fraction))
    return WarmupStableDecay(base_lr, min_lr, warmup_iters, decay_start, max_iterations, decay_shape)
