"""Small tensor helpers shared by the checks: seeded inputs and the properties several kinds share."""

from __future__ import annotations

import functools
import io
from typing import Any, Callable, Iterable, TypeVar

import torch
from torch import nn


F = TypeVar("F", bound=Callable[..., Any])


def one_thread(check: F) -> F:
    """Run ``check`` with one intra-op thread: its tensors are tiny, and on a busy machine a thread
    pool spins far longer than the arithmetic takes."""

    @functools.wraps(check)
    def run(*args: Any, **kwargs: Any) -> Any:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return check(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return run  # type: ignore[return-value]


def randn(seed: int, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def randint(seed: int, high: int, *shape: int) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


def seeded(build: Callable[[], Any], seed: int) -> Any:
    """``build()`` with torch's global generator seeded first (how a run seeds its model)."""
    torch.manual_seed(seed)
    return build()


def through_checkpoint(state: Any) -> Any:
    """``state`` saved with ``torch.save`` and read back with ``weights_only=True``, as checkpoints are."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def close(a: torch.Tensor, b: torch.Tensor, **tol: Any) -> bool:
    try:
        torch.testing.assert_close(a, b, **tol)
    except AssertionError:
        return False
    return True


def check_module(label: str, module: Any) -> None:
    assert isinstance(module, nn.Module), f"{label}: built {type(module).__name__}, not a torch.nn.Module"
    for name, p in module.named_parameters():
        assert p.device.type == "cpu" and p.dtype == torch.float32, (
            f"{label}: parameter {name} is {p.dtype} on {p.device}; parameters must be created on the CPU in float32"
        )


def check_deterministic(label: str, build: Callable[[], nn.Module], seed: int) -> None:
    first, second = seeded(build, seed).state_dict(), seeded(build, seed).state_dict()
    assert first.keys() == second.keys(), f"{label}: two builds with the same seed have different state_dict keys"
    for key in first:
        assert torch.equal(first[key], second[key]), (
            f"{label}: two builds under torch.manual_seed({seed}) differ in {key!r} (initialisation is not seeded "
            "by torch's global generator)"
        )


def check_state_round_trip(label: str, build: Callable[[], nn.Module], run: Callable[[nn.Module], torch.Tensor],
                           seed: int) -> None:
    """A second instance loading the first's state_dict (through a checkpoint) computes the same outputs."""
    source, target = seeded(build, seed), seeded(build, seed + 1)
    target.load_state_dict(through_checkpoint(source.state_dict()))
    with torch.no_grad():
        expected, got = run(source), run(target)
    assert torch.equal(expected, got), (
        f"{label}: an instance that loaded another's state_dict computes different outputs "
        "(state_dict misses some state that shapes the output)"
    )


def check_gradients(label: str, module: nn.Module, loss: torch.Tensor, inputs: torch.Tensor | None = None) -> None:
    """Every trainable parameter (and ``inputs``, if given) receives a finite gradient that is not all zero."""
    module.zero_grad(set_to_none=True)
    if not loss.requires_grad:
        assert not any(p.requires_grad for p in module.parameters()) and inputs is None, (
            f"{label}: the output does not depend on anything that requires a gradient (detached?)"
        )
        return
    loss.backward()
    if inputs is not None:
        assert inputs.grad is not None and torch.isfinite(inputs.grad).all() and inputs.grad.abs().sum() > 0, (
            f"{label}: no usable gradient reaches the input (the output is detached from it)"
        )
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None, f"{label}: parameter {name} received no gradient (not used in forward?)"
        assert torch.isfinite(p.grad).all(), f"{label}: parameter {name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{label}: the gradient of parameter {name} is all zero"


def check_causal(label: str, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 replacement: torch.Tensor, time_dim: int, cuts: Iterable[int]) -> None:
    """Changing inputs after position ``cut`` leaves outputs at positions ``<= cut`` unchanged.

    ``time_dim`` is a non-negative index valid for both the input and the output.
    """
    with torch.no_grad():
        out = fn(x)
        for cut in cuts:
            changed = x.clone()
            index = [slice(None)] * x.dim()
            index[time_dim] = slice(cut + 1, None)
            changed[tuple(index)] = replacement[tuple(index)]
            kept = [slice(None)] * out.dim()
            kept[time_dim] = slice(0, cut + 1)
            assert close(fn(changed)[tuple(kept)], out[tuple(kept)]), (
                f"{label}: output at positions <= {cut} changed when only inputs after position {cut} changed (not causal)"
            )


def check_positionwise(label: str, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> None:
    """Each position is processed independently: changing one position's input changes no other
    position's output, and permuting positions permutes the outputs."""
    length = x.shape[-2]
    with torch.no_grad():
        out = fn(x)
        for position in sorted({0, length // 2, length - 1}):
            changed = x.clone()
            changed[..., position, :] = changed[..., position, :] * -2.0 + 1.0
            others = [i for i in range(length) if i != position]
            assert close(fn(changed)[..., others, :], out[..., others, :]), (
                f"{label}: changing the input at position {position} changed the outputs at other positions "
                "(positions are not processed independently)"
            )
        order = torch.randperm(length, generator=torch.Generator().manual_seed(0))
        assert close(fn(x[..., order, :]), out[..., order, :]), (
            f"{label}: permuting positions did not permute the outputs (positions are not processed independently)"
        )
