"""Conformance checks for ``optimizer`` and ``schedule`` components (contracts in :mod:`modulm.kinds`)."""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Mapping

import torch

from modulm.kinds import INTERFACES
from modulm.testing._build import component_builder, describe
from modulm.testing._torch import one_thread, randn, through_checkpoint


def _quadratic(seed: int) -> tuple[list[tuple[str, torch.nn.Parameter]], Callable[[], torch.Tensor]]:
    """Named parameters far from the minimum of a convex quadratic, and the quadratic itself."""
    weight = torch.nn.Parameter(randn(seed + 1, 6) + 3.0 * randn(seed + 2, 6).sign())
    bias = torch.nn.Parameter(torch.tensor([4.0, -4.0]))
    params = [("layer.weight", weight), ("layer.bias", bias)]
    return params, _quadratic_loss(params, seed)


def _quadratic_loss(params: list[tuple[str, torch.nn.Parameter]], seed: int) -> Callable[[], torch.Tensor]:
    curvature, target = 0.5 + randn(seed, 6).abs(), randn(seed + 1, 6)
    (_, weight), (_, bias) = params

    def loss() -> torch.Tensor:
        return 0.5 * (curvature * (weight - target) ** 2).sum() + 0.5 * (bias ** 2).sum()

    return loss


def _step(optimizer: Any, params: list[tuple[str, torch.nn.Parameter]], loss: Callable[[], torch.Tensor],
          lr: float | None) -> float:
    optimizer.zero_grad(set_to_none=True)
    value = loss()
    value.backward()
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr  # what the trainer does before each step
    optimizer.step()
    return float(value.detach())


@one_thread
def check_optimizer(component: str | Callable[..., Any], config: Mapping[str, Any] | None = None, *,
                    lr: float | None = 0.05, steps: int = 100, seed: int = 0, registry: Any = None) -> None:
    """Check the ``optimizer`` contract.

    Built from named parameters, it is a ``torch.optim.Optimizer``; ``steps`` steps at learning rate
    ``lr`` (set in every group before each step, as the trainer does; ``None`` keeps the optimizer's
    own) decrease a convex quadratic; parameters without a gradient are left alone;
    ``state_dict()`` survives a checkpoint and a new optimizer that loads it continues the exact
    trajectory. When the factory has a ``weight_decay`` parameter, a step with zero gradients and
    ``weight_decay > 0`` shrinks every parameter towards zero and one with ``weight_decay = 0`` does not.
    """
    label = describe("optimizer", component)
    config = dict(config or {})
    make = component_builder("optimizer", component, config, registry)

    params, loss = _quadratic(seed)
    optimizer = make(params=params)
    assert isinstance(optimizer, torch.optim.Optimizer) and isinstance(optimizer, INTERFACES["optimizer"]), (
        f"{label}: built {type(optimizer).__name__}, not a torch.optim.Optimizer"
    )
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert owned == {id(p) for _, p in params}, f"{label}: param_groups do not hold exactly the parameters given"
    start = float(loss().detach())
    losses = [_step(optimizer, params, loss, lr) for _ in range(steps)]
    final = float(loss().detach())
    assert math.isfinite(final) and final < 0.9 * start, (
        f"{label}: {steps} steps at lr={lr} took a convex quadratic from {start:.4g} to {final:.4g} "
        f"(expected a decrease of at least 10%; losses {losses[:3]} ... {losses[-3:]})"
    )

    # parameters whose grad is None are skipped
    params, loss = _quadratic(seed)
    frozen = torch.nn.Parameter(torch.ones(3))
    optimizer = make(params=params + [("frozen", frozen)])
    for _ in range(3):
        _step(optimizer, params, loss, lr)
    assert torch.equal(frozen.detach(), torch.ones(3)), f"{label}: a parameter whose .grad is None was changed"

    _check_resume(label, make, lr, seed)
    if "weight_decay" in make.params:  # recipe parameters, defaults filled in
        _check_weight_decay(label, component, config, registry, lr)


def _check_resume(label: str, make: Callable[..., Any], lr: float | None, seed: int) -> None:
    params, loss = _quadratic(seed)
    optimizer = make(params=params)
    for _ in range(5):
        _step(optimizer, params, loss, lr)
    saved_params = [(name, torch.nn.Parameter(p.detach().clone())) for name, p in params]
    saved_state = through_checkpoint(optimizer.state_dict())
    for _ in range(5):
        _step(optimizer, params, loss, lr)

    resumed = make(params=saved_params)
    resumed.load_state_dict(saved_state)
    loss_of_copy = _quadratic_loss(saved_params, seed)
    for _ in range(5):
        _step(resumed, saved_params, loss_of_copy, lr)
    for (name, original), (_, copy_) in zip(params, saved_params):
        assert torch.equal(original.detach(), copy_.detach()), (
            f"{label}: after load_state_dict the optimizer took a different trajectory for {name} "
            "(state_dict does not round-trip its state)"
        )


