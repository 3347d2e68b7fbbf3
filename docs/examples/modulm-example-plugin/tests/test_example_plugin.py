"""The example plugin's own tests: its component is found through the entry point and keeps the ffn contract."""

import torch

from modulm import plugins
from modulm.assemble import create


def test_geglu_is_registered_through_its_entry_point():
    registry = plugins.load(env={}).registry
    assert registry.get("ffn", "example-geglu").plugin == "example"


def test_geglu_preserves_shape_and_dtype():
    registry = plugins.load(env={}).registry
    ffn = create(registry, "ffn", {"component": "example-geglu", "hidden_multiple": 32}, d_model=16, d_ff=None)
    x = torch.randn(2, 5, 16)
    assert ffn(x).shape == x.shape and ffn(x).dtype == x.dtype
    assert ffn.w1.shape == (64, 16)  # 8/3 * 16 = 42.7, rounded up to a multiple of 32
