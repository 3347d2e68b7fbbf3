"""Declared ranges and cross-field rules: every one is enforced by ``modulm validate`` at once.

The property test walks the registry's schemas and the settings tables: for drawn out-of-range
values of any declared constraint, ``validate`` exits 2 with exactly one line per value, and
``run`` exits 2 having written nothing.
"""

from __future__ import annotations

import contextlib
import io
import math
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Literal

import annotated_types as at
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modulm.cli import main
from modulm.constraints import checks, describe, problem, violation, warning
from modulm.errors import RecipeError
from modulm.recipe import recipe_from_dict, validate
from modulm.registry import Registry
from modulm.schema import schema_of
from modulm.settings import recipe_schema
from modulm.testing.strategies import out_of_range
from modulm.tomlwrite import dumps
from tests.kit_support import REGISTRY

#: Where a component of each kind sits in a recipe, and what the rest of the recipe must select.
SLOTS = {"model": ("model",), "block": ("model", "block"), "attention": ("model", "attention"), "ffn": ("model", "ffn"),
         "norm": ("model", "norm"), "position": ("model", "position"), "optimizer": ("optimizer",),
         "schedule": ("schedule",), "data": ("data",), "logger": ("loggers", "0"), "tokenizer": ("data", "tokenizer")}

BASE = {
    "data": {"component": "memmap", "train": "tokens.npy", "vocab_size": 256},
    "model": {"context_length": 16, "d_model": 16, "num_layers": 1, "num_heads": 2, "d_ff": 32},
    "training": {"batch_size": 2, "max_iterations": 4},
    "schedule": {"warmup_iters": 1},
    "loggers": [{"component": "console"}],
}


def _entries() -> list[tuple[tuple[str, ...], str | None, object]]:
    """(slot, component name or None for a settings table, param) for every constrained parameter."""
    out = []
    for component in REGISTRY.components():
        for param in component.schema.params:
            if param.constraints:
                assert component.kind in SLOTS, f"kind {component.kind!r} declares ranges: give it a place in SLOTS"
                out.append((SLOTS[component.kind], component.name, param))
    for top in schema_of(recipe_schema).params:
        if top.settings is not None:
            out.extend(((top.name,), None, p) for p in schema_of(top.settings).params if p.constraints)
    return out


ENTRIES = _entries()


def test_every_settings_table_and_most_components_declare_ranges():
    tables = {slot[0] for slot, name, _ in ENTRIES if name is None}
    assert tables == {"training", "checkpointing", "logging", "system", "distributed", "generation"}
    assert len(ENTRIES) >= 40


def _requires(slot: tuple[str, ...], name: str | None) -> dict[tuple[str, ...], str]:
    """The components a parameter's table needs selected (a tokenizer lives in the text source)."""
    if name is None:
        return {}
    return {("data",): "text", slot: name} if slot == ("data", "tokenizer") else {slot: name}


def _table(recipe: dict, slot: tuple[str, ...]) -> dict:
    if slot == ("loggers", "0"):
        return recipe["loggers"][0]
    table = recipe
    for part in slot:
        table = table.setdefault(part, {})
    return table


@st.composite
def broken_recipes(draw, root: Path):
    """A recipe with 1-3 parameters out of their range, and the TOML paths of those parameters."""
    picks = draw(st.lists(st.sampled_from(ENTRIES), min_size=1, max_size=3, unique_by=lambda e: (e[0], e[2].name)))
    chosen: dict[tuple[str, ...], str] = {}
    kept = []
    for slot, name, param in picks:
        needs = _requires(slot, name)
        if all(chosen.get(s, n) == n for s, n in needs.items()):
            chosen.update(needs)
            kept.append((slot, param))
    recipe = {k: (dict(v) if isinstance(v, dict) else [dict(i) for i in v]) for k, v in BASE.items()}
    recipe["data"]["train"] = str(root / "tokens.npy")
    recipe["checkpointing"] = {"checkpoint_dir": str(root / "run")}
    if chosen.get(("data",)) == "text":
        recipe["data"] = {"component": "text", "train": str(root / "a.txt")}
    for slot, name in chosen.items():
        _table(recipe, slot)["component"] = name
    for slot, param in kept:
        _table(recipe, slot)[param.name] = draw(out_of_range(param))
    return recipe, [".".join(slot + (param.name,)) for slot, param in kept]


