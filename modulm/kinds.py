"""The kinds of component modulm knows, each with its contract.

A *kind* is a role in a training run. Each has an interface below whose docstring is the
contract every component of that kind must keep (``modulm.testing`` checks it), and the names
of the keyword-only arguments injected when it is built (:data:`INJECTED`).

Factories declare nested components with :func:`nested`::

    def transformer(d_model: int = 512, ffn: nested("ffn") = "swiglu", *, vocab_size: int): ...

The recipe may then hold a ``[model.ffn]`` table (or a plain name string); the factory receives a
:class:`Builder` and calls it with the injected arguments of that kind: ``ffn(d_model=…, d_ff=…)``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Annotated, Any, Iterable, Iterator, Mapping, Protocol, runtime_checkable

KINDS: tuple[str, ...] = (
    "model",
    "block",
    "attention",
    "ffn",
    "norm",
    "position",
    "optimizer",
    "schedule",
    "data",
    "logger",
    "tokenizer",
    "exporter",
)

#: Keyword-only arguments the builder of each kind passes. A factory takes the ones it needs
#: (keyword-only, so a recipe cannot set them); it must accept every name listed here that has
#: no default in its own signature, and may ignore the rest with ``**_``.
INJECTED: dict[str, tuple[str, ...]] = {
    "model": ("vocab_size",),
    "block": ("d_model", "num_heads", "d_ff", "context_length", "attention", "ffn", "norm", "position"),
    "attention": ("d_model", "num_heads", "context_length", "position"),
    "ffn": ("d_model", "d_ff"),
    "norm": ("d_model",),
    "position": ("d_k", "context_length", "theta"),
    "optimizer": ("params",),
    "schedule": ("base_lr", "max_iterations"),
    "data": ("seed", "cache_dir"),
    "logger": ("run_dir",),
    "tokenizer": (),
    "exporter": (),
}


@dataclass(frozen=True)
class NestedKind:
    """Annotation marker: this parameter is a nested component of ``kind``."""

    kind: str
    many: bool = False


def nested(kind: str, many: bool = False):
    """Annotation for a factory parameter that takes a nested component (or a list, ``many``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known kinds: {', '.join(KINDS)}")
    return Annotated[Any, NestedKind(kind, many)]


class Builder(Protocol):
    """A validated nested component waiting for its injected arguments.

    ``builder(**injected)`` builds a new instance each call; ``builder.name`` is the component's
    registry name and ``builder.params`` its recipe parameters (defaults filled in).
    """

    name: str
    params: Mapping[str, Any]

    def __call__(self, **injected: Any) -> Any: ...


@runtime_checkable
class Model(Protocol):
    """kind ``model``: a causal language model, an ``nn.Module``.

    ``forward(token_ids)`` takes an int64 tensor ``(..., T)`` with ``T <= context_length`` and ids in
    ``[0, vocab_size)`` and returns logits ``(..., T, vocab_size)``. Logits at position ``t`` depend
    only on tokens ``<= t`` (causal), and batch elements are independent. Attributes
    ``vocab_size`` and ``context_length`` are set. Parameters are created on the CPU in float32;
    the trainer moves the model. ``state_dict()`` holds only learnable weights (no derived buffers).
    Optional: ``layers``, an ``nn.ModuleList`` of the repeated blocks; ``distributed.strategy =
    "fsdp"`` shards each of them as a unit (without it the model is sharded as one unit). Optional:
    a keyword ``targets`` (int64 ``(..., T)``) to ``forward``, which then returns the mean
    cross-entropy of the logits against them (a float32 scalar, as
    :func:`modulm.functional.cross_entropy` of the logits), so a model can fuse its head with the
    loss; the trainer passes it whenever ``forward`` has that parameter.
    Injected: ``vocab_size``.
    """

    vocab_size: int
    context_length: int

    def __call__(self, token_ids: Any) -> Any: ...


def takes_targets(model: Any) -> bool:
    """Whether ``model.forward`` takes ``targets=`` (and so returns the mean cross-entropy: the
    optional part of :class:`Model`)."""
    try:
        return "targets" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError, AttributeError):  # no forward, or one without a signature
        return False


