"""Schedules: the handout's cosine formula, ranges, continuity at phase boundaries, monotone phases."""

import functools
import math
import pickle

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from modulm.assemble import create
from modulm.errors import ModulmError
from modulm_optim import get_lr_cosine_schedule


@functools.cache
def builtin_registry():
    from modulm import plugins

    return plugins.load(autoload=True, env={}).registry


def schedule(spec, base_lr=1e-3, max_iterations=1000):
    return create(builtin_registry(), "schedule", spec, base_lr=base_lr, max_iterations=max_iterations)


lrs = st.floats(1e-6, 1.0)


@st.composite
def cosine_settings(draw):
    base_lr = draw(lrs)
    min_lr = draw(st.floats(0.0, 1.0)) * base_lr
    warmup = draw(st.integers(0, 200))
    cycle = warmup + draw(st.integers(1, 2000))
    return {"component": "cosine-warmup", "warmup_iters": warmup, "min_lr": min_lr, "cosine_cycle_iters": cycle}, base_lr


@st.composite
def wsd_settings(draw):
    base_lr = draw(lrs)
    settings = {
        "component": "wsd",
        "warmup_iters": draw(st.integers(0, 200)),
        "decay_fraction": draw(st.floats(0.01, 1.0)),
        "decay_shape": draw(st.sampled_from(["linear", "cosine"])),
        "min_lr": draw(st.floats(0.0, 1.0)) * base_lr,
    }
    return settings, base_lr, draw(st.integers(1, 3000))


def boundaries(settings, max_iterations):
    """The iterations where a phase ends, per schedule."""
    if settings["component"] == "cosine-warmup":
        return [settings["warmup_iters"], settings["cosine_cycle_iters"]]
    decay_start = max(settings["warmup_iters"], max_iterations * (1 - settings["decay_fraction"]))
    return [settings["warmup_iters"], decay_start, max_iterations]


def any_schedule():
    return st.one_of(
        cosine_settings().map(lambda c: (c[0], c[1], 1000)),
        wsd_settings(),
        lrs.map(lambda lr: ({"component": "constant"}, lr, 1000)),
    )


@given(any_schedule(), st.floats(0, 5000))
def test_values_lie_between_min_lr_and_lr_once_warmed_up(case, iteration):
    settings, base_lr, max_iterations = case
    lr = schedule(settings, base_lr, max_iterations)(iteration)
    assert 0.0 <= lr <= base_lr
    if iteration >= settings.get("warmup_iters", 0):
        assert lr >= settings.get("min_lr", base_lr)


@given(any_schedule(), st.data())
def test_continuous_at_every_phase_boundary(case, data):
    settings, base_lr, max_iterations = case
    if settings["component"] == "wsd":
        # a decay phase of zero length (warm-up running into the end of the run) must jump
        assume(max_iterations - boundaries(settings, max_iterations)[1] > 1e-3)
    fn = schedule(settings, base_lr, max_iterations)
    for point in boundaries(settings, max_iterations) if settings["component"] != "constant" else [0, 500]:
        if point <= 0:
            continue
        delta = 1e-9 * max(1.0, point)
        # the slope is at most base_lr / (shortest phase) and phases here are >= ~1e-3 long;
        # schedules are defined for iteration >= 0 only, so a boundary closer to 0 is checked from the right
        if point - delta >= 0:
            assert fn(point - delta) == pytest.approx(fn(point), abs=base_lr * 1e-5)
        assert fn(point + delta) == pytest.approx(fn(point), abs=base_lr * 1e-5)