def _cli(*argv: str) -> tuple[int, list[str]]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(argv))
    return code, err.getvalue().strip().splitlines()


ROOT = Path(tempfile.mkdtemp(prefix="modulm-test-constraints-")) / "case"  # made afresh for each example


@given(case=broken_recipes(ROOT))
def test_out_of_range_values_fail_validate_one_line_each_and_run_writes_nothing(case):
    recipe, paths = case
    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir(parents=True)
    try:
        path = ROOT / "recipe.toml"
        path.write_text(dumps(recipe))
        code, lines = _cli("validate", str(path))
        assert code == 2, lines
        assert len(lines) == len(paths), (paths, lines)
        for dotted in paths:
            assert sum(f": {dotted}: " in line and "out of range" in line for line in lines) == 1, (dotted, lines)
        code, lines = _cli("run", str(path))
        assert code == 2, lines
        assert sorted(p.name for p in ROOT.iterdir()) == ["recipe.toml"]
    finally:
        shutil.rmtree(ROOT, ignore_errors=True)


# -- the markers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("marks, text", [((at.Ge(1),), ">= 1"), ((at.Gt(0), at.Le(1)), "in (0, 1]"),
                                         (tuple(at.Interval(ge=0, lt=1)), "in [0, 1)"),
                                         ((at.Ge(0), at.MultipleOf(8)), ">= 0 and a multiple of 8"),
                                         ((at.MinLen(1),), "non-empty")])
def test_ranges_read_as_people_write_them(marks, text):
    assert describe(marks) == text


@pytest.mark.parametrize("value, marks, refused", [
    (0, (at.Ge(1),), True), (1, (at.Ge(1),), False), (math.inf, (at.Gt(0),), True), (10**30, (at.Ge(0),), False), (0.0, (at.Gt(0),), True), (math.nan, (at.Ge(0),), True),
    (1.0, tuple(at.Interval(ge=0, lt=1)), True), (0.999, tuple(at.Interval(ge=0, lt=1)), False),
    (12, (at.MultipleOf(8),), True), ("", (at.MinLen(1),), True), ([], (at.MinLen(1),), True), ("x", (at.MinLen(1),), False),
])
def test_violation_refuses_exactly_the_values_outside(value, marks, refused):
    assert (violation(value, marks) is not None) == refused


# -- cross-field rules ---------------------------------------------------------------------------
def _problems(**tables) -> list[str]:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for key, table in tables.items():
        data[key] = table if "component" in table else {**data.get(key, {}), **table}
    try:
        validate(recipe_from_dict(data), REGISTRY)
    except RecipeError as exc:
        return exc.problems
    return []


@pytest.mark.parametrize("tables, expected", [
    ({"model": {"d_model": 18, "num_heads": 4}}, "model.d_model: 18 is not divisible by model.num_heads (4)"),
    ({"model": {"d_model": 18, "num_heads": 6}}, "model.num_heads: RoPE needs an even head width, and d_model / num_heads = 18 / 6 = 3"),
    ({"training": {"batch_size": 6, "grad_accum_steps": 4}}, "training.batch_size: 6 is not divisible by training.grad_accum_steps (4)"),
    ({"system": {"dtype": "float16", "device": "cpu"}}, "system.dtype: float16 autocast is not supported on device cpu"),
    ({"system": {"device": "gpu"}}, "system.device: 'gpu' is not a device (use auto, cpu, cuda, cuda:N or mps)"),
    ({"system": {"device": "gpu", "dtype": "float16"}}, "system.device: 'gpu' is not a device"),
    ({"optimizer": {"lr": 1e-4}, "schedule": {"min_lr": 1e-3}}, "schedule.min_lr: 0.001 exceeds the optimizer's peak lr (0.0001)"),
    ({"data": {"dtype": "uint16", "vocab_size": 70000}}, "data.dtype: uint16 holds token ids up to 65535, too few for vocab_size 70000"),
    ({"data": {"component": "text", "train": "a.txt", "tokenizer": {"vocab_size": 256}}}, "data.tokenizer.vocab_size: vocab_size 256 is too small: it must be at least 256 bytes + 1 special token(s) = 257"),
])
def test_cross_field_rules_are_reported_by_validate_with_their_path(tables, expected):
    problems = _problems(**tables)
    assert len(problems) == 1 and expected in problems[0], problems


