"""Conformance check for ``data`` sources (contract in :mod:`modulm.kinds`)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from modulm.kinds import INTERFACES
from modulm.testing._build import component_builder, describe
from modulm.testing._torch import one_thread, through_checkpoint


def _windows_found(tokens: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each row, whether it occurs as a contiguous window of ``tokens``."""
    width = rows.shape[1]
    windows = np.lib.stride_tricks.sliding_window_view(tokens, width)
    found = np.zeros(len(rows), dtype=bool)
    for i, row in enumerate(rows):
        starts = np.flatnonzero(windows[:, 0] == row[0])
        found[i] = bool((windows[starts] == row).all(axis=1).any())
    return found


def _draws(source: Any, split: str, n: int, batch_size: int, context_length: int,
           device: str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [source.get_batch(split, batch_size, context_length, device) for _ in range(n)]


def _same(a: list, b: list) -> bool:
    return all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


@one_thread
def check_data_source(component: str | Callable[..., Any], config: Mapping[str, Any] | None = None, *,
                      batch_size: int = 4, context_length: int = 8, seed: int = 0,
                      cache_dir: str | Path | None = None, device: str = "cpu", registry: Any = None) -> None:
    """Check the ``data`` contract on every split the source offers.

    ``get_batch`` returns int64 ``(batch_size, context_length)`` tensors on ``device`` with ids in
    ``[0, vocab_size)``; each input row is a contiguous window of ``tokens(split)`` and its targets
    are the same window shifted by one. Two sources with the same seed draw the same batches; a
    source that loads another's ``state_dict()`` (through a checkpoint) draws exactly the batches
    the other draws next. ``describe()`` gives strings, ``bytes_per_token`` is ``None`` or positive,
    and ``validate`` (when present) accepts ``context_length`` and rejects one longer than a split.
    ``config`` must point at data holding more than ``context_length`` tokens per split; derived
    files go to ``cache_dir`` (default: a temporary directory).
    """
    label = describe("data", component)
    make = component_builder("data", component, config, registry)
    with tempfile.TemporaryDirectory(prefix="modulm-check-data-") as tmp:
        cache = Path(cache_dir) if cache_dir is not None else Path(tmp)
        source = make(seed=seed, cache_dir=cache)
        assert isinstance(source, INTERFACES["data"]), f"{label}: does not match the data interface (see modulm.kinds)"
        vocab = source.vocab_size
        assert isinstance(vocab, int) and vocab >= 1, f"{label}: vocab_size is {vocab!r}"
        assert "train" in source.splits and set(source.splits) <= {"train", "val"}, f"{label}: splits are {source.splits!r}"
        lines = source.describe()
        assert isinstance(lines, list) and all(isinstance(line, str) for line in lines), f"{label}: describe() gave {lines!r}"
        if hasattr(source, "validate"):
            source.validate(context_length)
        for split in source.splits:
            _check_split(label, source, split, vocab, batch_size, context_length, device)
            if hasattr(source, "validate"):
                too_long = len(source.tokens(split))
                try:
                    source.validate(too_long)
                except Exception as exc:  # noqa: BLE001 - any error type will do, but one line
                    assert "\n" not in str(exc).strip(), f"{label}: validate's error spans several lines: {exc}"
                else:
                    raise AssertionError(f"{label}: validate({too_long}) accepted a context longer than the {split} split")

        twin = make(seed=seed, cache_dir=cache)
        for split in source.splits:
            fresh = make(seed=seed, cache_dir=cache)
            assert _same(_draws(fresh, split, 3, batch_size, context_length),
                         _draws(twin, split, 3, batch_size, context_length)), (
                f"{label}: two sources built with seed={seed} drew different {split} batches (sampling is not seeded)"
            )
        _check_resume(label, make, cache, seed, batch_size, context_length)


def _check_split(label: str, source: Any, split: str, vocab: int, batch_size: int, context_length: int,
                 device: str) -> None:
    tokens = np.asarray(source.tokens(split))
    assert tokens.ndim == 1 and len(tokens) > context_length, (
        f"{label}: tokens({split!r}) has shape {tokens.shape}; the check needs more than context_length={context_length}"
    )
    per_token = source.bytes_per_token(split)
    assert per_token is None or (isinstance(per_token, float) and per_token > 0), (
        f"{label}: bytes_per_token({split!r}) = {per_token!r}"
    )
    for x, y in _draws(source, split, 3, batch_size, context_length, device):
        for name, t in (("inputs", x), ("targets", y)):
            assert isinstance(t, torch.Tensor) and t.dtype == torch.int64, f"{label}: {split} {name} are {getattr(t, 'dtype', type(t))}, not int64"
            assert t.shape == (batch_size, context_length), f"{label}: {split} {name} have shape {tuple(t.shape)}, expected {(batch_size, context_length)}"
            assert t.device.type == torch.device(device).type, f"{label}: {split} {name} are on {t.device}, {device!r} was asked"
            assert int(t.min()) >= 0 and int(t.max()) < vocab, f"{label}: {split} {name} hold ids outside [0, {vocab})"
        x, y = x.cpu(), y.cpu()
        assert torch.equal(y[:, :-1], x[:, 1:]), f"{label}: {split} targets are not the inputs shifted by one"
        rows = torch.cat([x, y[:, -1:]], dim=1).numpy()
        found = _windows_found(tokens, rows)
        assert found.all(), (
            f"{label}: {split} row {int(np.flatnonzero(~found)[0])} (inputs plus the last target) is not a contiguous "
            "window of tokens(split): targets must be the next tokens of the same window"
        )


def _check_resume(label: str, make: Callable[..., Any], cache: Path, seed: int, batch_size: int, context_length: int) -> None:
    source = make(seed=seed, cache_dir=cache)
    for split in source.splits:
        _draws(source, split, 2, batch_size, context_length)
    state = through_checkpoint(source.state_dict())
    expected = {split: _draws(source, split, 3, batch_size, context_length) for split in source.splits}
    resumed = make(seed=seed + 1, cache_dir=cache)  # a different seed: the state alone must decide
    resumed.load_state_dict(state)
    for split in source.splits:
        assert _same(_draws(resumed, split, 3, batch_size, context_length), expected[split]), (
            f"{label}: after load_state_dict the source drew different {split} batches than the original (no exact resume)"
        )
