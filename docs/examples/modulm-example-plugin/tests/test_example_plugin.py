"""The example plugin's own tests, written with modulm's testing kit (pip install 'modulm[testing]').

``check_ffn`` holds the component to the same ffn contract modulm's built-ins keep; the fixtures
``modulm_pm``, ``register_plugin`` and ``run_recipe`` come from modulm's pytest plugin, which
pytest loads by itself once modulm is installed.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import modulm_example
from modulm import plugins
from modulm.assemble import create
from modulm.testing import check_ffn
from modulm.testing.strategies import recipe_tables


def test_geglu_is_registered_through_its_entry_point():
    registry = plugins.load(env={}).registry
    assert registry.get("ffn", "example-geglu").plugin == "example"


@pytest.mark.parametrize("config", [{}, {"hidden_multiple": 32}])
def test_geglu_keeps_the_ffn_contract(config):
    check_ffn(modulm_example.GeGLU, config)  # by factory: no registry needed


@settings(max_examples=25, deadline=None)  # each example builds and checks a module: keep CI quick
@given(table=recipe_tables("ffn", "example-geglu", registry=plugins.load(env={}).registry,
                           hidden_multiple=st.integers(1, 48)),
       d_model=st.integers(1, 24))
def test_geglu_keeps_the_ffn_contract_for_any_recipe_table(table, d_model):
    registry = plugins.load(env={}).registry
    check_ffn("example-geglu", table, d_model=d_model, d_ff=None, registry=registry)  # by name, as a recipe says


def test_default_width_rounds_up_to_the_multiple(modulm_pm, register_plugin):
    register_plugin(modulm_example, "example")
    ffn = create(modulm_pm.registry, "ffn", {"component": "example-geglu", "hidden_multiple": 32}, d_model=16, d_ff=None)
    assert ffn.w1.shape == (64, 16)  # 8/3 * 16 = 42.7, rounded up to a multiple of 32


def test_a_recipe_trains_with_it(register_plugin, run_recipe):
    register_plugin(modulm_example, "example")
    result = run_recipe({"model": {"ffn": {"component": "example-geglu", "hidden_multiple": 8}}}, steps=2)
    assert result.iterations == 2 and all(torch.isfinite(torch.tensor(v)) for v in result.train_losses.values())
