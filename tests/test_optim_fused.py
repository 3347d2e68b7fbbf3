"""AdamW's fused branch (the default on CPU and CUDA): the handout's algorithm, to 1e-6, through one kernel."""

import pytest
import torch

from modulm_optim import AdamW
from test_optim_adamw import HandoutAdamW, max_difference, small_model, train


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_fused_path_follows_the_handout_and_the_foreach_path_for_200_steps(weight_decay):
    fused, foreach, oracle = small_model(), small_model(), small_model()
    train(fused, AdamW(fused.parameters(), lr=1e-3, weight_decay=weight_decay, fused=True), 200)
    train(foreach, AdamW(foreach.parameters(), lr=1e-3, weight_decay=weight_decay, fused=False), 200)
    train(oracle, HandoutAdamW(oracle.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                               weight_decay=weight_decay), 200)
    assert max_difference(fused, oracle) <= 1e-6
    assert max_difference(fused, foreach) <= 1e-6


def test_fused_path_in_float64_is_the_handout_to_rounding():
    fused, oracle = small_model(torch.float64), small_model(torch.float64)
    train(fused, AdamW(fused.parameters(), lr=1e-2, eps=1e-3, weight_decay=0.1, fused=True), 50)
    train(oracle, HandoutAdamW(oracle.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-3, weight_decay=0.1), 50)
    assert max_difference(fused, oracle) <= 1e-12  # decay before the update, or eps unscaled, is far above


def test_fused_is_the_default_on_the_cpu_and_fused_false_takes_the_foreach_path(monkeypatch):
    called = []
    monkeypatch.setattr(torch, "_fused_adam_", lambda *a, **k: called.append(1))
    model = small_model()
    train(model, AdamW(model.parameters(), lr=1e-3, fused=False), 2)
    assert called == []  # asked for the foreach path
    train(model, AdamW(model.parameters(), lr=1e-3), 1)
    assert called == [1]  # unset on the CPU: the fused kernel
