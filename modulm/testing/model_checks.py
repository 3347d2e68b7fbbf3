"""Conformance checks for the model-side kinds: ffn, norm, position, attention, block, model.

Each check takes a registry name or a factory plus a config (its recipe parameters), builds small
instances on the CPU and raises ``AssertionError`` naming the component and the broken rule.
The rules are the contracts in :mod:`modulm.kinds`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from modulm.functional.plain import is_fake
from modulm.kinds import INTERFACES, takes_targets
from modulm.testing._build import component_builder, describe, part_builders
from modulm.testing._torch import (check_causal, check_deterministic, check_gradients, check_module,
                                   check_positionwise, check_state_round_trip, close, one_thread, randint, randn,
                                   seeded)

DTYPES = (torch.float32, torch.bfloat16)
LEADING = ((), (2,), (2, 1))  # leading dims the (..., T, d) contracts are exercised with


def _shape_and_dtype(label: str, build: Callable[[], Any], width: int, length: int,
                     dtypes: Sequence[torch.dtype], seed: int, call: Callable[[Any, torch.Tensor], torch.Tensor]) -> None:
    for dtype in dtypes:
        module = seeded(build, seed).to(dtype)
        for lead in LEADING:
            x = randn(seed, *lead, length, width, dtype=dtype)
            with torch.no_grad():
                try:
                    out = call(module, x)
                except Exception as exc:
                    raise AssertionError(f"{label}: forward on a {dtype} input of shape {tuple(x.shape)} raised "
                                         f"{type(exc).__name__}: {exc}") from exc
            assert isinstance(out, torch.Tensor), f"{label}: forward returned {type(out).__name__}, not a tensor"
            assert out.shape == x.shape, f"{label}: input {tuple(x.shape)} gave output {tuple(out.shape)} (shape not preserved)"
            assert out.dtype == dtype, f"{label}: {dtype} input gave {out.dtype} output (dtype not preserved)"
            assert torch.isfinite(out).all(), (f"{label}: a standard normal {dtype} input of shape {tuple(x.shape)} gave "
                                               "non-finite outputs (inf or NaN)")


def _built(label: str, build: Callable[[], Any], seed: int) -> Any:
    """``build()`` seeded; a factory that raises is reported as the check's failure, named."""
    try:
        return seeded(build, seed)
    except Exception as exc:
        raise AssertionError(f"{label}: building it raised {type(exc).__name__}: {exc}") from exc


def _common(label: str, kind: str, build: Callable[[], Any], width: int, length: int, dtypes: Sequence[torch.dtype],
            seed: int, call: Callable[[Any, torch.Tensor], torch.Tensor]) -> Any:
    module = _built(label, build, seed)
    check_module(label, module)
    assert isinstance(module, INTERFACES[kind]), f"{label}: does not match the {kind} interface (see modulm.kinds)"
    _shape_and_dtype(label, build, width, length, dtypes, seed, call)
    check_deterministic(label, build, seed)
    x = randn(seed + 7, 2, length, width)
    check_state_round_trip(label, build, lambda m: call(m, x), seed)
    x.requires_grad_(True)
    out = call(module, x)
    check_gradients(label, module, (out * randn(seed + 3, *out.shape)).sum(), inputs=x)
    return module


@one_thread
def check_ffn(component: str | Callable[..., Any], config: Mapping[str, Any] | None = None, *, d_model: int = 16,
              d_ff: int | None = 32, dtypes: Sequence[torch.dtype] = DTYPES, seed: int = 0, registry: Any = None) -> None:
    """Check the ``ffn`` contract: shape and dtype kept, position-wise, seeded init, state_dict round
    trip, gradients to every parameter; ``d_ff=None`` (the component's default width) builds too."""
    label = describe("ffn", component)
    make = component_builder("ffn", component, config, registry)
    module = _common(label, "ffn", lambda: make(d_model=d_model, d_ff=d_ff), d_model, 5, dtypes, seed, lambda m, x: m(x))
    check_positionwise(label, module, randn(seed + 1, 2, 6, d_model))
    default_width = make(d_model=d_model, d_ff=None)
    out = default_width(randn(seed, 3, d_model))
    assert out.shape == (3, d_model), f"{label}: with d_ff=None the output has shape {tuple(out.shape)}"


