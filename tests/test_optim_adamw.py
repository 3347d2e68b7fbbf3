"""AdamW: the handout's algorithm exactly, agreement with torch.optim.AdamW, groups, state round-trip."""

import functools
import io
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from modulm.assemble import create
from modulm.errors import ModulmError
from modulm_optim import AdamW
from modulm_optim.rounds import cache_sized_rounds


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: thread hand-offs cost more than they save, and stall on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class HandoutAdamW(torch.optim.Optimizer):
    """CS336 Algorithm 1 written line by line, one tensor at a time: the oracle."""

    def __init__(self, params, lr, betas, eps, weight_decay):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            (beta1, beta2), lr = group["betas"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                t = state.get("t", 0) + 1
                m = beta1 * state.get("m", torch.zeros_like(p)) + (1 - beta1) * p.grad
                v = beta2 * state.get("v", torch.zeros_like(p)) + (1 - beta2) * p.grad**2
                alpha_t = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                p -= alpha_t * m / (v.sqrt() + group["eps"])
                p -= lr * group["weight_decay"] * p
                state.update(t=t, m=m, v=v)


def small_model(dtype=torch.float32):
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).to(dtype)


def train(model, optimizer, steps, seed=2, skip=None):
    """``steps`` steps of regression on a fixed random stream; ``skip(step)`` names params left without grad."""
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    for step in range(steps):
        x = torch.randn(32, 8, generator=g, dtype=dtype)
        y = torch.randn(32, 4, generator=g, dtype=dtype)
        optimizer.zero_grad(set_to_none=True)
        ((model(x) - y) ** 2).mean().backward()
        for name, p in model.named_parameters():
            if skip is not None and name in skip(step):
                p.grad = None
        optimizer.step()


def max_difference(a, b) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


@st.composite
def quadratics(draw):
    """f(x) = 1/2 sum_i a_i (x_i - c_i)^2 over a few tensors, started >= 0.5 from the minimum per entry."""
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    shapes = draw(st.lists(st.lists(st.integers(1, 4), max_size=2), min_size=1, max_size=3))
    problem = []
    for shape in shapes:
        curvature = torch.rand(shape, generator=g, dtype=torch.float64) * 2 + 0.1
        center = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
        side = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0).double()
        start = center + side * (0.5 + torch.rand(shape, generator=g, dtype=torch.float64))
        problem.append((curvature, center, start))
    return problem


def quadratic_loss(params, problem):
    return sum(0.5 * (a * (x - c) ** 2).sum() for x, (a, c, _) in zip(params, problem))


@given(
    quadratics(),
    st.floats(1e-4, 0.01),
    st.sampled_from([(0.9, 0.999), (0.9, 0.95), (0.5, 0.9)]),
    st.sampled_from([0.0, 0.01, 0.1]),
    st.sampled_from([1e-8, 1e-3]),
)
def test_random_quadratics_decrease_and_follow_the_handout_exactly(problem, lr, betas, weight_decay, eps):
    steps = 20
    mine = [torch.nn.Parameter(start.clone()) for _, _, start in problem]
    oracle = [torch.nn.Parameter(start.clone()) for _, _, start in problem]
    optimizer = AdamW(mine, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    reference = HandoutAdamW(oracle, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    initial = quadratic_loss(mine, problem).item()
    for _ in range(steps):
        for params, opt in ((mine, optimizer), (oracle, reference)):
            opt.zero_grad()
            quadratic_loss(params, problem).backward()
            opt.step()
    # float64: any reordering of the algorithm (decay before the update, eps inside the bias
    # correction) shows up far above this tolerance
    for p, q in zip(mine, oracle):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
    assert quadratic_loss(mine, problem).item() < initial


def test_small_model_follows_the_handout_for_200_steps():
    mine, oracle = small_model(), small_model()
    train(mine, AdamW(mine.parameters(), lr=1e-3, weight_decay=0.01), 200)
    train(oracle, HandoutAdamW(oracle.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01), 200)
    assert max_difference(mine, oracle) <= 1e-6


def test_matches_torch_adamw_to_1e6_over_200_steps_where_the_algorithms_coincide():
    # With eps = 0 and no weight decay the handout's update and torch's are the same formula.
    mine, theirs = small_model(), small_model()
    train(mine, AdamW(mine.parameters(), lr=1e-3, eps=0.0, weight_decay=0.0), 200)
    train(theirs, torch.optim.AdamW(theirs.parameters(), lr=1e-3, eps=0.0, weight_decay=0.0, foreach=True), 200)
    assert max_difference(mine, theirs) <= 1e-6


def test_stays_close_to_torch_adamw_with_the_usual_settings():
    # torch decays before the update and adds eps to sqrt(v / (1 - beta2^t)); the handout decays
    # after it and adds eps to sqrt(v). Over 200 steps that moves this model by a few 1e-6.
    mine, theirs = small_model(), small_model()
    train(mine, AdamW(mine.parameters(), lr=1e-3, weight_decay=0.01), 200)
    train(theirs, torch.optim.AdamW(theirs.parameters(), lr=1e-3, weight_decay=0.01, foreach=True), 200)
    assert max_difference(mine, theirs) <= 1e-5


def test_parameters_missing_a_gradient_keep_their_own_step_count():
    mine, oracle = small_model(torch.float64), small_model(torch.float64)
    skip = lambda step: {"0.bias"} if step % 3 else {"2.weight"} if step % 2 else set()  # noqa: E731
    train(mine, AdamW(mine.parameters(), lr=1e-2, weight_decay=0.1), 12, skip=skip)
    train(oracle, HandoutAdamW(oracle.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1), 12, skip=skip)
    assert max_difference(mine, oracle) <= 1e-12


@given(st.integers(1, 6), st.integers(1, 6))
def test_state_dict_round_trip_continues_the_same_trajectory(before, after):
    def fresh():
        model = small_model()
        return model, create_adamw(model, lr=3e-3, no_decay=["*.bias"])

    straight, straight_opt = fresh()
    train(straight, straight_opt, before + after)

    first, first_opt = fresh()
    train(first, first_opt, before)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": first_opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed, resumed_opt = fresh()
    resumed.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["optimizer"])
    # continue on the data stream where the first run stopped
    g = torch.Generator().manual_seed(2)
    for _ in range(before):
        torch.randn(32, 8, generator=g), torch.randn(32, 4, generator=g)
    for _ in range(after):
        x, y = torch.randn(32, 8, generator=g), torch.randn(32, 4, generator=g)
        resumed_opt.zero_grad()
        ((resumed(x) - y) ** 2).mean().backward()
        resumed_opt.step()
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


@functools.cache
def builtin_registry():
    from modulm import plugins

    return plugins.load(autoload=True, env={}).registry


def create_adamw(model, **params):
    """Built as a recipe builds it: through the registry, with named parameters injected."""
    spec = {"component": "adamw", **params}
    return create(builtin_registry(), "optimizer", spec, params=list(model.named_parameters()))


def test_no_decay_patterns_form_a_group_without_weight_decay():
    model = torch.nn.ModuleDict({"proj": torch.nn.Linear(3, 3), "final_norm": torch.nn.LayerNorm(3)})
    optimizer = create_adamw(model, lr=0.1, weight_decay=0.5, no_decay=["*norm*", "*.bias"])
    decayed, exempt = optimizer.param_groups
    assert {id(p) for p in decayed["params"]} == {id(model["proj"].weight)}
    assert exempt["weight_decay"] == 0.0 and len(exempt["params"]) == 3
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient signal: only the decay moves anything
    optimizer.step()
    for name, p in model.named_parameters():
        factor = 1 - 0.1 * 0.5 if name == "proj.weight" else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor)


