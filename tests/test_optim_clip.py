"""clip_gradients: global L2 norm, in place, never increases the norm, leaves small gradients alone."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from modulm.functional.grad import clip_gradients


@st.composite
def parameters_with_grads(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    shapes = draw(st.lists(st.lists(st.integers(1, 5), min_size=0, max_size=3), min_size=1, max_size=5))
    scale = draw(st.sampled_from([1e-3, 1.0, 100.0]))
    params = []
    for i, shape in enumerate(shapes):
        p = torch.nn.Parameter(torch.randn(shape, generator=g))
        if i == 0 or draw(st.booleans()):
            p.grad = torch.randn(shape, generator=g) * scale
        params.append(p)
    return params


def global_norm(params) -> float:
    return math.sqrt(sum(float(p.grad.double().square().sum()) for p in params if p.grad is not None))


@given(parameters_with_grads(), st.floats(0.01, 50.0))
def test_clipping_never_increases_the_norm_and_returns_the_old_one(params, max_norm):
    before = global_norm(params)
    originals = [None if p.grad is None else p.grad.clone() for p in params]
    returned = clip_gradients(params, max_norm)
    after = global_norm(params)
    assert float(returned) == pytest.approx(before, rel=1e-5)
    assert after <= before * (1 + 1e-6)
    if before >= max_norm:
        # scaled by max / (norm + eps): just under the limit, every gradient in the same direction
        assert after == pytest.approx(max_norm * before / (before + 1e-6), rel=1e-5)
        assert after <= max_norm * (1 + 1e-6)
        for p, original in zip(params, originals):
            if original is not None:
                torch.testing.assert_close(p.grad, original * (max_norm / (before + 1e-6)), rtol=1e-5, atol=1e-9)
    else:
        for p, original in zip(params, originals):
            if original is not None:
                assert torch.equal(p.grad, original)


@given(parameters_with_grads())
def test_small_gradients_are_left_exactly_as_they_are(params):
    originals = [None if p.grad is None else p.grad.clone() for p in params]
    clip_gradients(params, global_norm(params) * 2 + 1e-3)
    for p, original in zip(params, originals):
        assert (p.grad is None and original is None) or torch.equal(p.grad, original)


def test_parameters_without_gradients_are_skipped():
    with_grad = torch.nn.Parameter(torch.zeros(2))
    with_grad.grad = torch.tensor([3.0, 4.0])
    without = torch.nn.Parameter(torch.ones(3))
    norm = clip_gradients(iter([without, with_grad]), 1.0)
    assert float(norm) == pytest.approx(5.0)
    assert without.grad is None
    torch.testing.assert_close(with_grad.grad, torch.tensor([3.0, 4.0]) / (5.0 + 1e-6))


def test_no_gradients_at_all_gives_zero():
    assert float(clip_gradients([torch.nn.Parameter(torch.ones(2))], 1.0)) == 0.0


def test_bfloat16_gradients_use_a_float32_norm():
    p = torch.nn.Parameter(torch.zeros(1000, dtype=torch.bfloat16))
    p.grad = torch.full((1000,), 0.1, dtype=torch.bfloat16)
    norm = clip_gradients([p], 100.0)
    assert norm.dtype == torch.float32
    assert float(norm) == pytest.approx(math.sqrt(1000) * float(torch.tensor(0.1, dtype=torch.bfloat16)), rel=1e-6)


def test_matches_torch_clip_grad_norm():
    g = torch.Generator().manual_seed(3)
    mine = [torch.nn.Parameter(torch.zeros(4, 5)), torch.nn.Parameter(torch.zeros(7))]
    theirs = [torch.nn.Parameter(torch.zeros(4, 5)), torch.nn.Parameter(torch.zeros(7))]
    for a, b in zip(mine, theirs):
        a.grad = torch.randn(a.shape, generator=g) * 3
        b.grad = a.grad.clone()
    assert float(clip_gradients(mine, 1.0)) == pytest.approx(float(torch.nn.utils.clip_grad_norm_(theirs, 1.0)))
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a.grad, b.grad)


def test_negative_limit_is_an_error():
    with pytest.raises(ValueError, match="max_l2_norm"):
        clip_gradients([], -1.0)


@given(parameters_with_grads(), st.floats(0.01, 50.0))
def test_the_accelerator_path_scales_like_the_cpu_path(params, max_norm):
    from modulm.functional import grad as grad_module

    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, c in zip(params, copies):
        c.grad = None if p.grad is None else p.grad.clone()
    total = clip_gradients(params, max_norm)
    groups = {(torch.device("cpu"), torch.float32): [c.grad for c in copies if c.grad is not None]}
    grad_module._scale_without_sync(groups, total, max_norm, 1e-6)
    for p, c in zip(params, copies):
        assert (p.grad is None) == (c.grad is None)
        if p.grad is not None:
            # the factor is formed in float32 there, in float64 here: equal to a rounding step
            torch.testing.assert_close(c.grad, p.grad, rtol=1e-6, atol=0)
            if float(total) < max_norm:
                assert torch.equal(c.grad, p.grad)
