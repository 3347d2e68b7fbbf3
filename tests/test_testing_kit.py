"""modulm.testing: every built-in passes its kind's check; strategies, fixtures and the guide.

The first tests are parametrised from the registry, so a new built-in component is checked with
no new test code (a component with required parameters needs a sample config in SAMPLE_CONFIGS,
which a test demands). tests/test_testing_mutants.py and test_testing_mutants_training.py hold
the broken components each check must reject.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from modulm import hookimpl, nested, testing
from modulm.assemble import builder, create
from modulm.testing import (check_attention, check_ffn, check_model, check_model_block, check_norm,
                            check_position, check_tokenizer, strategies)
from modulm.testing.pytest_plugin import BUILTIN_PLUGINS, builtin_plugin_manager, merged
from tests.kit_support import REGISTRY, TEXT, TINY_MODEL, write_tokens


def sample_config(kind: str, name: str, tmp_path: Path) -> dict | None:
    """The config a built-in is checked with: small sizes, and data files where it needs them."""
    if (kind, name) == ("data", "memmap"):
        return {**write_tokens(tmp_path), "vocab_size": 50}
    if (kind, name) == ("data", "text"):
        (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
        return {"train": str(tmp_path / "a.txt"), "tokenizer": {"component": "bpe", "vocab_size": 280}, "workers": 1}
    if kind == "model":
        return dict(TINY_MODEL)
    if kind == "tokenizer":
        return {"vocab_size": 300}
    if (kind, name) == ("logger", "wandb"):
        pytest.importorskip("wandb", reason="the wandb logger needs the optional wandb package")
        return {"mode": "disabled"}  # offline and quiet: no account, no network
    if (kind, name) == ("logger", "tensorboard"):
        pytest.importorskip("tensorboard", reason="the tensorboard logger needs the optional tensorboard package")
    return None


SAMPLE_CONFIGS = {("data", "memmap"), ("data", "text")}  # components with required parameters
ALL = [pytest.param(c.kind, c.name, id=f"{c.kind}-{c.name}") for c in REGISTRY.components()]


def test_the_builtin_manager_holds_every_builtin_plugin_and_nothing_else():
    pm = builtin_plugin_manager()
    assert {name for name, _ in pm.list_name_plugin()} == set(BUILTIN_PLUGINS)
    assert {c.plugin for c in pm.registry.components()} == set(BUILTIN_PLUGINS)
    assert len(ALL) >= 16


@pytest.mark.parametrize("kind, name", ALL)
def test_every_builtin_passes_the_check_of_its_kind(kind, name, tmp_path, capsys):
    component = REGISTRY.get(kind, name)
    if any(p.required for p in component.schema.params):
        assert (kind, name) in SAMPLE_CONFIGS, f"{kind} {name!r} has required parameters: add a sample config"
    testing.check_component(kind, name, sample_config(kind, name, tmp_path), registry=REGISTRY)


@pytest.mark.parametrize("kind, name", ALL)
def test_every_builtin_declares_ranges_that_validation_enforces(kind, name, tmp_path):
    config = sample_config(kind, name, tmp_path) if (kind, name) in SAMPLE_CONFIGS else None
    testing.check_declared_ranges(kind, name, config, registry=REGISTRY)


def test_the_builtins_declare_the_ranges_the_issue_lists():
    """A spot check that the ranges are declared at all (the kit check passes vacuously without them)."""
    shown = {(c.kind, c.name, p.name): p.range_text() for c in REGISTRY.components() for p in c.schema.params}
    assert shown[("optimizer", "adamw", "lr")] == "> 0"
    assert shown[("optimizer", "adamw", "beta2")] == "in [0, 1)"
    assert shown[("model", "transformer", "num_heads")] == ">= 1"
    assert shown[("data", "text", "val_fraction")] == "in [0, 1)"
    assert shown[("data", "memmap", "vocab_size")] == "in [1, 4294967296]"


@pytest.mark.parametrize("position", REGISTRY.names("position"))
@pytest.mark.parametrize("impl", ["sdpa", "scratch"])
def test_attention_passes_with_every_position_and_impl(position, impl):
    check_attention("mha", {"impl": impl}, position=position, registry=REGISTRY)


@pytest.mark.parametrize("parts", [{"ffn": "silu", "norm": "none", "position": "nope"},
                                   {"attention": {"component": "mha", "impl": "scratch"}}])
@pytest.mark.parametrize("block", REGISTRY.names("block"))
def test_blocks_pass_with_other_parts(block, parts):
    check_model_block(block, parts=parts, registry=REGISTRY)


@given(seed=st.integers(0, 10_000), num_heads=st.integers(1, 3), half_head=st.integers(1, 3),
       d_ff=st.one_of(st.none(), st.integers(1, 24)), context_length=st.integers(2, 10))
def test_model_side_checks_hold_for_drawn_sizes(seed, num_heads, half_head, d_ff, context_length):
    d_model = num_heads * 2 * half_head
    for name in REGISTRY.names("ffn"):
        check_ffn(name, d_model=d_model, d_ff=d_ff, seed=seed, registry=REGISTRY)
    for name in REGISTRY.names("norm"):
        check_norm(name, d_model=d_model, seed=seed, registry=REGISTRY)
    for name in REGISTRY.names("position"):
        check_position(name, d_k=2 * half_head, context_length=context_length, seed=seed, registry=REGISTRY)
    for name in REGISTRY.names("attention"):
        check_attention(name, d_model=d_model, num_heads=num_heads, context_length=context_length, seed=seed,
                        registry=REGISTRY)
    for name in REGISTRY.names("block"):
        check_model_block(name, d_model=d_model, num_heads=num_heads, d_ff=d_ff, context_length=context_length,
                          seed=seed, registry=REGISTRY)


def model_with_a_nested_norm(norm: nested("norm") = "rmsnorm", *, vocab_size: int):
    """A factory with a nested component: the check resolves it from the registry."""
    assert norm.kind == "norm"
    return create(REGISTRY, "model", {"component": "transformer", **TINY_MODEL, "norm": norm.to_table()},
                  vocab_size=vocab_size)


@pytest.mark.parametrize("norm", ["none", {"component": "rmsnorm", "eps": 1e-3}])
def test_a_factory_with_nested_components_is_checked_with_the_registry(norm):
    check_model(model_with_a_nested_norm, {"norm": norm}, registry=REGISTRY)
    assert ("model", "<checked>-model_with_a_nested_norm") not in REGISTRY  # registered only while binding


def test_check_component_names_the_kinds_it_knows():
    with pytest.raises(ValueError, match="no check for kind 'widget'"):
        testing.check_component("widget", "x")
    assert set(testing.CHECK_FOR_KIND) == set(REGISTRY.kinds)


# -- strategies --------------------------------------------------------------------------------
@settings(max_examples=5)
@given(config=strategies.model_configs(), seed=strategies.seeds)
def test_drawn_model_configs_build_models_that_pass_the_model_check(config, seed):
    check_model(config["component"], config, vocab_size=20, seed=seed % 1000, registry=REGISTRY)


@given(data=st.data(), vocab=st.integers(1, 40))
def test_token_batches_are_int64_ids_below_the_vocabulary(data, vocab):
    ids = data.draw(strategies.token_batches(vocab))
    assert ids.dtype == torch.int64 and ids.dim() == 2 and 0 <= int(ids.min()) and int(ids.max()) < vocab


@given(texts=st.lists(strategies.unicode_text(), min_size=1, max_size=4))
def test_bpe_round_trips_drawn_unicode_text(texts):
    check_tokenizer("bpe", {"vocab_size": 280}, texts=texts, registry=REGISTRY)


@given(text=strategies.unicode_text(("<|a|>", "<b>")))
def test_unicode_text_has_no_lone_surrogates(text):
    text.encode("utf-8")


@pytest.mark.parametrize("kind, name", ALL)
@given(data=st.data())
def test_drawn_recipe_tables_validate(kind, name, data):
    fixed = {"train": "t.npy", "vocab_size": 10} if (kind, name) == ("data", "memmap") else None
    if (kind, name) == ("data", "text"):
        fixed = {"train": "t.txt"}
    table = data.draw(strategies.recipe_tables(kind, name, REGISTRY, fixed=fixed))
    assert table["component"] == name
    bound = builder(REGISTRY, kind, table)
    for key, value in table.items():
        if key != "component":
            assert bound.params[key] == value


def test_recipe_tables_of_a_factory_feed_its_check():
    @given(table=strategies.recipe_tables("norm", REGISTRY.get("norm", "rmsnorm").factory,
                                          eps=st.floats(1e-6, 1e-3)))
    @settings(max_examples=3)
    def check(table):
        assert "component" not in table
        check_norm(REGISTRY.get("norm", "rmsnorm").factory, table, dtypes=(torch.float32,))

    check()


# -- fixtures ----------------------------------------------------------------------------------
class TinyFFN(nn.Module):
    """A plain two-layer ffn, registered by a test plugin below."""

    def __init__(self, *, d_model: int, d_ff: int | None = None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, d_ff or 2 * d_model), nn.ReLU(), nn.Linear(d_ff or 2 * d_model, d_model))

    def forward(self, x):
        return self.net(x)


class ExtraFFNPlugin:
    @hookimpl
    def modulm_register_components(self, registry):
        registry.ffn("test-tiny", TinyFFN)


def test_the_builtin_manager_ignores_the_environment(monkeypatch):
    monkeypatch.setenv("MODULM_PLUGINS", "a_module_that_does_not_exist")
    monkeypatch.setenv("MODULM_DISABLE_PLUGIN_AUTOLOAD", "")
    pm = builtin_plugin_manager()
    assert {name for name, _ in pm.list_name_plugin()} == set(BUILTIN_PLUGINS)


def test_register_plugin_adds_components_until_the_test_ends(modulm_pm, register_plugin):
    assert register_plugin(ExtraFFNPlugin(), "extra") == "extra"
    assert modulm_pm.registry.get("ffn", "test-tiny").plugin == "extra"


def test_registered_plugins_are_removed_on_exit():
    from modulm.testing.pytest_plugin import registered_plugins

    pm = builtin_plugin_manager()
    with registered_plugins(pm) as register:
        register(ExtraFFNPlugin(), "extra")
        assert ("ffn", "test-tiny") in pm.registry
    assert ("ffn", "test-tiny") not in pm.registry and not pm.has_plugin("extra")


def test_run_recipe_trains_a_tiny_model_with_a_registered_component(run_recipe, register_plugin):
    register_plugin(ExtraFFNPlugin(), "extra")
    result = run_recipe({"model": {"ffn": "test-tiny"}, "optimizer": {"lr": 1e-2}}, steps=3)
    assert result.iterations == 3 and sorted(result.train_losses) == [0, 1, 2]
    assert all(np.isfinite(v) for v in result.train_losses.values())
    assert (result.run_dir / "recipe.toml").exists()


def test_modulm_pm_is_a_fresh_builtin_manager_per_test(modulm_pm):
    assert {name for name, _ in modulm_pm.list_name_plugin()} == set(BUILTIN_PLUGINS)
    assert modulm_pm.registry is not REGISTRY
    assert ("ffn", "test-tiny") not in modulm_pm.registry  # what another test registered is gone


def test_merged_replaces_a_table_naming_another_component():
    base = {"schedule": {"component": "constant"}, "model": {"d_model": 16, "num_layers": 1}}
    out = merged(base, {"schedule": {"component": "wsd", "warmup_iters": 1}, "model": {"d_model": 8}})
    assert out == {"schedule": {"component": "wsd", "warmup_iters": 1}, "model": {"d_model": 8, "num_layers": 1}}


# -- the guide ---------------------------------------------------------------------------------
def test_the_testing_guide_examples_run_in_order(tmp_path, monkeypatch, capsys, register_plugin, run_recipe):
    import re

    monkeypatch.chdir(tmp_path)
    guide = Path(__file__).resolve().parents[1] / "docs" / "testing-plugins.md"
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"testing-plugins.md[block {i}]", "exec"), namespace)
    assert "changed the outputs at other positions" in capsys.readouterr().out
    namespace["test_my_ffn_trains_in_a_recipe"](register_plugin, run_recipe)  # the fixture example, with the real fixtures


def test_the_testing_guide_names_every_check():
    text = (Path(__file__).resolve().parents[1] / "docs" / "testing-plugins.md").read_text()
    for check in testing.CHECK_FOR_KIND.values():
        assert f"| `{check}` |" in text, check


def test_the_checks_work_without_the_testing_extra(tmp_path):
    """Plain `pip install modulm`: no pytest, no hypothesis (both shadowed here by modules that fail)."""
    import os
    import subprocess

    for missing in ("pytest", "hypothesis"):
        (tmp_path / f"{missing}.py").write_text(f"raise ImportError('{missing} is not installed')\n")
    code = ("import sys, modulm.testing as t; t.check_schedule('constant'); t.check_norm('rmsnorm'); "
            "assert not [m for m in sys.modules if m.startswith(('pytest', 'hypothesis'))]")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -- what a plugin author sees when a component breaks the contract ------------------------------

class _NaNNorm(nn.Module):
    def __init__(self, *, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        return x * self.weight / 0.0


class _RaisesWhenBuilt(nn.Module):
    def __init__(self, *, d_model: int, d_ff: int | None = None) -> None:
        super().__init__()
        raise ValueError("d_ff must be even")


class _PositionalWidth(nn.Module):
    def __init__(self, d_model: int, d_ff: int | None = None) -> None:  # d_model should be keyword-only
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)


def test_a_norm_with_non_finite_outputs_is_named_as_such():
    with pytest.raises(AssertionError, match=r"norm _NaNNorm: a standard normal torch.float32 input of shape .* gave "
                                             r"non-finite outputs"):
        check_norm(_NaNNorm)


def test_a_factory_that_raises_is_the_checks_failure():
    with pytest.raises(AssertionError, match=r"ffn _RaisesWhenBuilt: building it raised ValueError: d_ff must be even"):
        check_ffn(_RaisesWhenBuilt)


def test_an_injected_argument_declared_positional_gets_the_fix_in_the_message():
    from modulm.errors import RecipeError

    with pytest.raises(RecipeError, match=r"ffn.d_model: missing required value \(int\): d_model is passed in when the "
                                          r"ffn is built; make it keyword-only"):
        check_ffn(_PositionalWidth)
