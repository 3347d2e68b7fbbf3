"""Causal multi-head self-attention: reference agreement, fast == scratch, causality, KV cache."""

import functools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from modulm.assemble import create
from modulm_transformer import CausalSelfAttention, RotaryPositionalEmbedding
from modulm.functional.attention import causal_mask, scaled_dot_product_attention
from modulm_transformer import attention as attention_module
from modulm_transformer.attention import fused_causal_attention
from modulm_transformer.cache import LayerKVCache

seeds = st.integers(0, 2**31 - 1)
leading_dims = st.lists(st.integers(1, 3), min_size=0, max_size=2)
# (num_heads, head_dim) with an even head_dim so RoPE applies
head_layouts = st.tuples(st.integers(1, 4), st.integers(1, 4).map(lambda n: 2 * n))


def randn(seed: int, *shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def make_attention(seed: int, num_heads: int, head_dim: int, impl: str = "sdpa", rope: bool = True,
                   context: int = 16) -> CausalSelfAttention:
    torch.manual_seed(seed)
    d_model = num_heads * head_dim
    position = RotaryPositionalEmbedding(10000.0, head_dim, context) if rope else None
    return CausalSelfAttention(d_model, num_heads, position=position, impl=impl)


def reference_attention(attn: CausalSelfAttention, x: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Multi-head causal attention written with torch ops, RoPE applied pair by pair."""
    *lead, t, d = x.shape
    h = attn.num_heads

    def heads(w):
        return F.linear(x, w).reshape(*lead, t, h, d // h).transpose(-3, -2)

    q, k, v = heads(attn.q_proj.weight), heads(attn.k_proj.weight), heads(attn.v_proj.weight)
    if isinstance(attn.position, RotaryPositionalEmbedding):
        i = torch.arange(0, d // h, 2, dtype=torch.float64)
        angle = torch.arange(t, dtype=torch.float64)[:, None] * theta ** (-i / (d // h))
        cos, sin = angle.cos().float(), angle.sin().float()

        def rot(z):
            even, odd = z[..., 0::2], z[..., 1::2]
            return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)

        q, k = rot(q), rot(k)
    mask = torch.tril(torch.ones(t, t, dtype=torch.bool))
    scores = (q @ k.transpose(-1, -2)) / (d // h) ** 0.5
    out = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v
    return F.linear(out.transpose(-3, -2).reshape(*lead, t, d), attn.output_proj.weight)


@pytest.mark.parametrize("impl", ["sdpa", "scratch"])
@given(seed=seeds, lead=leading_dims, layout=head_layouts, t=st.integers(1, 8), rope=st.booleans())
def test_attention_matches_a_reference(impl, seed, lead, layout, t, rope):
    attn = make_attention(seed, *layout, impl=impl, rope=rope)
    x = randn(seed, *lead, t, attn.d_model)
    out = attn(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, reference_attention(attn, x), rtol=1e-4, atol=1e-5)


@given(seed=seeds, lead=leading_dims, layout=head_layouts, t=st.integers(1, 8), rope=st.booleans())
def test_fast_and_scratch_attention_agree_in_values_and_gradients(seed, lead, layout, t, rope):
    """The same function: equal in float32 values, and in float64 values and gradients (float32
    gradients differ by summation order, up to ~1e-4 of their scale, through the softmax backward)."""
    fast = make_attention(seed, *layout, impl="sdpa", rope=rope)
    scratch = make_attention(seed, *layout, impl="scratch", rope=rope)
    scratch.load_state_dict(fast.state_dict())
    x = randn(seed, *lead, t, fast.d_model)
    torch.testing.assert_close(fast(x), scratch(x), rtol=1e-5, atol=1e-5)
    fast, scratch, x = fast.double(), scratch.double(), x.double()
    out_fast, out_scratch = fast(x), scratch(x)
    torch.testing.assert_close(out_fast, out_scratch, rtol=1e-10, atol=1e-10)
    out_fast.square().sum().backward()
    out_scratch.square().sum().backward()
    for (name, p_fast), p_scratch in zip(fast.named_parameters(), scratch.parameters()):
        torch.testing.assert_close(p_fast.grad, p_scratch.grad, rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("impl", ["sdpa", "scratch"])
@given(seed=seeds, layout=head_layouts, t=st.integers(2, 8), data=st.data())
def test_attention_is_causal(impl, seed, layout, t, data):
    attn = make_attention(seed, *layout, impl=impl)
    x = randn(seed, 2, t, attn.d_model)
    cut = data.draw(st.integers(0, t - 2), label="last unchanged position")
    changed = x.clone()
    changed[:, cut + 1:] = randn(seed + 1, 2, t - cut - 1, attn.d_model)
    torch.testing.assert_close(attn(changed)[:, : cut + 1], attn(x)[:, : cut + 1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("impl", ["sdpa", "scratch"])
def test_attention_output_dtype_follows_its_input(impl, dtype):
    attn = make_attention(0, 2, 4, impl=impl).to(dtype)
    assert attn(randn(0, 2, 5, 8, dtype=dtype)).dtype == dtype


@pytest.mark.parametrize("impl", ["sdpa", "scratch"])
def test_bf16_autocast_attention_returns_bf16_close_to_fp32(impl):
    attn = make_attention(0, 2, 8, impl=impl)
    x = randn(1, 2, 6, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), attn(x), rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("num_queries, num_keys", [(6, 6), (1, 6), (3, 6)])
def test_cpu_half_precision_inputs_are_attended_in_float32(monkeypatch, num_queries, num_keys):
    seen = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, k, v, **kw: seen.append(q.dtype) or real(q, k, v, **kw))
    q = randn(2, 2, num_queries, 8).bfloat16()
    k, v = randn(3, 2, num_keys, 8).bfloat16(), randn(4, 2, num_keys, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused_causal_attention(q, k, v)
    assert seen == [torch.float32] and out.dtype == torch.bfloat16
    expected = fused_causal_attention(q.float(), k.float(), v.float()).bfloat16()
    assert torch.equal(out, expected)  # the float32 result, rounded once


@pytest.mark.parametrize("impl", ["sdpa", "scratch"])
@given(seed=seeds, layout=head_layouts, chunks=st.lists(st.integers(1, 4), min_size=1, max_size=4))
def test_attention_with_a_kv_cache_equals_one_full_pass(impl, seed, layout, chunks):
    attn = make_attention(seed, *layout, impl=impl)
    t = sum(chunks)
    x = randn(seed, 2, t, attn.d_model)
    cache = LayerKVCache(max_seq_len=16)
    outs, start = [], 0
    for size in chunks:
        outs.append(attn(x[:, start:start + size], kv_cache=cache))
        start += size
    assert cache.length == t
    torch.testing.assert_close(torch.cat(outs, dim=1), attn(x), rtol=1e-4, atol=1e-5)


def test_kv_cache_overflow_is_an_error():
    attn = make_attention(0, 1, 4)
    cache = LayerKVCache(max_seq_len=3)
    attn(randn(0, 1, 3, 4), kv_cache=cache)
    with pytest.raises(ValueError, match="overflow"):
        attn(randn(1, 1, 1, 4), kv_cache=cache)


def test_attention_rejects_bad_shapes_and_impls():
    with pytest.raises(ValueError, match="divisible"):
        CausalSelfAttention(10, 3)
    with pytest.raises(ValueError, match="impl"):
        CausalSelfAttention(8, 2, impl="flash")


def test_attention_projections_use_the_reference_names_and_shapes():
    attn = make_attention(0, 4, 4)
    shapes = {k: tuple(v.shape) for k, v in attn.state_dict().items()}
    assert shapes == {f"{p}.weight": (16, 16) for p in ("q_proj", "k_proj", "v_proj", "output_proj")}


def test_registered_mha_builds_position_per_head(registry):
    rope = functools.partial(registry.get("position", "rope").factory, theta=500.0)
    attn = create(registry, "attention", {"component": "mha", "impl": "scratch"},
                           d_model=24, num_heads=3, context_length=10, position=rope)
    assert isinstance(attn, CausalSelfAttention) and attn.impl == "scratch"
    assert attn.position.d_k == 8 and attn.position.max_seq_len == 10 and attn.position.theta == 500.0
    no_position = create(registry, "attention", "mha", d_model=8, num_heads=2, context_length=4, position=None)
    x = randn(0, 4, 8)
    assert no_position(x).shape == x.shape


@given(seed=seeds, layout=head_layouts, t=st.integers(1, 8))
def test_fused_projection_equals_three_separate_projections(seed, layout, t):
    """q, k and v from one matmul against the stacked weights equal the three separate matmuls,
    and so do the gradients of the three weights."""
    attn = make_attention(seed, *layout)
    x = randn(seed, 2, t, attn.d_model)
    fused = attn._project(x)
    separate = [attn._split_heads(p(x)) for p in (attn.q_proj, attn.k_proj, attn.v_proj)]
    for ours, theirs in zip(fused, separate):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    upstream = [randn(seed + i, *o.shape) for i, o in enumerate(fused)]
    weights = [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]
    fused_grads = torch.autograd.grad(fused, weights, upstream)
    separate_grads = torch.autograd.grad(separate, weights, upstream)
    for ours, theirs in zip(fused_grads, separate_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


@given(seed=seeds, layout=head_layouts, keys=st.integers(1, 8), data=st.data())
def test_fused_causal_attention_equals_scratch_for_every_query_count(seed, layout, keys, data):
    """The accelerator path (training, decoding one query, a chunk after a cache) is the same
    function as the from-scratch one; run here on the CPU, where torch's kernels accept the same calls."""
    num_heads, head_dim = layout
    queries = data.draw(st.integers(1, keys), label="queries")
    q = randn(seed, 2, num_heads, queries, head_dim)
    k, v = randn(seed + 1, 2, num_heads, keys, head_dim), randn(seed + 2, 2, num_heads, keys, head_dim)
    expected = scaled_dot_product_attention(q, k, v, causal_mask(queries, keys))
    torch.testing.assert_close(fused_causal_attention(q, k, v), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("impl", "queries"), [("sdpa", 4), ("sdpa", 1), ("sdpa", 2), ("scratch", 1), ("scratch", 2)])
def test_sdpa_impl_takes_the_fused_kernel_for_every_query_count(monkeypatch, impl, queries):
    device, fused = "cpu", impl == "sdpa"
    calls = []
    monkeypatch.setattr(attention_module, "fused_causal_attention", lambda q, k, v: calls.append(q) or q)
    attn = make_attention(0, 2, 4, impl=impl).to(device)
    q = torch.zeros(1, 2, queries, 4, device=device)
    kv = torch.zeros(1, 2, 4, 4, device=device)
    attn._attend(q, kv, kv)
    assert bool(calls) == fused


@given(seed=seeds, lead=leading_dims, layout=head_layouts, t=st.integers(1, 16),
       used=st.sampled_from([(True, True, True), (True, False, True), (False, True, False)]))
def test_rotated_qkv_heads_equal_rotating_each_projection_apart(seed, lead, layout, t, used):
    """The one-kernel rotation of q and k over the stacked projection: the same values as the
    generic path (split, rotate q, rotate k) and the same gradient of ``qkv`` (to float32 rounding), also
    when some of the three heads take no part in the loss (their gradient is None)."""
    from modulm_transformer.position import rotated_qkv_heads
    num_heads, head_dim = layout
    rope = RotaryPositionalEmbedding(10000.0, head_dim, 16)
    qkv = randn(seed, *lead, t, 3 * num_heads * head_dim).requires_grad_()

    def apart(qkv):
        q, k, v = (z.unflatten(-1, (num_heads, head_dim)).transpose(-3, -2) for z in qkv.split(num_heads * head_dim, -1))
        return rope(q), rope(k), v

    ours, theirs = rotated_qkv_heads(qkv, rope.complex_rotations(t), num_heads), apart(qkv)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    upstream = [randn(seed + 1 + i, *o.shape) for i, o in enumerate(ours)]
    picked = [i for i in range(3) if used[i]]
    grads = [torch.autograd.grad([outs[i] for i in picked], qkv, [upstream[i] for i in picked])[0]
             for outs in (ours, theirs)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", ["sdpa", "scratch"])
def test_attention_takes_the_one_kernel_rotation_and_matches_the_generic_path(monkeypatch, impl):
    from modulm_transformer import position as position_module
    attn = make_attention(3, 4, 8, impl=impl)
    x = randn(4, 2, 16, attn.d_model).requires_grad_()
    calls = []
    real = position_module.rotated_qkv_heads
    monkeypatch.setattr(attention_module, "rotated_qkv_heads", lambda *a: calls.append(1) or real(*a))
    fast = attn(x)
    fast_grads = torch.autograd.grad(fast.square().sum(), [x, *attn.parameters()])
    assert calls == [1]
    monkeypatch.setattr(CausalSelfAttention, "_rotates_in_one_kernel", lambda self, qkv: False)
    generic = attn(x)
    generic_grads = torch.autograd.grad(generic.square().sum(), [x, *attn.parameters()])
    assert calls == [1]
    torch.testing.assert_close(fast, generic, rtol=1e-6, atol=1e-6)
    for a, b in zip(fast_grads, generic_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 projections take the generic path
        attn(x)
    attn(x, token_positions=torch.arange(16))  # explicit positions too
    assert calls == [1]
