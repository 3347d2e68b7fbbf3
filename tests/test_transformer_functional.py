"""modulm.functional.attention: softmax, scaled dot-product attention, SiLU, causal masks."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from modulm.functional.attention import causal_mask, gated_silu, scaled_dot_product_attention, silu, softmax

finite = st.floats(allow_nan=False, allow_infinity=False, width=32)  # up to +-3.4e38
rows = st.lists(finite, min_size=1, max_size=12)
seeds = st.integers(0, 2**31 - 1)


def randn(seed: int, *shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# -- softmax ------------------------------------------------------------------------------------
@given(rows)
def test_softmax_sums_to_one_and_stays_finite_for_huge_inputs(values):
    probs = softmax(torch.tensor(values, dtype=torch.float32), dim=-1)
    assert torch.isfinite(probs).all()
    assert (probs >= 0).all()
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)


@given(st.lists(st.floats(-50, 50, width=32), min_size=1, max_size=12), st.floats(-1e4, 1e4, width=32))
def test_softmax_is_shift_invariant(values, shift):
    x = torch.tensor(values, dtype=torch.float64)
    torch.testing.assert_close(softmax(x + shift, dim=0), softmax(x, dim=0), rtol=1e-6, atol=1e-9)


@given(seeds, st.integers(1, 3), st.integers(0, 2))
def test_softmax_matches_torch_along_any_dim(seed, ndim, dim_index):
    x = randn(seed, *[3 + i for i in range(ndim)]) * 10
    dim = dim_index % ndim
    torch.testing.assert_close(softmax(x, dim=dim), torch.softmax(x, dim=dim))


def test_softmax_gives_masked_entries_zero_probability():
    probs = softmax(torch.tensor([[0.0, float("-inf"), 1.0]]), dim=-1)
    assert probs[0, 1] == 0
    torch.testing.assert_close(probs[0, [0, 2]], torch.softmax(torch.tensor([0.0, 1.0]), dim=0))


# -- attention ----------------------------------------------------------------------------------
leading_dims = st.lists(st.integers(1, 3), min_size=0, max_size=3)


@given(seeds, leading_dims, st.integers(1, 6), st.integers(1, 6), st.integers(1, 8), st.integers(1, 8))
def test_sdpa_matches_torch_with_a_random_mask(seed, lead, n, m, d_k, d_v):
    q, k, v = randn(seed, *lead, n, d_k), randn(seed + 1, *lead, m, d_k), randn(seed + 2, *lead, m, d_v)
    mask = torch.rand(n, m, generator=torch.Generator().manual_seed(seed)) < 0.6
    mask[:, 0] = True  # every query attends to something
    out = scaled_dot_product_attention(q, k, v, mask)
    assert out.shape == (*lead, n, d_v)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask) if lead else \
        F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask)[0]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@given(seeds, st.integers(1, 6), st.integers(1, 6))
def test_sdpa_masked_keys_get_no_weight(seed, n, m):
    """Changing a masked-out key or value never changes the output."""
    q, k, v = randn(seed, 2, n, 4), randn(seed + 1, 2, m, 4), randn(seed + 2, 2, m, 3)
    mask = torch.ones(n, m, dtype=torch.bool)
    mask[:, -1] = m == 1  # the last key is hidden unless it is the only one
    k2, v2 = k.clone(), v.clone()
    k2[..., -1, :] += 100
    v2[..., -1, :] -= 100
    same = torch.allclose(scaled_dot_product_attention(q, k, v, mask), scaled_dot_product_attention(q, k2, v2, mask))
    assert same == (m > 1)


def test_sdpa_without_mask_is_plain_softmax_attention():
    q, k, v = randn(0, 2, 3, 4), randn(1, 2, 5, 4), randn(2, 2, 5, 6)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), weights @ v)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sdpa_keeps_half_precision_dtypes(dtype):
    q, k, v = (randn(i, 2, 4, 8, dtype=dtype) for i in range(3))
    out = scaled_dot_product_attention(q, k, v, causal_mask(4))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), scaled_dot_product_attention(q.float(), k.float(), v.float(), causal_mask(4)),
                               rtol=2e-2, atol=2e-2)


# -- silu -----------------------------------------------------------------------------------------
@given(seeds, st.lists(st.integers(1, 4), min_size=1, max_size=3))
def test_silu_matches_torch_in_value_and_gradient(seed, shape):
    x = (randn(seed, *shape) * 5).requires_grad_()
    ours = silu(x)
    ours.backward(torch.ones_like(ours))
    grad = x.grad.clone()
    x.grad = None
    F.silu(x).backward(torch.ones_like(ours))
    torch.testing.assert_close(ours, F.silu(x))
    torch.testing.assert_close(grad, x.grad)


def test_silu_gradient_passes_gradcheck():
    x = torch.linspace(-6, 6, 25, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(silu, (x,))


def test_silu_keeps_bfloat16():
    x = randn(0, 5, dtype=torch.bfloat16)
    assert silu(x).dtype == torch.bfloat16


# -- gated silu (SwiGLU's gate) ---------------------------------------------------------------------
@given(seeds, st.lists(st.integers(1, 4), min_size=0, max_size=2), st.integers(1, 6))
def test_gated_silu_matches_torch_in_value_and_gradient(seed, lead, half):
    h = (randn(seed, *lead, 2 * half) * 5).requires_grad_()
    upstream = randn(seed + 1, *lead, half)
    ours = gated_silu(h)
    ours.backward(upstream)
    grad = h.grad.clone()
    h.grad = None
    a, b = h.chunk(2, dim=-1)
    expected = F.silu(a) * b
    expected.backward(upstream)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, h.grad, rtol=1e-6, atol=1e-6)


@given(seeds, st.lists(st.integers(1, 4), min_size=0, max_size=2), st.integers(1, 6))
def test_gated_silu_overwriting_its_input_gives_the_same_gradient(seed, lead, half):
    h = randn(seed, *lead, 2 * half, dtype=torch.float64) * 5
    upstream = randn(seed + 1, *lead, half, dtype=torch.float64)
    kept, reused = h.clone().requires_grad_(), h.clone().requires_grad_()
    gated_silu(kept).backward(upstream)
    inner = reused * 1.0  # the overwritten tensor: the graph's own, as an FFN's pre-activation
    gated_silu(inner, overwrite_input=True).backward(upstream)
    torch.testing.assert_close(reused.grad, kept.grad, rtol=1e-12, atol=1e-12)
    assert torch.equal(kept.detach(), h)  # without overwrite_input the input is left as it was


def test_gated_silu_overwrite_makes_a_second_backward_raise_not_read_garbage():
    h = (randn(0, 3, 8, dtype=torch.float64) * 1.0).requires_grad_()
    out = gated_silu(h * 1.0, overwrite_input=True).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


def test_gated_silu_gradient_passes_gradcheck():
    h = torch.linspace(-6, 6, 24, dtype=torch.float64).reshape(2, 12).requires_grad_()
    assert torch.autograd.gradcheck(gated_silu, (h,))


def test_gated_silu_keeps_bfloat16_and_rejects_odd_widths():
    assert gated_silu(randn(0, 3, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="even"):
        gated_silu(randn(0, 3, 7))


# -- causal mask ------------------------------------------------------------------------------------
@given(st.integers(1, 8), st.integers(0, 8))
def test_causal_mask_lets_the_last_queries_see_keys_up_to_their_position(num_queries, cached):
    num_keys = num_queries + cached
    mask = causal_mask(num_queries, num_keys)
    assert mask.shape == (num_queries, num_keys) and mask.dtype == torch.bool
    for i in range(num_queries):
        position = cached + i
        assert mask[i, : position + 1].all() and not mask[i, position + 1:].any()


def test_causal_mask_square_is_lower_triangular():
    assert torch.equal(causal_mask(4), torch.tril(torch.ones(4, 4, dtype=torch.bool)))
    assert math.isclose(causal_mask(4).float().mean().item(), 10 / 16)