def _check_weight_decay(label: str, component: Any, config: dict, registry: Any, lr: float | None) -> None:
    def after_zero_gradient_step(weight_decay: float) -> torch.Tensor:
        make = component_builder("optimizer", component, {**config, "weight_decay": weight_decay}, registry)
        weight = torch.nn.Parameter(torch.tensor([2.0, -1.0, 0.5]))
        optimizer = make(params=[("layer.weight", weight)])
        weight.grad = torch.zeros_like(weight)
        if lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr
        optimizer.step()
        return weight.detach()

    start = torch.tensor([2.0, -1.0, 0.5])
    decayed = after_zero_gradient_step(0.1)
    assert (decayed.abs() < start.abs()).all() and (decayed * start > 0).all(), (
        f"{label}: with weight_decay=0.1 and a zero gradient, a step took {start.tolist()} to {decayed.tolist()} "
        "(expected every weight to shrink towards zero: weight decay is ignored?)"
    )
    kept = after_zero_gradient_step(0.0)
    assert torch.equal(kept, start), (
        f"{label}: with weight_decay=0 and a zero gradient, a step moved the weights to {kept.tolist()}"
    )


def conditioned_matrix(seed: int, rows: int, cols: int, condition: float = 100.0) -> torch.Tensor:
    """A random ``rows x cols`` matrix of full rank whose singular values run from 1 down to ``1 / condition``."""
    generator = torch.Generator().manual_seed(seed)
    rank = min(rows, cols)
    left, _ = torch.linalg.qr(torch.randn(rows, rank, generator=generator, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(cols, rank, generator=generator, dtype=torch.float64))
    singular = torch.logspace(0, -torch.log10(torch.tensor(condition)).item(), rank, dtype=torch.float64)
    return (left * singular @ right.T).float()


@one_thread
def check_orthogonalising_optimizer(component: str | Callable[..., Any], config: Mapping[str, Any] | None = None, *,
                                    name: str = "layers.0.attn.q_proj.weight", shapes: tuple = ((12, 8), (8, 12)),
                                    lr: float = 0.05, max_spread: float = 2.0, seed: int = 0,
                                    registry: Any = None) -> None:
    """Check that an optimizer of the Muon family orthogonalises the update of a hidden matrix.

    For each ``shape``, a zero matrix ``name`` (so weight decay has nothing to act on) gets one step
    from a full-rank gradient whose singular values span a factor 100. The step must move the
    matrix, and the singular values of the step must lie within a factor ``max_spread`` of each
    other (an orthogonalised update has them all near one; a plain gradient step keeps the 100).
    The optimizer's ``optimizer`` contract is checked separately by :func:`check_optimizer`.
    """
    label = describe("optimizer", component)
    make = component_builder("optimizer", component, dict(config or {}), registry)
    for index, (rows, cols) in enumerate(shapes):
        weight = torch.nn.Parameter(torch.zeros(rows, cols))
        optimizer = make(params=[(name, weight)])
        weight.grad = conditioned_matrix(seed + index, rows, cols)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        singular = torch.linalg.svdvals(weight.detach().double())
        assert singular.max() > 0, f"{label}: a step with a non-zero gradient left the {rows}x{cols} matrix {name} at zero"
        spread = float(singular.max() / singular.min())
        assert spread <= max_spread, (
            f"{label}: the update of the {rows}x{cols} matrix {name} has singular values spanning a factor {spread:.3g} "
            f"(> {max_spread}) for a gradient spanning 100: not orthogonalised"
        )


@one_thread
def check_schedule(component: str | Callable[..., Any], config: Mapping[str, Any] | None = None, *,
                   base_lr: float = 1e-3, max_iterations: int = 1000, max_jump: float | None = 0.05,
                   seed: int = 0, registry: Any = None) -> None:
    """Check the ``schedule`` contract: ``schedule(t)`` is a float in ``[0, base_lr]`` for every
    ``t >= 0`` (checked up to twice ``max_iterations``), a pure function of ``t`` (same values in any
    call order and from a second instance), and continuous: no two consecutive iterations differ by
    more than ``max_jump * base_lr`` (``None`` allows jumps, for deliberate step schedules)."""
    label = describe("schedule", component)
    make = component_builder("schedule", component, config, registry)
    schedule = make(base_lr=base_lr, max_iterations=max_iterations)
    assert callable(schedule) and isinstance(schedule, INTERFACES["schedule"]), f"{label}: built a non-callable"
    iterations = list(range(2 * max_iterations + 1))
    values = [schedule(t) for t in iterations]
    for t, value in zip(iterations, values):
        assert isinstance(value, (float, int)) and not isinstance(value, bool), (
            f"{label}: schedule({t}) returned {type(value).__name__}, not a float"
        )
        assert math.isfinite(value) and -1e-12 <= value <= base_lr * (1 + 1e-9), (
            f"{label}: schedule({t}) = {value!r} lies outside [0, base_lr={base_lr}]"
        )
    shuffled = iterations[:]
    random.Random(seed).shuffle(shuffled)
    again = make(base_lr=base_lr, max_iterations=max_iterations)
    for t in shuffled:
        assert schedule(t) == values[t] and again(t) == values[t], (
            f"{label}: schedule({t}) changed between calls or instances (not a pure function of the iteration)"
        )
    if max_jump is not None:
        for t in iterations[:-1]:
            jump = abs(values[t + 1] - values[t])
            assert jump <= max_jump * base_lr, (
                f"{label}: the learning rate jumps from {values[t]:.6g} at iteration {t} to {values[t + 1]:.6g} at "
                f"{t + 1} (more than max_jump={max_jump} x base_lr; a discontinuity)"
            )