@runtime_checkable
class Block(Protocol):
    """kind ``block``: one residual layer of a transformer, an ``nn.Module``.

    ``forward(x, token_positions=None)`` maps ``(..., T, d_model)`` to the same shape and dtype,
    causally; an optional keyword ``kv_cache`` is passed only during cached decoding. Injected:
    ``d_model, num_heads, d_ff, context_length`` and the builders
    ``attention, ffn, norm, position`` it builds its parts with.
    """

    def __call__(self, x: Any, token_positions: Any = None) -> Any: ...


@runtime_checkable
class Attention(Protocol):
    """kind ``attention``: causal multi-head self-attention, an ``nn.Module``.

    ``forward(x, token_positions=None)`` maps ``(..., T, d_model)`` to the same shape and dtype;
    output at position ``t`` depends only on inputs ``<= t``. ``token_positions`` (``(..., T)``
    int64, default ``arange(T)``) is passed to the position component; an optional keyword
    ``kv_cache`` (a per-layer cache) is passed only during cached decoding. Injected: ``d_model,
    num_heads, context_length`` and ``position``, a builder called as ``position(d_k=…,
    context_length=…)``.
    """

    def __call__(self, x: Any, token_positions: Any = None) -> Any: ...


@runtime_checkable
class FeedForward(Protocol):
    """kind ``ffn``: position-wise feed-forward network, an ``nn.Module``.

    ``forward(x)`` maps ``(..., d_model)`` to the same shape and dtype, each position independently.
    Injected: ``d_model`` and ``d_ff`` (``None`` means the component's own default width).
    """

    def __call__(self, x: Any) -> Any: ...


@runtime_checkable
class Norm(Protocol):
    """kind ``norm``: a normalisation layer, an ``nn.Module``.

    ``forward(x)`` maps ``(..., d_model)`` to the same shape and dtype, each position independently.
    Injected: ``d_model``.
    """

    def __call__(self, x: Any) -> Any: ...


@runtime_checkable
class Position(Protocol):
    """kind ``position``: a relative position encoding applied to queries and keys, an ``nn.Module``.

    ``forward(x, token_positions)`` maps ``(..., T, d_k)`` to the same shape and dtype;
    ``token_positions`` is ``(..., T)`` int64 broadcastable against ``x``'s leading dims. Derived
    tables are non-persistent buffers. Injected: ``d_k`` (per-head width), ``context_length`` and
    ``theta`` (the model's ``rope_theta``; encodings without frequencies ignore it).
    """

    def __call__(self, x: Any, token_positions: Any) -> Any: ...


@runtime_checkable
class Optimizer(Protocol):
    """kind ``optimizer``: a ``torch.optim.Optimizer``.

    Built from ``params``, injected as a list of ``(name, parameter)`` pairs so a factory can form
    parameter groups by name. ``step()`` applies one update from ``.grad``; ``state_dict()`` /
    ``load_state_dict()`` round-trip exactly so a resumed run continues the same trajectory. The
    trainer sets ``group["lr"]`` from the schedule before each step.
    """

    param_groups: list

    def step(self, closure: Any = None) -> Any: ...
    def zero_grad(self, set_to_none: bool = True) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class Schedule(Protocol):
    """kind ``schedule``: learning rate as a pure function of the iteration.

    ``schedule(iteration) -> float`` for any ``iteration >= 0``, depending on nothing else, so
    resuming needs only the iteration. Values lie in ``[0, base_lr]``. Injected: ``base_lr`` (the
    optimizer's peak learning rate) and ``max_iterations`` (the run's length).
    """

    def __call__(self, iteration: int) -> float: ...


