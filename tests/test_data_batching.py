"""get_batch: windows of the data, targets shifted by one, uniform starts, reproducible draws."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from modulm.errors import ModulmError
from modulm_data import get_batch

shapes = st.tuples(st.integers(2, 300), st.integers(1, 8), st.integers(1, 32)).filter(lambda t: t[0] > t[2])


def _starts_of(x: np.ndarray, rows: torch.Tensor) -> list[list[int]]:
    """Every start offset at which each row occurs in x (brute force)."""
    width = rows.shape[1]
    windows = np.lib.stride_tricks.sliding_window_view(x.astype(np.int64), width)
    return [np.flatnonzero((windows == row.numpy()).all(axis=1)).tolist() for row in rows]


@given(shape=shapes, vocab=st.integers(1, 5), seed=st.integers(0, 2**32))
def test_rows_are_windows_and_targets_shift_by_one(shape, vocab, seed):
    length, batch, context = shape
    x = np.random.default_rng(seed).integers(0, vocab, size=length).astype(np.uint16)
    inputs, targets = get_batch(x, batch, context, "cpu", torch.Generator().manual_seed(seed))
    assert inputs.shape == targets.shape == (batch, context)
    assert inputs.dtype == targets.dtype == torch.int64
    full = torch.cat([inputs, targets[:, -1:]], dim=1)
    assert torch.equal(full[:, 1:], targets)
    # each (context + 1)-token row is a contiguous window starting at a valid offset
    for starts in _starts_of(x, full):
        assert any(0 <= s <= length - context - 1 for s in starts)


@given(length=st.integers(2, 40), context=st.integers(1, 12), seed=st.integers(0, 2**32))
def test_every_start_is_reachable_and_none_other(length, context, seed):
    if length <= context:
        return
    x = np.arange(length, dtype=np.int64)  # distinct ids: a row's first id is its start
    gen = torch.Generator().manual_seed(seed)
    seen = set()
    for _ in range(60):
        inputs, _ = get_batch(x, 64, context, "cpu", gen)
        seen.update(inputs[:, 0].tolist())
    assert seen == set(range(length - context))


def test_starts_are_uniform():
    x = np.arange(11, dtype=np.int32)
    inputs, _ = get_batch(x, 50_000, 1, "cpu", torch.Generator().manual_seed(0))
    counts = np.bincount(inputs[:, 0].numpy(), minlength=10)
    expected = 50_000 / 10
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 27.9  # 9 degrees of freedom, p = 0.001


@given(seed=st.integers(0, 2**32), draws=st.integers(0, 5))
def test_same_seed_or_state_gives_same_batches(seed, draws):
    x = np.arange(500, dtype=np.uint32)
    a, b = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    for _ in range(draws):
        get_batch(x, 3, 7, "cpu", a)
    state = a.get_state()
    first = get_batch(x, 3, 7, "cpu", a)
    b.set_state(state)
    again = get_batch(x, 3, 7, "cpu", b)
    assert all(torch.equal(p, q) for p, q in zip(first, again))


def test_accepts_a_tensor_and_a_memmap(tmp_path):
    data = np.arange(100, dtype=np.uint16)
    np.save(tmp_path / "t.npy", data)
    mapped = np.load(tmp_path / "t.npy", mmap_mode="r")
    for x in (mapped, torch.from_numpy(data.astype(np.int64))):
        inputs, targets = get_batch(x, 4, 10, "cpu", torch.Generator().manual_seed(1))
        assert torch.equal(inputs[:, 1:], targets[:, :-1])
        assert torch.equal(inputs[:, 0] + 9, inputs[:, -1])


@pytest.mark.parametrize("length,context", [(5, 5), (1, 1), (3, 10)])
def test_too_short_data_is_a_clear_error(length, context):
    with pytest.raises(ModulmError, match=f"too short for context_length {context}"):
        get_batch(np.zeros(length, dtype=np.uint16), 2, context)


def test_bad_shapes_are_rejected():
    with pytest.raises(ModulmError, match="batch_size"):
        get_batch(np.zeros(10, dtype=np.uint16), 0, 2)
