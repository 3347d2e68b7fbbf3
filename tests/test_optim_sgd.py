"""SGD with the handout's 1/sqrt(t+1) decay: the formula, the handout's toy loop, state round-trip."""

import functools
import io
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from modulm.assemble import create
from modulm.errors import ModulmError
from modulm_optim import SGD


@functools.cache
def builtin_registry():
    from modulm import plugins

    return plugins.load(autoload=True, env={}).registry


@given(st.integers(0, 2**31 - 1), st.floats(1e-3, 1.0), st.integers(1, 8))
def test_each_step_is_lr_over_sqrt_t_plus_one_times_the_gradient(seed, lr, steps):
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(3, 4, generator=g, dtype=torch.float64)
    p = torch.nn.Parameter(start.clone())
    optimizer = SGD([p], lr=lr)
    expected = start.clone()
    for t in range(steps):
        p.grad = torch.randn(3, 4, generator=g, dtype=torch.float64)
        expected -= lr / math.sqrt(t + 1) * p.grad
        optimizer.step()
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-12)


def test_handout_toy_loop_decreases_the_loss():
    torch.manual_seed(0)
    weights = torch.nn.Parameter(5 * torch.randn((10, 10)))
    optimizer = SGD([weights], lr=1)
    losses = []
    for _ in range(100):
        optimizer.zero_grad()
        loss = (weights**2).mean()
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0] / 2
    assert all(b <= a for a, b in zip(losses, losses[1:]))


def test_state_dict_round_trip_and_registry_build():
    def fresh():
        torch.manual_seed(3)
        model = torch.nn.Linear(4, 2)
        spec = {"component": "sgd", "lr": 0.1}
        return model, create(builtin_registry(), "optimizer", spec, params=list(model.named_parameters()))

    def steps(model, optimizer, seeds):
        for seed in seeds:
            x = torch.randn(8, 4, generator=torch.Generator().manual_seed(seed))
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()

    straight, straight_opt = fresh()
    steps(straight, straight_opt, range(6))
    first, first_opt = fresh()
    steps(first, first_opt, range(3))
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": first_opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed, resumed_opt = fresh()
    resumed.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["optimizer"])
    assert all(s["t"] == 3 for s in resumed_opt.state.values())
    steps(resumed, resumed_opt, range(3, 6))
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_negative_lr_is_a_user_error():
    with pytest.raises(ModulmError, match="lr: -1.0 is out of range: must be > 0"):
        params = [("w", torch.nn.Parameter(torch.ones(1)))]
        create(builtin_registry(), "optimizer", {"component": "sgd", "lr": -1.0}, params=params)
