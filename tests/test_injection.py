"""Values a parent injects reach nested parts however the parts are built (issue: rope_theta)."""

from __future__ import annotations

import pytest
import torch

from modulm import builder, create
from modulm.builders import bind
from modulm.errors import RecipeError
from modulm_transformer import TransformerLM

SIZES = {"d_model": 32, "num_heads": 4, "d_ff": 48, "context_length": 16}


def block_by_create(registry, theta=None):
    position = builder(registry, "position", "rope", **({} if theta is None else {"theta": theta}))
    return create(registry, "block", "prenorm", **SIZES, attention=builder(registry, "attention", "mha"),
                  ffn=builder(registry, "ffn", "swiglu"), norm=builder(registry, "norm", "rmsnorm"), position=position)


def same_block(a, b, x) -> bool:
    b.load_state_dict(a.state_dict())
    buffers_a, buffers_b = dict(a.named_buffers()), dict(b.named_buffers())
    equal_buffers = buffers_a.keys() == buffers_b.keys() and all(torch.equal(buffers_a[k], buffers_b[k]) for k in buffers_a)
    with torch.no_grad():
        return equal_buffers and torch.equal(a(x), b(x))


def test_a_block_built_by_create_with_a_bound_theta_equals_the_models_block(modulm_pm):
    torch.manual_seed(0)
    model = TransformerLM(10, SIZES["context_length"], SIZES["d_model"], 1, SIZES["num_heads"], SIZES["d_ff"],
                          rope_theta=500000.0)
    x = torch.randn(2, SIZES["context_length"], SIZES["d_model"])
    assert same_block(model.layers[0], block_by_create(modulm_pm.registry, 500000.0), x)
    assert not same_block(model.layers[0], block_by_create(modulm_pm.registry), x)  # 10000: visibly different


def test_the_model_binds_rope_theta_on_a_recipe_built_position(modulm_pm):
    torch.manual_seed(0)
    spec = {"component": "transformer", "num_layers": 1, "rope_theta": 500000.0, "vocab_size": 10, **SIZES}
    vocab = spec.pop("vocab_size")
    model = create(modulm_pm.registry, "model", spec, vocab_size=vocab)
    x = torch.randn(1, SIZES["context_length"], SIZES["d_model"])
    assert same_block(model.layers[0], block_by_create(modulm_pm.registry, 500000.0), x)


def test_bind_keeps_the_builder_and_its_table_and_a_call_time_value_wins(modulm_pm):
    rope = builder(modulm_pm.registry, "position", "rope")
    bound = bind(rope, theta=123.0)
    assert bound.to_table() == rope.to_table() == {"component": "rope"} and bound.bound == {"theta": 123.0}
    assert rope.bound == {}  # binding copies
    x, positions = torch.randn(1, 4, 4), torch.arange(4)
    by_hand = modulm_pm.registry.get("position", "rope").factory(d_k=4, context_length=4, theta=123.0)
    assert torch.equal(bound(d_k=4, context_length=4)(x, positions), by_hand(x, positions))
    overridden = bound(d_k=4, context_length=4, theta=10000.0)
    assert torch.equal(overridden(x, positions), rope(d_k=4, context_length=4)(x, positions))
    assert not torch.equal(overridden(x, positions), by_hand(x, positions))


def test_binding_a_name_the_component_does_not_inject_is_an_error(modulm_pm):
    with pytest.raises(RecipeError, match=r"position 'rope' from plugin 'transformer': cannot bind thetaa"):
        builder(modulm_pm.registry, "position", "rope", thetaa=1.0)
