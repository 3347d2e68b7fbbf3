"""Hypothesis strategies for component tests (install the ``testing`` extra for hypothesis).

* :func:`model_configs` -- small transformer recipe tables that build in milliseconds;
* :func:`token_batches` -- int64 id tensors ``(batch, T)`` below a vocabulary size;
* :func:`unicode_text` -- any unicode text (no lone surrogates) with special tokens mixed in;
* :func:`recipe_tables` -- valid recipe tables for a component, drawn from its signature;
* :func:`out_of_range` -- values of a parameter's type outside its declared range.
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


def _bounds(param: Any) -> tuple[float | None, float | None, bool, bool]:
    """(low, high, low excluded, high excluded) of the declared numeric range, None where open."""
    import annotated_types as at

    low = high = None
    low_open = high_open = False
    for c in param.constraints:
        if isinstance(c, (at.Ge, at.Gt)):
            low, low_open = (c.ge, False) if isinstance(c, at.Ge) else (c.gt, True)
        elif isinstance(c, (at.Le, at.Lt)):
            high, high_open = (c.le, False) if isinstance(c, at.Le) else (c.lt, True)
    return low, high, low_open, high_open


def _multiple_ok(param: Any) -> Callable[[Any], bool]:
    import annotated_types as at

    steps = [c.multiple_of for c in param.constraints if isinstance(c, at.MultipleOf)]
    return lambda v: all(v % step == 0 for step in steps)


def _value_strategy(param: Any) -> st.SearchStrategy[Any] | None:
    """Values of ``param``'s declared type inside its declared range, or None when it cannot be
    drawn safely (keep the default)."""
    if param.choices is not None:
        return st.sampled_from(list(param.choices))
    types = param.types or ()
    low, high, low_open, high_open = _bounds(param)
    options = []
    if bool in types:
        options.append(st.booleans())
    if int in types and float not in types:
        lo = 1 if low is None else int(low) + (1 if low_open or low != int(low) else 0)
        hi = lo + 63 if high is None else int(high) - (1 if high_open and high == int(high) else 0)
        if lo <= min(hi, lo + 63):
            options.append(st.integers(lo, min(hi, lo + 63)).filter(_multiple_ok(param)))
    if float in types:
        lo = 0.0 if low is None else float(low)
        hi = max(lo, 0.0) + 1.0 if high is None else float(high)
        options.append(st.floats(lo, hi, allow_nan=False, exclude_min=low_open, exclude_max=high_open))
    if type(None) in types and not param.required:
        options.append(st.none())
    return st.one_of(options) if options else None


def _refused_keys(registry: Any, kind: str, table: Mapping[str, Any]) -> set[str] | None:
    """The keys of ``table`` its validation blames (a cross-field rule, say); None when it validates."""
    from modulm.validate import bind_component

    problems: list[str] = []
    bind_component(registry, kind, dict(table), path=kind, problems=problems)
    if not problems:
        return None
    return {key for key in table if key != "component" and any(f"{kind}.{key}:" in line for line in problems)}


@st.composite
def recipe_tables(draw: Any, kind: str, component: str | Callable[..., Any], registry: Any = None,
                  fixed: Mapping[str, Any] | None = None, **params: st.SearchStrategy[Any]) -> dict[str, Any]:
    """A recipe table ``{"component": name, ...}`` that validates against the component's signature.

    Each parameter of a simple type (bool, int, float, a ``Literal`` choice, ``X | None``) is drawn
    inside its declared range or left out (its default); drawn values that a cross-field rule of a
    registered component refuses are put back to their defaults; ``fixed`` sets parameters outright (required paths, for instance) and
    keyword strategies override the drawing for one parameter. ``component`` is a registry name
    (looked up in ``registry``, default: the installed plugins; the table then starts with
    ``"component"``) or a factory (the table holds only parameters: pass it to a check as ``config``).
    """
    from modulm.schema import schema_of
    from modulm.testing._build import registry_or_default

    if isinstance(component, str):
        registry = registry_or_default(registry)
        schema = registry.get(kind, component).schema
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
    if isinstance(component, str):  # drawn values a cross-field rule refuses go back to their defaults
        drawn = [key for key in table if key != "component" and key not in fixed and key not in params]
        while drawn and (blamed := _refused_keys(registry, kind, table)) is not None:
            dropped = [key for key in drawn if key in blamed] or drawn
            for key in dropped:
                del table[key]
            drawn = [key for key in drawn if key not in dropped]
    return table


def out_of_range(param: Any) -> st.SearchStrategy[Any]:
    """Values of ``param``'s type that break its declared range (a :class:`modulm.schema.Param`
    with ``constraints``): beyond each bound, NaN for a float, empty for a length bound."""
    from modulm.constraints import violation
    from modulm.testing.schema_checks import outside_values

    low, high, low_open, high_open = _bounds(param)
    is_float = float in (param.types or ())
    options: list[st.SearchStrategy[Any]] = [st.sampled_from(outside_values(param))] if outside_values(param) else []
    if low is not None:
        options.append(st.floats(max_value=low, exclude_max=not low_open, allow_nan=False, allow_infinity=False, width=64)
                       if is_float else st.integers(int(low) - 10**6, int(low)))
    if high is not None:
        options.append(st.floats(min_value=high, exclude_min=not high_open, allow_nan=False, allow_infinity=False)
                       if is_float else st.integers(int(high), int(high) + 10**6))
    if not options:
        raise ValueError(f"{param.name} declares no range that can be broken")
    return st.one_of(options).filter(lambda v: violation(v, param.constraints) is not None)