@runtime_checkable
class DataSource(Protocol):
    """kind ``data``: token streams for training and evaluation.

    ``vocab_size`` bounds every id. ``get_batch(split, batch_size, context_length, device)`` returns
    ``(inputs, targets)``, int64 tensors ``(batch_size, context_length)`` on ``device`` where each row
    of inputs is a contiguous window of the split's tokens and targets are the same window shifted
    by one. Sampling draws from the source's own ``torch.Generator`` seeded by the injected ``seed``;
    ``state_dict()`` / ``load_state_dict()`` capture it so a resumed run draws the same batches.
    ``splits`` names the available splits (``"train"`` always, ``"val"`` optionally);
    ``tokens(split)`` returns the split as a 1-D array-like (memory-mapped, not loaded).
    ``bytes_per_token(split)`` is the mean UTF-8 bytes per token, or ``None`` when unknown;
    ``tokenizer`` is the tokenizer that made the ids, or ``None``. ``describe()`` returns short
    human-readable lines for the run's start-up log; ``validate(context_length)`` raises a one-line
    error naming the file at fault before training starts. Injected: ``seed`` and ``cache_dir`` (where
    derived files may be cached).
    """

    vocab_size: int
    splits: tuple[str, ...]
    tokenizer: Any

    def get_batch(self, split: str, batch_size: int, context_length: int, device: Any) -> tuple[Any, Any]: ...
    def tokens(self, split: str) -> Any: ...
    def bytes_per_token(self, split: str) -> float | None: ...
    def describe(self) -> list[str]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class Logger(Protocol):
    """kind ``logger``: receives the run's events, in order, on the main process only.

    ``log(event)`` takes a flat mapping with an ``"event"`` key: ``"start"`` (run metadata and
    ``"lines"``, human-readable start-up lines), ``"train"`` (``step, max_steps, loss, lr,
    grad_norm, step_time, tokens_per_sec, tokens, elapsed``), ``"eval"`` (``step, val_loss,
    val_perplexity, eval_time``, optionally ``val_bpb``), ``"message"`` (``text``, ``level``),
    ``"error"`` (``text``: the one-line error that stops the run, also printed on stderr by the
    command line) and ``"end"``. Unknown events and keys are ignored. ``close()`` flushes and releases files; it is
    safe to call twice. Injected: ``run_dir`` (a ``pathlib.Path`` that exists).
    """

    def log(self, event: Mapping[str, Any]) -> None: ...
    def close(self) -> None: ...


@runtime_checkable
class Tokenizer(Protocol):
    """kind ``tokenizer``: reversible text <-> token ids.

    ``encode(text) -> list[int]`` with ids in ``[0, vocab_size)``; ``decode(ids) -> str`` with
    ``decode(encode(s)) == s`` for every string ``s`` (special tokens included);
    ``encode_iterable(lines)`` yields the same ids lazily. ``special_tokens`` is the list of special
    token strings. ``save(directory)`` writes files that ``load(directory)`` (a classmethod of the
    component's class) reads back to an equal tokenizer. A tokenizer that must be trained first
    offers ``train(paths)`` and ``is_trained``.
    """

    vocab_size: int
    special_tokens: list[str]

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def encode_iterable(self, lines: Iterable[str]) -> Iterator[int]: ...
    def save(self, directory: Any) -> None: ...


@runtime_checkable
class Exporter(Protocol):
    """kind ``exporter``: writes a trained model in another tool's format (``modulm export``).

    ``models`` names the model components whose weights it knows how to lay out.
    ``problems(model_table)`` returns why a resolved ``[model]`` table of one of those cannot be
    written (empty when it can), so nothing is written for a model the format cannot express.
    ``export(source, out_dir)`` writes the files into the existing directory ``out_dir`` and
    returns their names; ``source`` is a :class:`modulm.export.ExportSource` (the checkpoint's
    weights, resolved recipe, vocabulary size and tokenizer directory). The factory takes no
    injected arguments.
    """

    models: tuple[str, ...]

    def problems(self, model_table: Mapping[str, Any]) -> list[str]: ...
    def export(self, source: Any, out_dir: Any) -> list[str]: ...


INTERFACES: dict[str, type] = {
    "model": Model,
    "block": Block,
    "attention": Attention,
    "ffn": FeedForward,
    "norm": Norm,
    "position": Position,
    "optimizer": Optimizer,
    "schedule": Schedule,
    "data": DataSource,
    "logger": Logger,
    "tokenizer": Tokenizer,
    "exporter": Exporter,
}
