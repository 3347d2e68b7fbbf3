"""Every registered transformer part keeps its kind's contract (modulm/kinds.py), built from the registry."""

import functools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from modulm import plugins
from modulm.assemble import create
from modulm.kinds import INJECTED, INTERFACES

DTYPES = [torch.float32, torch.bfloat16]
seeds = st.integers(0, 2**31 - 1)
leading_dims = st.lists(st.integers(1, 3), min_size=0, max_size=2)
# (num_heads, head_dim), head_dim even for RoPE
layouts = st.tuples(st.integers(1, 3), st.integers(1, 3).map(lambda n: 2 * n))


@pytest.fixture(scope="module")
def registry():
    return plugins.load(autoload=True, env={}).registry


def names(kind):
    registry = plugins.load(autoload=True, env={}).registry
    return [c.name for c in registry.components(kind) if c.plugin == "transformer"]


def randn(seed, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def build(registry, kind, name, seed, dtype, **injected):
    torch.manual_seed(seed)
    return create(registry, kind, name, **injected).to(dtype)


def position_builder(registry, name):
    return functools.partial(create, registry, "position", name, theta=10000.0)


def test_every_kind_of_the_plugin_is_registered(registry):
    expected = {"model": {"transformer"}, "block": {"prenorm", "postnorm"}, "attention": {"mha"},
                "ffn": {"swiglu", "silu", "relu2"}, "norm": {"rmsnorm", "none"}, "position": {"rope", "nope"}}
    for kind, wanted in expected.items():
        assert wanted <= set(names(kind)), kind
        for name in wanted:
            component = registry.get(kind, name)
            assert component.doc, f"{kind} {name} has no one-line doc"
            missing = set(component.schema.injected) - set(INJECTED[kind]) - {"theta"}
            assert not missing, f"{kind} {name} expects names its builder never passes: {missing}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", names("ffn"))
@given(seed=seeds, lead=leading_dims, d_model=st.integers(1, 16), d_ff=st.one_of(st.none(), st.integers(1, 16)),
       n=st.integers(1, 5))
def test_ffn_contract(registry, name, dtype, seed, lead, d_model, d_ff, n):
    ffn = build(registry, "ffn", name, seed, dtype, d_model=d_model, d_ff=d_ff)
    assert isinstance(ffn, INTERFACES["ffn"])
    x = randn(seed, *lead, n, d_model, dtype=dtype)
    out = ffn(x)
    assert out.shape == x.shape and out.dtype == dtype
    # each position independently: reversing positions reverses outputs
    torch.testing.assert_close(ffn(x.flip(-2)), out.flip(-2))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", names("norm"))
@given(seed=seeds, lead=leading_dims, d_model=st.integers(1, 16), n=st.integers(1, 5))
def test_norm_contract(registry, name, dtype, seed, lead, d_model, n):
    norm = build(registry, "norm", name, seed, dtype, d_model=d_model)
    x = randn(seed, *lead, n, d_model, dtype=dtype)
    out = norm(x)
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(norm(x.flip(-2)), out.flip(-2))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", names("position"))
@given(seed=seeds, lead=leading_dims, half=st.integers(1, 6), n=st.integers(1, 6))
def test_position_contract(registry, name, dtype, seed, lead, half, n):
    torch.manual_seed(seed)
    position = create(registry, "position", name, d_k=2 * half, context_length=8, theta=100.0).to(dtype)
    assert position.state_dict() == {}  # derived tables only, never persisted
    x = randn(seed, *lead, n, 2 * half, dtype=dtype)
    positions = torch.randint(0, 7, (*lead, n), generator=torch.Generator().manual_seed(seed))
    out = position(x, positions)
    assert out.shape == x.shape and out.dtype == dtype
    # relative: shifting every position by one leaves query-key scores unchanged
    k = x.flip(-1)

    def scores(offset):
        rotated_q, rotated_k = position(x, positions + offset).float(), position(k, positions + offset).float()
        return rotated_q @ rotated_k.transpose(-1, -2)

    tol = 1e-4 if dtype == torch.float32 else 0.1
    torch.testing.assert_close(scores(1), scores(0), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("position", names("position"))
@pytest.mark.parametrize("impl", ["sdpa", "scratch"])
@given(seed=seeds, lead=leading_dims, layout=layouts, n=st.integers(2, 6), data=st.data())
def test_attention_contract(registry, impl, position, dtype, seed, lead, layout, n, data):
    num_heads, head_dim = layout
    torch.manual_seed(seed)
    attn = create(registry, "attention", {"component": "mha", "impl": impl}, d_model=num_heads * head_dim,
                  num_heads=num_heads, context_length=8, position=position_builder(registry, position)).to(dtype)
    assert isinstance(attn, INTERFACES["attention"])
    x = randn(seed, *lead, n, num_heads * head_dim, dtype=dtype)
    out = attn(x)
    assert out.shape == x.shape and out.dtype == dtype
    cut = data.draw(st.integers(0, n - 2), label="last unchanged position")
    changed = x.clone()
    changed[..., cut + 1:, :] = randn(seed + 1, *lead, n - cut - 1, num_heads * head_dim, dtype=dtype)
    torch.testing.assert_close(attn(changed)[..., : cut + 1, :], out[..., : cut + 1, :])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block", names("block"))
@given(seed=seeds, layout=layouts, ffn=st.sampled_from(["swiglu", "silu"]), norm=st.sampled_from(["rmsnorm", "none"]),
       position=st.sampled_from(["rope", "nope"]), n=st.integers(2, 6), data=st.data())
def test_block_contract(registry, block, dtype, seed, layout, ffn, norm, position, n, data):
    num_heads, head_dim = layout
    d_model = num_heads * head_dim
    torch.manual_seed(seed)
    layer = create(registry, "block", block, d_model=d_model, num_heads=num_heads, d_ff=None, context_length=8,
                   attention=functools.partial(create, registry, "attention", "mha"),
                   ffn=functools.partial(create, registry, "ffn", ffn),
                   norm=functools.partial(create, registry, "norm", norm),
                   position=position_builder(registry, position)).to(dtype)
    assert isinstance(layer, INTERFACES["block"])
    x = randn(seed, 2, n, d_model, dtype=dtype)
    out = layer(x)
    assert out.shape == x.shape and out.dtype == dtype
    cut = data.draw(st.integers(0, n - 2), label="last unchanged position")
    changed = x.clone()
    changed[:, cut + 1:] = randn(seed + 1, 2, n - cut - 1, d_model, dtype=dtype)
    torch.testing.assert_close(layer(changed)[:, : cut + 1], out[:, : cut + 1])
    torch.testing.assert_close(layer(x, torch.arange(n)), out)  # explicit default positions


@given(seed=seeds, n=st.integers(1, 6))
def test_model_contract_in_bfloat16(registry, seed, n):
    torch.manual_seed(seed)
    model = create(registry, "model", {"component": "transformer", "context_length": 8, "d_model": 8,
                                       "num_layers": 1, "num_heads": 2}, vocab_size=11).to(torch.bfloat16)
    assert isinstance(model, INTERFACES["model"])
    ids = torch.randint(0, 11, (2, n), generator=torch.Generator().manual_seed(seed))
    logits = model(ids)
    assert logits.shape == (2, n, 11) and logits.dtype == torch.bfloat16
