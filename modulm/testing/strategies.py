"""Hypothesis strategies for component tests (install the ``testing`` extra for hypothesis).

* :func:`model_configs` -- small transformer recipe tables that build in milliseconds;
* :func:`token_batches` -- int64 id tensors ``(batch, T)`` below a vocabulary size;
* :func:`unicode_text` -- any unicode text (no lone surrogates) with special tokens mixed in;
* :func:`recipe_tables` -- valid recipe tables for a component, drawn from its signature.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from hypothesis import strategies as st

seeds = st.integers(0, 2**31 - 1)


@st.composite
def model_configs(draw: Any, max_layers: int = 2, max_context: int = 16) -> dict[str, Any]:
    """A small ``[model]`` table for the built-in ``transformer``: head widths are even (RoPE)."""
    num_heads = draw(st.integers(1, 3))
    head_dim = 2 * draw(st.integers(1, 4))
    return {
        "component": "transformer",
        "context_length": draw(st.integers(2, max_context)),
        "d_model": num_heads * head_dim,
        "num_layers": draw(st.integers(1, max_layers)),
        "num_heads": num_heads,
        "d_ff": draw(st.one_of(st.none(), st.integers(4, 32))),
        "tie_embeddings": draw(st.booleans()),
    }


@st.composite
def token_batches(draw: Any, vocab_size: int, max_batch: int = 3, max_length: int = 8) -> Any:
    """An int64 tensor ``(batch, T)`` of ids in ``[0, vocab_size)``."""
    import torch

    batch, length = draw(st.integers(1, max_batch)), draw(st.integers(1, max_length))
    ids = draw(st.lists(st.integers(0, vocab_size - 1), min_size=batch * length, max_size=batch * length))
    return torch.tensor(ids, dtype=torch.int64).reshape(batch, length)


def unicode_text(special_tokens: Sequence[str] = ("<|endoftext|>",), max_pieces: int = 6) -> st.SearchStrategy[str]:
    """Text of any code points except lone surrogates, with ``special_tokens`` interleaved."""
    plain = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
    piece = st.one_of(plain, st.sampled_from(list(special_tokens))) if special_tokens else plain
    return st.lists(piece, max_size=max_pieces).map("".join)


def _value_strategy(param: Any) -> st.SearchStrategy[Any] | None:
    """Values of ``param``'s declared type, or None when it cannot be drawn safely (keep the default)."""
    if param.choices is not None:
        return st.sampled_from(list(param.choices))
    types = param.types or ()
    options = []
    if bool in types:
        options.append(st.booleans())
    if int in types and float not in types:
        options.append(st.integers(1, 64))
    if float in types:
        options.append(st.floats(0.0, 1.0, allow_nan=False))
    if type(None) in types and not param.required:
        options.append(st.none())
    return st.one_of(options) if options else None


@st.composite
def recipe_tables(draw: Any, kind: str, component: str | Callable[..., Any], registry: Any = None,
                  fixed: Mapping[str, Any] | None = None, **params: st.SearchStrategy[Any]) -> dict[str, Any]:
    """A recipe table ``{"component": name, ...}`` that validates against the component's signature.

    Each parameter of a simple type (bool, int, float, a ``Literal`` choice, ``X | None``) is drawn
    or left out (its default); ``fixed`` sets parameters outright (required paths, for instance) and
    keyword strategies override the drawing for one parameter. ``component`` is a registry name
    (looked up in ``registry``, default: the installed plugins; the table then starts with
    ``"component"``) or a factory (the table holds only parameters: pass it to a check as ``config``).
    """
    from modulm.schema import schema_of
    from modulm.testing._build import registry_or_default

    if isinstance(component, str):
        schema = registry_or_default(registry).get(kind, component).schema
        table: dict[str, Any] = {"component": component}
    else:
        schema = schema_of(component)
        table = {}
    fixed = dict(fixed or {})
    for param in schema.params:
        if param.name in fixed:
            table[param.name] = fixed[param.name]
            continue
        if param.name in params:
            strategy = params[param.name]
        else:
            strategy = None if param.nested or param.settings else _value_strategy(param)
        if strategy is not None and (param.required or draw(st.booleans())):
            table[param.name] = draw(strategy)
    return table
