"""modulm.functional.gated_linear: silu(x W1ᵀ) ⊙ (x W3ᵀ) in value and gradients, in both CPU matmul
libraries and on the stacked fallback path, and its in-place backward's guard."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import modulm.functional.cpu_matmul as choice
import modulm.functional.linear as lin
from modulm.functional.attention import gated_silu
from modulm.functional.gated_linear import _GatedLinear, gated_linear

seeds = st.integers(0, 2**31 - 1)
libraries = ["blas"] + (["onednn"] if choice.onednn_available() else [])


def randn(seed: int, *shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def reference(x, w1, w3, upstream):
    """Output and the three gradients by plain autograd in float64."""
    x64, w1_64, w3_64 = (t.detach().double().requires_grad_() for t in (x, w1, w3))
    out = F.silu(x64 @ w1_64.T) * (x64 @ w3_64.T)
    out.backward(upstream.double())
    return out, x64.grad, w1_64.grad, w3_64.grad


def ours(x, w1, w3, upstream):
    x, w1, w3 = (t.detach().clone().requires_grad_() for t in (x, w1, w3))
    out = gated_linear(x, w1, w3)
    out.backward(upstream)
    return out, x.grad, w1.grad, w3.grad


@pytest.mark.parametrize("library", libraries)
@given(seed=seeds, lead=st.lists(st.integers(1, 5), min_size=0, max_size=2), d=st.integers(1, 24),
       d_ff=st.integers(1, 40))
def test_matches_the_formula_in_value_and_gradients(library, seed, lead, d, d_ff):
    """In each CPU matmul library, oneDNN for products of any size."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(choice, "_backend", library)
        patch.setattr(lin, "ONEDNN_MIN_MACS", 0)
        check_against_the_formula(seed, lead, d, d_ff)


def check_against_the_formula(seed, lead, d, d_ff):
    x, w1, w3 = randn(seed, *lead, d), randn(seed + 1, d_ff, d), randn(seed + 2, d_ff, d)
    upstream = randn(seed + 3, *lead, d_ff)
    got, want = ours(x, w1, w3, upstream), reference(x, w1, w3, upstream)
    assert got[0].shape == (*lead, d_ff) and got[0].dtype == torch.float32
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4)


@given(seed=seeds, d=st.integers(1, 16), d_ff=st.integers(1, 24))
def test_fused_and_stacked_paths_agree(seed, d, d_ff):
    """The fallback (one product against the stacked weights, then gated_silu) is the same maths."""
    x, w1, w3 = randn(seed, 3, d), randn(seed + 1, d_ff, d), randn(seed + 2, d_ff, d)
    upstream = randn(seed + 3, 3, d_ff)
    fused = ours(x, w1, w3, upstream)
    x2, a, b = (t.detach().clone().requires_grad_() for t in (x, w1, w3))
    stacked = gated_silu(x2 @ torch.cat((a, b)).T)
    stacked.backward(upstream)
    for g, w in zip(fused, (stacked, x2.grad, a.grad, b.grad)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@given(seed=seeds)
def test_float64_gradients_match_autograd_to_rounding(seed):
    """(gradcheck's repeated backward through one graph is refused by design: see below.)"""
    x, w1, w3 = (randn(seed + i, *shape, dtype=torch.float64) for i, shape in enumerate(((2, 3, 4), (5, 4), (5, 4))))
    upstream = randn(seed + 3, 2, 3, 5, dtype=torch.float64)
    for g, w in zip(ours(x, w1, w3, upstream), reference(x, w1, w3, upstream)):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_computes_only_the_gradients_asked_for():
    x, w1, w3 = randn(0, 4, 3), randn(1, 6, 3).requires_grad_(), randn(2, 6, 3)
    gated_linear(x, w1, w3).sum().backward()
    assert w1.grad is not None and x.grad is None and w3.grad is None


def test_second_backward_raises_rather_than_read_overwritten_memory():
    x, w1, w3 = randn(0, 4, 3), randn(1, 6, 3).requires_grad_(), randn(2, 6, 3)
    out = gated_linear(x, w1, w3).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


def test_autocast_takes_the_stacked_path_in_bfloat16(monkeypatch):
    calls = []
    monkeypatch.setattr(_GatedLinear, "apply", lambda *args: calls.append(args))
    x, w1, w3 = randn(0, 4, 8), randn(1, 6, 8), randn(2, 6, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gated_linear(x, w1, w3)
    assert not calls and out.dtype == torch.bfloat16 and out.shape == (4, 6)
    gated_linear(x, w1, w3)
    assert len(calls) == 1  # outside autocast the fused function runs


def test_keeps_bfloat16_without_autocast():
    x, w1, w3 = (randn(s, *shape, dtype=torch.bfloat16) for s, shape in ((0, (4, 8)), (1, (6, 8)), (2, (6, 8))))
    assert gated_linear(x, w1, w3).dtype == torch.bfloat16
