"""cross_entropy and perplexity: the log-softmax definition, stability, gradients, dtypes, chunking."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import modulm.functional.loss as loss_module
from modulm.functional.loss import cross_entropy, perplexity


def reference(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of -log_softmax(o)[x], in float64 via torch's own log_softmax."""
    flat = logits.reshape(-1, logits.shape[-1]).double()
    return -flat.log_softmax(-1).gather(1, targets.reshape(-1, 1)).mean()


@st.composite
def logits_and_targets(draw, max_dims=3, scale=st.sampled_from([0.1, 1.0, 10.0, 1e3, 1e4, 1e5])):
    shape = draw(st.lists(st.integers(1, 4), min_size=0, max_size=max_dims - 1))
    vocab = draw(st.integers(1, 17))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, vocab, generator=g) * draw(scale)
    targets = torch.randint(0, vocab, tuple(shape), generator=g)
    return logits, targets


@given(logits_and_targets())
def test_equals_the_log_softmax_definition(case):
    logits, targets = case
    got = cross_entropy(logits, targets)
    want = reference(logits, targets)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert math.isfinite(got.item())
    assert got.item() == pytest.approx(want.item(), rel=1e-6, abs=1e-5 * max(1.0, logits.abs().max().item() * 1e-2))


@given(logits_and_targets(scale=st.just(3.0)), st.integers(0, 2**31 - 1))
def test_invariant_to_adding_a_constant_per_row(case, seed):
    logits, targets = case
    g = torch.Generator().manual_seed(seed)
    shift = (torch.rand(*logits.shape[:-1], 1, generator=g) - 0.5) * 2e3
    shifted = logits + shift
    # Adding the shift itself rounds the logits; compare against the exact value of what was fed in.
    assert cross_entropy(shifted, targets).item() == pytest.approx(reference(shifted, targets).item(), abs=1e-3)
    assert cross_entropy(shifted, targets).item() == pytest.approx(cross_entropy(logits, targets).item(), abs=2e-3)


@given(logits_and_targets(scale=st.sampled_from([1.0, 1e4])))
def test_gradient_matches_torch_cross_entropy(case):
    logits, targets = case
    mine = logits.clone().requires_grad_()
    theirs = logits.clone().requires_grad_()
    cross_entropy(mine, targets).backward()
    F.cross_entropy(theirs.reshape(-1, theirs.shape[-1]), targets.reshape(-1)).backward()
    assert mine.grad.shape == logits.shape
    torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-7)


def test_huge_logits_give_exact_finite_losses():
    logits = torch.tensor([[1e4, 0.0, -1e4], [2e4, 2e4 - 3.0, 0.0], [-5e4, -5e4, -5e4]])
    targets = torch.tensor([1, 1, 2])
    # exact per-row losses: 1e4 + log(1 + e^-1e4 + e^-2e4), 3 + log(1 + e^-3), log(3)
    expected = [1e4, 3 + math.log1p(math.exp(-3)), math.log(3)]
    assert cross_entropy(logits, targets).item() == pytest.approx(sum(expected) / 3, rel=1e-7)
    huge = logits.clone().requires_grad_()
    cross_entropy(huge, targets).backward()
    assert torch.isfinite(huge.grad).all()


def test_uniform_logits_give_log_vocab():
    assert cross_entropy(torch.zeros(2, 5, 7), torch.zeros(2, 5, dtype=torch.long)).item() == pytest.approx(math.log(7))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_narrow_dtypes_compute_in_float32(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(6, 50, generator=g) * 4).to(dtype).requires_grad_()
    targets = torch.randint(0, 50, (6,), generator=g)
    loss = cross_entropy(logits, targets)
    assert loss.dtype == torch.float32
    wide = logits.detach().float().requires_grad_()
    reference_loss = F.cross_entropy(wide, targets)
    reference_loss.backward()
    # The logits are exactly representable in float32, so the loss is as exact as in float32...
    assert loss.item() == pytest.approx(reference_loss.item(), rel=1e-6)
    loss.backward()
    # ...and the gradient is the float32 one rounded once to the logits' dtype.
    assert logits.grad.dtype == dtype
    torch.testing.assert_close(logits.grad, wide.grad.to(dtype), rtol=0, atol=0)


def test_float64_stays_float64_and_passes_gradcheck():
    logits = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([4, 0, 2])
    assert cross_entropy(logits, targets).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x: cross_entropy(x, targets), (logits,))


@given(st.integers(1, 9), st.sampled_from([1, 3, 11]), st.integers(0, 2**31 - 1))
def test_chunk_boundaries_do_not_change_anything(rows, chunk_elements, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, 7, generator=g)
    targets = torch.randint(0, 7, (rows,), generator=g)
    whole = logits.clone().requires_grad_()
    loss = cross_entropy(whole, targets)
    loss.backward()
    original = loss_module._CPU_CHUNK_ELEMENTS
    loss_module._CPU_CHUNK_ELEMENTS = chunk_elements  # chunks of 1 or 2 rows
    try:
        pieces = logits.clone().requires_grad_()
        chunked = cross_entropy(pieces, targets)
        chunked.backward()
    finally:
        loss_module._CPU_CHUNK_ELEMENTS = original
    torch.testing.assert_close(chunked, loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(pieces.grad, whole.grad, rtol=1e-6, atol=1e-8)


def test_scaled_and_repeated_backward():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 9, generator=g, requires_grad=True)
    targets = torch.randint(0, 9, (4,), generator=g)
    loss = cross_entropy(logits, targets)
    (unit,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (scaled,) = torch.autograd.grad(loss * 2.5, logits, retain_graph=True)
    (again,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(scaled, unit * 2.5)
    torch.testing.assert_close(again, unit)


def test_without_grad_the_same_value():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 8, generator=g, requires_grad=True)
    targets = torch.randint(0, 8, (2, 3), generator=g)
    with torch.no_grad():
        plain = cross_entropy(logits, targets)
    assert not plain.requires_grad
    assert plain.item() == cross_entropy(logits, targets).item()


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="logits.shape"):
        cross_entropy(torch.zeros(2, 3, 5), torch.zeros(3, 2, dtype=torch.long))


def test_perplexity_is_exp_of_the_loss():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(7)) == pytest.approx(7.0)
    loss = cross_entropy(torch.zeros(4, 11), torch.zeros(4, dtype=torch.long))
    value = perplexity(loss)
    assert isinstance(value, torch.Tensor) and value.item() == pytest.approx(11.0, rel=1e-6)
