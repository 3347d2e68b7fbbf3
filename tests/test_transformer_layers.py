"""Transformer parts: Linear, Embedding, RMSNorm, the FFNs and the position encodings."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from modulm_transformer import (
    Embedding, Identity, Linear, NoPositionalEmbedding, RMSNorm, RotaryPositionalEmbedding, SiLUFFN, SwiGLU,
)
from modulm_transformer.ffn import swiglu_width
from modulm_transformer.position import rotate_pairs, rotate_pairs_complex

seeds = st.integers(0, 2**31 - 1)
leading_dims = st.lists(st.integers(1, 3), min_size=0, max_size=3)
widths = st.integers(1, 24)
even_widths = st.integers(1, 12).map(lambda n: 2 * n)


def randn(seed: int, *shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# -- Linear -------------------------------------------------------------------------------------------
@given(seeds, leading_dims, widths, widths)
def test_linear_is_x_times_weight_transposed(seed, lead, d_in, d_out):
    torch.manual_seed(seed)
    layer = Linear(d_in, d_out)
    assert layer.weight.shape == (d_out, d_in)
    assert [name for name, _ in layer.named_parameters()] == ["weight"]  # no bias
    x = randn(seed, *lead, d_in)
    out = layer(x)
    assert out.shape == (*lead, d_out)
    torch.testing.assert_close(out, F.linear(x, layer.weight))


def test_linear_init_is_truncated_normal_with_the_handout_variance():
    torch.manual_seed(0)
    layer = Linear(300, 500)
    std = math.sqrt(2 / 800)
    assert layer.weight.abs().max() <= 3 * std
    # trunc_normal at +-3 sigma has std 0.9866 sigma
    assert layer.weight.std().item() == pytest.approx(0.9866 * std, rel=0.02)
    assert abs(layer.weight.mean().item()) < 0.01 * std * 10


def test_linear_takes_device_and_dtype():
    layer = Linear(3, 4, device="cpu", dtype=torch.float64)
    assert layer.weight.dtype == torch.float64 and layer.weight.device.type == "cpu"


# -- Embedding ------------------------------------------------------------------------------------------
@given(seeds, leading_dims, st.integers(1, 30), widths)
def test_embedding_selects_rows(seed, lead, vocab, dim):
    torch.manual_seed(seed)
    emb = Embedding(vocab, dim)
    ids = torch.randint(0, vocab, (*lead, 5), generator=torch.Generator().manual_seed(seed))
    out = emb(ids)
    assert out.shape == (*lead, 5, dim)
    torch.testing.assert_close(out, F.embedding(ids, emb.weight))


def test_embedding_init_is_standard_normal_truncated_at_3():
    torch.manual_seed(0)
    emb = Embedding(1000, 100)
    assert emb.weight.shape == (1000, 100)
    assert emb.weight.abs().max() <= 3
    assert emb.weight.std().item() == pytest.approx(0.9866, rel=0.02)


# -- RMSNorm ---------------------------------------------------------------------------------------------
@given(seeds, leading_dims, widths)
def test_rmsnorm_matches_torch(seed, lead, d):
    norm = RMSNorm(d, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(randn(seed + 1, d))
    x = randn(seed, *lead, d)
    torch.testing.assert_close(norm(x), F.rms_norm(x, (d,), norm.weight, eps=1e-5))


@given(seeds, leading_dims, widths, st.floats(0.01, 100))
def test_rmsnorm_is_scale_invariant(seed, lead, d, scale):
    norm = RMSNorm(d, eps=1e-12)
    x = randn(seed, *lead, d)
    x = x.sign() * (x.abs() + 0.5)  # every |x| >= 0.5 keeps the mean square far above eps
    torch.testing.assert_close(norm(x * scale), norm(x), rtol=1e-4, atol=1e-5)


def test_rmsnorm_gain_starts_at_one_and_output_has_unit_rms():
    norm = RMSNorm(16)
    assert torch.equal(norm.weight, torch.ones(16))
    out = norm(randn(0, 4, 16) * 7)
    torch.testing.assert_close(out.square().mean(-1), torch.ones(4), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rmsnorm_computes_in_float32_and_returns_the_input_dtype(dtype):
    norm = RMSNorm(8)
    x = randn(0, 3, 8, dtype=dtype) * 100
    out = norm(x)
    assert out.dtype == dtype
    assert torch.equal(out, norm(x.float()).to(dtype))


@pytest.mark.parametrize("shape", [(8,), (2, 3, 8)])
def test_rmsnorm_backward_passes_gradcheck(shape):
    norm = RMSNorm(8).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = randn(0, *shape).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w: torch.func.functional_call(norm, {"weight": w}, (x,)),
                                    (x, norm.weight.detach().clone().requires_grad_()))


def test_rmsnorm_gradients_match_torch():
    norm = RMSNorm(16)
    x = (randn(0, 4, 16) * 3).requires_grad_()
    g = randn(1, 4, 16)
    norm(x).backward(g)
    ours_x, ours_w = x.grad.clone(), norm.weight.grad.clone()
    x.grad = None
    weight = norm.weight.detach().clone().requires_grad_()
    F.rms_norm(x, (16,), weight, eps=1e-5).backward(g)
    torch.testing.assert_close(ours_x, x.grad)
    torch.testing.assert_close(ours_w, weight.grad)


def test_identity_norm_has_no_parameters():
    x = randn(0, 2, 3)
    assert Identity()(x) is x and not list(Identity().parameters())


# -- feed-forward -----------------------------------------------------------------------------------------
def test_swiglu_default_width_is_8_thirds_rounded_to_64():
    assert swiglu_width(512) == 1344
    assert swiglu_width(768) == 2048
    assert swiglu_width(8) == 64
    for d in range(16, 2048, 16):
        assert swiglu_width(d) % 64 == 0 and abs(swiglu_width(d) - 8 * d / 3) <= 32


@given(seeds, leading_dims, widths, st.one_of(st.none(), widths))
def test_swiglu_matches_its_formula(seed, lead, d_model, d_ff):
    torch.manual_seed(seed)
    ffn = SwiGLU(d_model, d_ff)
    width = swiglu_width(d_model) if d_ff is None else d_ff
    assert ffn.w1.weight.shape == (width, d_model) and ffn.w3.weight.shape == (width, d_model)
    assert ffn.w2.weight.shape == (d_model, width)
    x = randn(seed, *lead, d_model)
    expected = F.linear(F.silu(F.linear(x, ffn.w1.weight)) * F.linear(x, ffn.w3.weight), ffn.w2.weight)
    out = ffn(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@given(seeds, leading_dims, widths, st.one_of(st.none(), widths))
def test_silu_ffn_matches_its_formula(seed, lead, d_model, d_ff):
    torch.manual_seed(seed)
    ffn = SiLUFFN(d_model, d_ff)
    assert ffn.w1.weight.shape == (4 * d_model if d_ff is None else d_ff, d_model)
    assert not hasattr(ffn, "w3")
    x = randn(seed, *lead, d_model)
    torch.testing.assert_close(ffn(x), F.linear(F.silu(F.linear(x, ffn.w1.weight)), ffn.w2.weight), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ffn_class", [SwiGLU, SiLUFFN])
@given(seed=seeds, n=st.integers(2, 6))
def test_ffns_treat_positions_independently(ffn_class, seed, n):
    torch.manual_seed(seed)
    ffn = ffn_class(8, 16)
    x = randn(seed, n, 8)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(ffn(x[perm]), ffn(x)[perm])


@pytest.mark.parametrize("ffn_class", [SwiGLU, SiLUFFN])
def test_ffns_keep_bfloat16(ffn_class):
    ffn = ffn_class(8, 16).to(torch.bfloat16)
    assert ffn(randn(0, 3, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


# -- RoPE -----------------------------------------------------------------------------------------------------
def reference_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE straight from the handout: rotate pairs (x[2i], x[2i+1]) by pos * theta^(-2i/d)."""
    d = x.shape[-1]
    out = torch.empty_like(x)
    for i in range(d // 2):
        angle = positions.double() * theta ** (-2 * i / d)
        cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
        even, odd = x[..., 2 * i], x[..., 2 * i + 1]
        out[..., 2 * i] = cos * even - sin * odd
        out[..., 2 * i + 1] = sin * even + cos * odd
    return out


@given(seeds, leading_dims, st.integers(1, 8), even_widths, st.sampled_from([10.0, 500.0, 10000.0]))
def test_rope_matches_the_handout_formula(seed, lead, seq, d_k, theta):
    rope = RotaryPositionalEmbedding(theta, d_k, 16)
    x = randn(seed, *lead, seq, d_k)
    positions = torch.randint(0, 16, (*lead, seq), generator=torch.Generator().manual_seed(seed))
    out = rope(x, positions)
    assert out.shape == x.shape
    torch.testing.assert_close(out, reference_rope(x, positions, theta), rtol=1e-5, atol=1e-5)


@given(seeds, st.integers(1, 8), even_widths)
def test_rope_default_positions_are_arange(seed, seq, d_k):
    rope = RotaryPositionalEmbedding(10000.0, d_k, 8)
    x = randn(seed, 2, seq, d_k)
    torch.testing.assert_close(rope(x), rope(x, torch.arange(seq)))


@given(seeds, even_widths, st.integers(0, 40), st.integers(0, 40), st.integers(0, 20))
def test_rope_scores_depend_only_on_relative_offsets(seed, d_k, m, n, shift):
    rope = RotaryPositionalEmbedding(10000.0, d_k, 64)
    q, k = randn(seed, d_k).double(), randn(seed + 1, d_k).double()

    def score(pq: int, pk: int) -> float:
        return torch.dot(rope(q[None], torch.tensor([pq]))[0], rope(k[None], torch.tensor([pk]))[0]).item()

    assert score(m + shift, n + shift) == pytest.approx(score(m, n), rel=1e-4, abs=1e-4)


@given(seeds, even_widths)
def test_rope_preserves_norms(seed, d_k):
    rope = RotaryPositionalEmbedding(10000.0, d_k, 32)
    x = randn(seed, 32, d_k)
    torch.testing.assert_close(rope(x).norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)


def test_rope_tables_are_non_persistent_and_rebuilt_in_float32_after_a_cast():
    rope = RotaryPositionalEmbedding(10000.0, 8, 16)
    assert rope.state_dict() == {} and {n for n, _ in rope.named_buffers()} == {"cos", "sin"}
    x = randn(0, 16, 8)
    rope_bf16 = RotaryPositionalEmbedding(10000.0, 8, 16).to(torch.bfloat16)
    assert rope_bf16.cos.dtype == torch.float32
    out = rope_bf16(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, rope(x.to(torch.bfloat16).float()).to(torch.bfloat16))


def test_rope_handles_strided_inputs():
    rope = RotaryPositionalEmbedding(10000.0, 8, 16)
    x = randn(0, 16, 9)[..., 1:]  # odd storage offset
    torch.testing.assert_close(rope(x), rope(x.contiguous()))


@given(seeds, leading_dims, st.integers(1, 6), even_widths)
def test_rope_real_and_complex_forms_agree(seed, lead, seq, d_k):
    """The compiled path (real arithmetic) and the eager path (a complex product) are one function."""
    rope = RotaryPositionalEmbedding(10000.0, d_k, 8)
    x = randn(seed, *lead, seq, d_k)
    cos, sin = rope.cos[:seq], rope.sin[:seq]
    torch.testing.assert_close(rotate_pairs(x, cos, sin), rotate_pairs_complex(x, cos, sin), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("form", [rotate_pairs, rotate_pairs_complex])
def test_rope_backward_passes_gradcheck(form):
    rope = RotaryPositionalEmbedding(10000.0, 6, 8)
    x = randn(0, 2, 5, 6).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: form(x, rope.cos[:5], rope.sin[:5]), (x,))


def test_rope_rejects_odd_widths():
    with pytest.raises(ValueError, match="even"):
        RotaryPositionalEmbedding(10000.0, 7, 16)


def test_nope_returns_its_input():
    x = randn(0, 2, 3, 4)
    assert NoPositionalEmbedding()(x, torch.arange(3)) is x