@one_thread
def check_norm(component: str | Callable[..., Any], config: Mapping[str, Any] | None = None, *, d_model: int = 16,
               dtypes: Sequence[torch.dtype] = DTYPES, seed: int = 0, registry: Any = None) -> None:
    """Check the ``norm`` contract: shape and dtype kept, position-wise, seeded init, state_dict round
    trip, gradients to every parameter."""
    label = describe("norm", component)
    make = component_builder("norm", component, config, registry)
    module = _common(label, "norm", lambda: make(d_model=d_model), d_model, 5, dtypes, seed, lambda m, x: m(x))
    check_positionwise(label, module, randn(seed + 1, 2, 6, d_model) * 3)


@one_thread
def check_position(component: str | Callable[..., Any], config: Mapping[str, Any] | None = None, *, d_k: int = 8,
                   context_length: int = 16, theta: float = 10000.0, dtypes: Sequence[torch.dtype] = DTYPES,
                   seed: int = 0, registry: Any = None) -> None:
    """Check the ``position`` contract: shape and dtype kept for ``(..., T, d_k)`` with broadcast
    positions, relative (query-key scores unchanged when every position shifts by the same amount),
    derived tables kept out of ``state_dict``, seeded init and state round trip."""
    label = describe("position", component)
    make = component_builder("position", component, config, registry)
    build = lambda: make(d_k=d_k, context_length=context_length, theta=theta)  # noqa: E731
    length = min(6, context_length - 1)

    def call(module: Any, x: torch.Tensor) -> torch.Tensor:
        return module(x, torch.arange(x.shape[-2]))

    module = _built(label, build, seed)
    check_module(label, module)
    assert isinstance(module, INTERFACES["position"]), f"{label}: does not match the position interface"
    _shape_and_dtype(label, build, d_k, length, dtypes, seed, call)
    check_deterministic(label, build, seed)
    x = randn(seed + 7, 2, 3, length, d_k)
    check_state_round_trip(label, build, lambda m: call(m, x), seed)
    learnable = {name for name, _ in module.named_parameters(remove_duplicate=False)}
    derived = set(module.state_dict()) - learnable
    assert not derived, f"{label}: state_dict holds derived tables {sorted(derived)} (make them persistent=False buffers)"
    # positions per batch element, broadcast over a heads dimension
    positions = randint(seed, context_length - 1, 2, 1, length)
    out = module(x, positions)
    assert out.shape == x.shape, f"{label}: positions of shape {tuple(positions.shape)} gave output {tuple(out.shape)}"
    keys = randn(seed + 2, 2, 3, length, d_k)
    with torch.no_grad():
        def scores(shift: int) -> torch.Tensor:
            q, k = module(x, positions + shift), module(keys, positions + shift)
            return q.double() @ k.double().transpose(-1, -2)

        assert close(scores(1), scores(0), rtol=1e-4, atol=1e-4), (
            f"{label}: query-key scores changed when every position shifted by one (the encoding is not relative)"
        )
    if any(p.requires_grad for p in module.parameters()):
        out = call(module, x)
        check_gradients(label, module, (out * randn(seed + 3, *out.shape)).sum())


@one_thread
def check_attention(component: str | Callable[..., Any], config: Mapping[str, Any] | None = None, *, d_model: int = 16,
                    num_heads: int = 2, context_length: int = 8, position: Any = "rope",
                    dtypes: Sequence[torch.dtype] = DTYPES, seed: int = 0, registry: Any = None) -> None:
    """Check the ``attention`` contract: shape and dtype kept, causal, explicit default positions equal
    the implicit ones, seeded init, state_dict round trip, gradients to every parameter; and with
    every parameter perturbed (so learned gains are not 1), outputs unchanged when every token
    position shifts by the same amount (a relative ``position`` stays relative through the attention).

    ``position`` is the position component injected (a registry name, table, factory or builder).
    """
    label = describe("attention", component)
    make = component_builder("attention", component, config, registry)
    parts = part_builders({"position": position}, registry)
    build = lambda: make(d_model=d_model, num_heads=num_heads, context_length=context_length,  # noqa: E731
                         position=parts["position"])
    _check_sequence_module(label, "attention", build, d_model, context_length, dtypes, seed)
    _check_shift_invariance(label, build, d_model, context_length, seed)


