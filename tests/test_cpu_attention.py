"""Block-causal attention on the CPU: the same function as one causal flash call, cheaper."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from modulm_transformer import attention as attention_module
from modulm_transformer import cpu_attention
from modulm_transformer.cpu_attention import _BlockCausal, block_causal_attention, block_causal_available, num_blocks


def randn(seed: int, *shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def grads(attend, q, k, v, upstream):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = attend(q, k, v)
    return (out, *torch.autograd.grad(out, (q, k, v), upstream))


@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 2), heads=st.integers(1, 3),
       length=st.integers(64, 200), width=st.sampled_from([4, 8, 32]), strided_v=st.booleans())
def test_equals_one_causal_sdpa_call_forward_and_backward(seed, batch, heads, length, width, strided_v):
    q, k = randn(seed, batch, heads, length, width), randn(seed + 1, batch, heads, length, width)
    v = randn(seed + 2, batch, length, heads, width).transpose(1, 2) if strided_v else randn(
        seed + 2, batch, heads, length, width)
    upstream = randn(seed + 3, batch, heads, length, width)
    assert block_causal_available(q, k, v)
    ours = grads(block_causal_attention, q, k, v, upstream)
    theirs = grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), q, k, v, upstream)
    for name, a, b in zip(("out", "grad_q", "grad_k", "grad_v"), ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6, msg=name)


def test_gradients_pass_gradcheck_in_float64():
    q, k, v = (randn(i, 1, 2, 70, 4, dtype=torch.float64).requires_grad_() for i in range(3))
    assert torch.autograd.gradcheck(_BlockCausal.apply, (q, k, v), eps=1e-6, atol=1e-5)


def test_output_is_laid_out_so_merging_heads_is_a_view():
    q = k = v = randn(0, 2, 4, 128, 8)
    out = block_causal_attention(q, k, v)
    merged = out.transpose(1, 2).flatten(2)
    assert merged.data_ptr() == out.data_ptr() and merged.is_contiguous()


def test_forward_without_autograd_matches():
    q, k, v = (randn(i, 1, 2, 96, 8) for i in range(3))
    with torch.no_grad():
        torch.testing.assert_close(block_causal_attention(q, k, v),
                                   F.scaled_dot_product_attention(q, k, v, is_causal=True), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("length", [64, 100, 128, 256, 512, 513, 1024, 4096])
def test_blocks_cover_the_queries_with_at_least_32_rows_each(length):
    bounds = cpu_attention._bounds(length)
    assert bounds[0] == 0 and bounds[-1] == length and len(bounds) == num_blocks(length) + 1 >= 3
    assert all(hi - lo >= 32 for lo, hi in zip(bounds, bounds[1:]))


def test_mask_lets_each_query_see_keys_up_to_its_own_position():
    mask = cpu_attention._mask(32, 64, torch.float32)
    assert mask.shape == (32, 64)
    for row in range(32):
        visible = (mask[row] == 0).nonzero().flatten()
        assert visible.tolist() == list(range(32 + row + 1))


@pytest.mark.parametrize("case", ["bf16", "3d", "short", "cross", "autocast"])
def test_not_available_outside_its_contract(case):
    q = k = v = randn(0, 1, 2, 128, 8)
    if case == "bf16":
        q = k = v = q.bfloat16()
    elif case == "3d":
        q = k = v = q[0]
    elif case == "short":
        q = k = v = q[:, :, :63]
    elif case == "cross":
        q = q[:, :, :64]
    if case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not block_causal_available(q, k, v)
    else:
        assert not block_causal_available(q, k, v)


@pytest.mark.parametrize("vendor, blocks", [("AuthenticAMD", True), ("", True), ("GenuineIntel", False)])
def test_training_attention_on_the_cpu_takes_the_block_path_except_on_intel(monkeypatch, vendor, blocks):
    calls = []
    monkeypatch.setattr(cpu_attention, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(attention_module, "block_causal_attention",
                        lambda q, k, v: calls.append(q.shape) or F.scaled_dot_product_attention(q, k, v, is_causal=True))
    q = randn(0, 1, 2, 64, 8)
    want = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    torch.testing.assert_close(attention_module.fused_causal_attention(q, q, q), want)
    attention_module.fused_causal_attention(q[:, :, :32], q[:, :, :32], q[:, :, :32])  # too short: one sdpa call
    attention_module.fused_causal_attention(q.bfloat16(), q.bfloat16(), q.bfloat16())  # attended in float32
    assert calls == ([q.shape, q.shape] if blocks else [])
    assert cpu_attention.blocks_pay_off() is blocks


def test_mask_cache_stays_bounded_over_many_lengths():
    q = randn(0, 1, 1, 300, 4)
    with torch.no_grad():
        for length in range(64, 300, 3):
            block_causal_attention(q[:, :, :length], q[:, :, :length], q[:, :, :length])
    assert cpu_attention._mask.cache_info().currsize <= 64