def test_default_decays_every_parameter_and_keeps_one_group():
    model = torch.nn.Linear(3, 2)
    optimizer = create_adamw(model)
    assert len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (3e-4, (0.9, 0.999), 1e-8, 0.1)


def test_a_pattern_matching_nothing_is_warned_about():
    with pytest.warns(UserWarning, match="'\\*nrom\\*' matches no parameter"):
        create_adamw(torch.nn.Linear(2, 2), no_decay=["*nrom*"])


@pytest.mark.parametrize(
    "params, message",
    [({"beta1": 1.0}, r"beta1: 1.0 is out of range: must be in \[0, 1\)"), ({"lr": -1.0}, "lr: -1.0 is out of range: must be > 0"),
     ({"lr": 0.0}, "must be > 0"), ({"eps": -1e-8}, "eps"),
     ({"weight_decay": -0.1}, "weight_decay"), ({"no_decay": [1]}, "no_decay.0: expected str")],
)
def test_bad_settings_are_user_errors(params, message):
    with pytest.raises(ModulmError, match=message):
        create_adamw(torch.nn.Linear(2, 2), **params)


def test_direct_use_checks_its_arguments_like_torch():
    with pytest.raises(ValueError, match="beta2"):
        AdamW([torch.nn.Parameter(torch.ones(1))], betas=(0.9, 1.5))


def test_parameters_without_gradients_are_untouched():
    used, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    optimizer = AdamW([used, unused], lr=0.1)
    used.grad = torch.ones(3)
    optimizer.step()
    assert torch.equal(unused, torch.ones(2)) and unused not in optimizer.state
    assert optimizer.state[used]["step"] == 1 and (used < 1).all()


def test_closure_loss_is_returned():
    p = torch.nn.Parameter(torch.tensor([2.0]))
    optimizer = AdamW([p], lr=0.1)

    def closure():
        optimizer.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert optimizer.step(closure).item() == 4.0 and p.item() < 2.0


@given(st.lists(st.lists(st.integers(1, 7), max_size=3), min_size=1, max_size=5), st.integers(1, 50))
def test_rounds_cover_every_element_exactly_once_and_in_step(shapes, budget):
    import modulm_optim.rounds as rounds

    first = [torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape) + 100 * i for i, shape in enumerate(shapes)]
    second = [t.clone() for t in first]
    original, rounds.CPU_ROUND_ELEMENTS = rounds.CPU_ROUND_ELEMENTS, budget
    try:
        for a_views, b_views in cache_sized_rounds([first, second], torch.device("cpu")):
            assert sum(v.numel() for v in a_views) <= budget
            for a, b in zip(a_views, b_views):
                assert torch.equal(a, b)  # the same elements of the parallel lists travel together
            torch._foreach_add_(a_views, 1000.0)
            torch._foreach_add_(b_views, 1000.0)
    finally:
        rounds.CPU_ROUND_ELEMENTS = original
    for i, (a, b) in enumerate(zip(first, second)):
        assert torch.equal(a, b)
        assert torch.equal(a - 1000, torch.arange(a.numel(), dtype=torch.float32).reshape(a.shape) + 100 * i)


def test_noncontiguous_parameters_are_updated_whole():
    transposed = torch.nn.Parameter(torch.zeros(4, 6).t())
    assert not transposed.is_contiguous()
    plain = torch.nn.Parameter(torch.zeros(6, 4))
    for p in (transposed, plain):
        p.grad = torch.full((6, 4), 0.5)
        AdamW([p], lr=0.1).step()
    torch.testing.assert_close(transposed.detach(), plain.detach())
    assert (plain < 0).all()