def _check_shift_invariance(label: str, build: Callable[[], Any], d_model: int, context_length: int, seed: int) -> None:
    length = min(6, context_length - 1)
    shift = context_length - length
    module = seeded(build, seed)
    with torch.no_grad():
        for index, p in enumerate(module.parameters()):
            p.mul_(1 + 0.5 * randn(seed + 11 + index, *p.shape))
        x, positions = randn(seed + 1, 2, length, d_model), torch.arange(length)
        assert close(module(x, positions + shift), module(x, positions), rtol=1e-4, atol=1e-4), (
            f"{label}: outputs changed when every token position shifted by {shift} (with perturbed weights): "
            "the scores are not relative (something acts on the queries or keys after the position encoding?)"
        )


@one_thread
def check_model_block(component: str | Callable[..., Any], config: Mapping[str, Any] | None = None, *,
                      d_model: int = 16, num_heads: int = 2, d_ff: int | None = 32, context_length: int = 8,
                      parts: Mapping[str, Any] | None = None, dtypes: Sequence[torch.dtype] = DTYPES, seed: int = 0,
                      registry: Any = None) -> None:
    """Check the ``block`` contract: shape and dtype kept, causal, seeded init, state_dict round trip,
    gradients to every parameter. ``parts`` picks the injected ``attention, ffn, norm, position``
    (default ``mha, swiglu, rmsnorm, rope``)."""
    label = describe("block", component)
    make = component_builder("block", component, config, registry)
    builders = part_builders(parts, registry)
    build = lambda: make(d_model=d_model, num_heads=num_heads, d_ff=d_ff,  # noqa: E731
                         context_length=context_length, **builders)
    _check_sequence_module(label, "block", build, d_model, context_length, dtypes, seed)


def _check_sequence_module(label: str, kind: str, build: Callable[[], Any], d_model: int, context_length: int,
                           dtypes: Sequence[torch.dtype], seed: int) -> None:
    length = min(6, context_length)
    module = _common(label, kind, build, d_model, length, dtypes, seed, lambda m, x: m(x))
    x, other = randn(seed + 1, 2, length, d_model), randn(seed + 2, 2, length, d_model)
    check_causal(label, module, x, other, time_dim=1, cuts=range(length - 1))
    with torch.no_grad():
        assert close(module(x, torch.arange(length)), module(x)), (
            f"{label}: token_positions=arange(T) gave a different output from the default positions"
        )