@given(any_schedule(), st.lists(st.floats(0, 4000), min_size=2, max_size=30))
def test_monotone_within_each_phase(case, iterations):
    settings, base_lr, max_iterations = case
    fn = schedule(settings, base_lr, max_iterations)
    cuts = [0.0] + sorted(boundaries(settings, max_iterations)) if settings["component"] != "constant" else [0.0]
    points = sorted(iterations)
    for a, b in zip(points, points[1:]):
        same_phase = sum(a >= c for c in cuts) == sum(b >= c for c in cuts) and a != b
        if not same_phase:
            continue
        if a < settings.get("warmup_iters", 0):
            assert fn(a) <= fn(b)  # warm-up rises
        else:
            assert fn(a) >= fn(b)  # everything after it stays or falls


@given(cosine_settings(), st.integers(0, 3000))
def test_cosine_warmup_is_the_handout_formula(case, t):
    settings, base_lr = case
    tw, tc, lo = settings["warmup_iters"], settings["cosine_cycle_iters"], settings["min_lr"]
    if t < tw:
        want = t / tw * base_lr
    elif t <= tc:
        want = lo + 0.5 * (1 + math.cos((t - tw) / (tc - tw) * math.pi)) * (base_lr - lo)
    else:
        want = lo
    got = schedule(settings, base_lr)(t)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert got == get_lr_cosine_schedule(t, base_lr, lo, tw, tc)


def test_cosine_warmup_landmarks_and_default_cycle():
    fn = schedule({"component": "cosine-warmup", "warmup_iters": 10, "min_lr": 1e-4}, base_lr=1e-3, max_iterations=110)
    assert fn.cosine_cycle_iters == 110  # the run's length by default
    assert fn(0) == 0.0
    assert fn(5) == pytest.approx(5e-4)
    assert fn(10) == pytest.approx(1e-3)
    assert fn(60) == pytest.approx((1e-3 + 1e-4) / 2)  # halfway down the cosine
    assert fn(110) == pytest.approx(1e-4)
    assert fn(10_000) == 1e-4


def test_wsd_phases():
    fn = schedule({"component": "wsd", "warmup_iters": 10, "decay_fraction": 0.25, "min_lr": 0.0}, 1.0, 100)
    assert [fn(0), fn(5), fn(10), fn(50), fn(75)] == pytest.approx([0.0, 0.5, 1.0, 1.0, 1.0])
    assert fn(87.5) == pytest.approx(0.5)  # linear by default
    assert fn(100) == 0.0 and fn(150) == 0.0
    cosine = schedule({"component": "wsd", "warmup_iters": 0, "decay_fraction": 0.5, "decay_shape": "cosine",
                       "min_lr": 0.2}, 1.0, 100)
    assert cosine(0) == 1.0
    assert cosine(75) == pytest.approx(0.6)  # midpoint of a symmetric curve
    assert cosine(60) > 1.0 - 0.8 * 0.2  # a cosine starts flatter than a line


def test_constant_is_the_peak_everywhere():
    fn = schedule("constant", base_lr=3e-4)
    assert {fn(0), fn(1), fn(10**9)} == {3e-4}


@pytest.mark.parametrize("name", ["cosine-warmup", "constant", "wsd"])
def test_schedules_are_pure_picklable_values(name):
    fn = schedule(name)
    again = pickle.loads(pickle.dumps(fn))
    assert again == fn
    assert [fn(t) for t in (0, 7, 500, 999, 2000)] == [again(t) for t in (0, 7, 500, 999, 2000)]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"component": "cosine-warmup", "min_lr": 1e-2}, "min_lr"),
        ({"component": "cosine-warmup", "warmup_iters": -1}, "warmup_iters"),
        ({"component": "wsd", "decay_fraction": 1.5}, "decay_fraction"),
        ({"component": "wsd", "min_lr": -1e-5}, "min_lr"),
    ],
)
def test_bad_settings_are_user_errors(spec, message):
    with pytest.raises(ModulmError, match=message):
        schedule(spec, base_lr=1e-3)


def test_unknown_decay_shape_is_caught_by_recipe_validation():
    with pytest.raises(ModulmError, match="cos"):
        schedule({"component": "wsd", "decay_shape": "cos"})