def test_odd_head_width_is_fine_without_rope():
    assert _problems(model={"d_model": 18, "num_heads": 6, "position": "nope"}) == []


def test_rules_wait_until_the_table_is_valid():
    """num_heads = 0 is one problem (its range), not also a division by zero in the rule."""
    problems = _problems(model={"num_heads": 0})
    assert len(problems) == 1 and "model.num_heads: 0 is out of range: must be >= 1" in problems[0]


def test_a_warning_keeps_the_recipe_valid_and_validate_prints_it(tmp_path, capsys):
    path = tmp_path / "r.toml"
    path.write_text(dumps({**BASE, "schedule": {"warmup_iters": 10}, "data": {**BASE["data"], "train": "t.npy"}}))
    assert main(["validate", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == (f"modulm: warning: {path}: schedule.warmup_iters: 10 >= training.max_iterations (4): "
                                    "the run ends before the learning rate reaches its peak")
    assert captured.out.strip().endswith(": ok")


def test_third_party_rules_and_ranges_get_the_same_treatment():
    def lowpass(cutoff: Annotated[float, at.Interval(gt=0, le=1)] = 0.5, floor: float = 0.1, *, d_model: int):
        """A norm with a range and a rule."""

    @checks(lambda p: [problem(f"{p['floor']} must stay below cutoff ({p['cutoff']})", key="floor")] if p["floor"] >= p["cutoff"] else [],
            lambda p: [warning("a cutoff of 1 passes everything", key="cutoff")] if p["cutoff"] == 1 else [])
    def lowpass_checked(cutoff: Annotated[float, at.Interval(gt=0, le=1)] = 0.5, floor: float = 0.1, *, d_model: int):
        """The same, with the rule."""

    registry = Registry()
    for name, factory in (("acme-lowpass", lowpass), ("acme-checked", lowpass_checked)):
        registry.add("norm", name, factory, plugin="acme")
    from modulm.recipe import bind_component

    problems: list[str] = []
    bind_component(registry, "norm", {"component": "acme-lowpass", "cutoff": 0.0}, path="model.norm", problems=problems)
    assert problems == ["<python>: model.norm.cutoff: 0.0 is out of range: must be in (0, 1] [norm 'acme-lowpass' from plugin 'acme']"]
    problems = []
    bind_component(registry, "norm", {"component": "acme-checked", "floor": 0.7}, path="model.norm", problems=problems)
    assert problems == ["<python>: model.norm.floor: 0.7 must stay below cutoff (0.5) [norm 'acme-checked' from plugin 'acme']"]


def test_assemble_prints_the_warnings_of_a_valid_recipe_once(tmp_path, capsys):
    import numpy as np

    from modulm.assemble import assemble

    np.save(tmp_path / "tokens.npy", np.arange(64, dtype=np.uint16) % 256)
    recipe = {**BASE, "data": {**BASE["data"], "train": str(tmp_path / "tokens.npy")}, "schedule": {"warmup_iters": 9}}
    assemble(recipe, REGISTRY)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["modulm: warning: <python>: schedule.warmup_iters: 9 >= training.max_iterations (4): "
                   "the run ends before the learning rate reaches its peak"]


def test_a_range_and_a_named_choice_can_share_one_parameter():
    """``Annotated[int, Ge(1)] | Literal["auto"] | None``: 4 and "auto" pass, 0 and "autoo" do not."""
    from modulm.recipe import bind_component

    def threaded(threads: Annotated[int, at.Ge(1)] | Literal["auto"] | None = None, *, run_dir=None):
        """A logger with a thread count."""

    registry = Registry()
    registry.add("logger", "acme-threaded", threaded, plugin="acme")
    assert registry.get("logger", "acme-threaded").schema.get("threads").range_text() == ">= 1"
    for value, refused in ((4, None), ("auto", None), (0, "0 is out of range: must be >= 1"),
                           ("autoo", "'autoo' is not one of 'auto', None"), (True, "expected int | str | None")):
        problems: list[str] = []
        bind_component(registry, "logger", {"component": "acme-threaded", "threads": value}, problems=problems)
        assert (problems == []) if refused is None else (len(problems) == 1 and refused in problems[0]), (value, problems)