@one_thread
def check_model(component: str | Callable[..., Any], config: Mapping[str, Any] | None = None, *, vocab_size: int = 32,
                seed: int = 0, registry: Any = None) -> None:
    """Check the ``model`` contract: ``vocab_size``/``context_length`` attributes, logits
    ``(..., T, vocab_size)`` for any ``T <= context_length``, causal, batch elements independent,
    ``state_dict`` holds only learnable weights, seeded init, state round trip, gradients of the
    cross-entropy loss reach every parameter; a ``forward`` that takes ``targets=`` returns that
    loss and its gradients (the optional fused head and loss). Keep ``config`` small (e.g. one
    layer, d_model 16)."""
    label = describe("model", component)
    make = component_builder("model", component, config, registry)
    build = lambda: make(vocab_size=vocab_size)  # noqa: E731
    model = seeded(build, seed)
    check_module(label, model)
    assert isinstance(model, INTERFACES["model"]), f"{label}: does not match the model interface (vocab_size, context_length, forward)"
    assert model.vocab_size == vocab_size, f"{label}: vocab_size attribute is {model.vocab_size}, {vocab_size} was injected"
    context = int(model.context_length)
    assert context >= 1, f"{label}: context_length attribute is {context}"
    length = min(context, 8)
    _check_after_sizing(label, build, model, randint(seed + 1, vocab_size, 1, context))  # the longest paths
    with torch.no_grad():
        for shape in ((length,), (2, length), (2, 1, length), (1, 1), (1, context)):
            ids = randint(seed, vocab_size, *shape)
            logits = model(ids)
            assert logits.shape == (*shape, vocab_size), f"{label}: ids {shape} gave logits {tuple(logits.shape)}"
            assert logits.is_floating_point() and torch.isfinite(logits).all(), f"{label}: logits for ids {shape} are not finite floats"
    learnable = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    extra = set(model.state_dict()) - learnable
    assert not extra, f"{label}: state_dict holds more than learnable weights: {sorted(extra)}"
    check_deterministic(label, build, seed)
    ids, other = randint(seed + 1, vocab_size, 2, length), randint(seed + 2, vocab_size, 2, length)
    check_state_round_trip(label, build, lambda m: m(ids), seed)
    check_causal(label, model, ids, other, time_dim=1, cuts=range(length - 1))
    with torch.no_grad():
        changed = ids.clone()
        changed[1] = other[1]
        assert close(model(changed)[0], model(ids)[0]), f"{label}: changing batch element 1 changed the logits of element 0"
    logits = model(ids)
    targets = randint(seed + 4, vocab_size, 2, length)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab_size).float(), targets.reshape(-1))
    check_gradients(label, model, loss)
    if takes_targets(model):
        _check_loss_in_forward(label, model, ids, targets, loss)


def _check_after_sizing(label: str, build: Callable[[], Any], model: Any, ids: torch.Tensor) -> None:
    """``modulm run`` first runs a copy of the model built on the meta device on fake tensors (the
    activation sizing, :mod:`modulm.activations`), then trains the real one: its first forward and
    backward pass, after that one, must work (nothing it caches between calls may be a fake tensor).
    A model that cannot be built on the meta device, or run on fake tensors, is not sized, so passes."""
    from modulm.activations import saved_activation_bytes
    from modulm.runtime import autocast

    cpu = torch.device("cpu")
    try:
        with torch.device("meta"):
            meta = build()
    except Exception:
        return
    saved_activation_bytes(meta, ids.shape[0], ids.shape[1], cpu, lambda: autocast(cpu, "float32"))
    fails = f"{label}: after the sizing pass on fake tensors the real model fails"
    hint = "a tensor kept between calls must not be made under a dispatch mode (see modulm.functional.plain.dispatch_mode_active)"
    try:
        logits = model(ids)
        logits.float().sum().backward()
    except Exception as error:
        raise AssertionError(f"{fails} ({error}); {hint}") from error
    assert not is_fake(logits), f"{fails} (gives fake logits); {hint}"
    model.zero_grad(set_to_none=True)


def _check_loss_in_forward(label: str, model: Any, ids: torch.Tensor, targets: torch.Tensor, want: torch.Tensor) -> None:
    """``forward(ids, targets=targets)`` is the mean cross-entropy ``want`` of the logits, with the
    same gradient for every parameter."""
    wanted = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    got = model(ids, targets=targets)
    assert isinstance(got, torch.Tensor) and got.dim() == 0 and got.dtype == torch.float32, (
        f"{label}: forward(ids, targets=...) must return the mean loss as a float32 scalar, got "
        f"{getattr(got, 'shape', type(got))} {getattr(got, 'dtype', '')}")
    assert close(got.detach(), want.detach()), (
        f"{label}: forward(ids, targets=...) gave {got.item():.6g}, the cross-entropy of its logits is {want.item():.6g}")
    got.backward()
    for name, p in model.named_parameters():
        if name in wanted:
            assert p.grad is not None and close(p.grad, wanted[name]), (
                f"{label}: the loss from forward(ids, targets=...) gives {name} another gradient than the logits' loss")
