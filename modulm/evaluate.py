"""Validation loss, perplexity and bits per byte.

Periodic evaluation reads ``eval_iters`` batches of random windows drawn with a fixed seed, so
every evaluation of a run sees the same windows and successive numbers are comparable. The final
evaluation can cover the whole split in non-overlapping windows: every token after the first is
predicted exactly once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from modulm.functional.loss import cross_entropy
from modulm.kinds import takes_targets

EVAL_SEED = 1234


@dataclass
class EvalResult:
    loss: float  # mean nats per predicted token
    tokens: int  # predicted tokens
    seconds: float
    bytes_per_token: float | None = None

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    @property
    def bits_per_byte(self) -> float | None:
        if not self.bytes_per_token:
            return None
        return self.loss / math.log(2) / self.bytes_per_token


def sampled_windows(tokens: Any, batches: int, batch_size: int, context_length: int, seed: int = EVAL_SEED) -> Iterator[np.ndarray]:
    """``batches`` arrays of shape (batch_size, context_length + 1) from random starts (fixed seed)."""
    limit = len(tokens) - context_length - 1
    if limit < 0:
        return
    generator = torch.Generator().manual_seed(seed)
    offsets = np.arange(context_length + 1)
    for _ in range(batches):
        starts = torch.randint(0, limit + 1, (batch_size,), generator=generator).numpy()
        yield np.asarray(tokens[starts[:, None] + offsets])


def full_windows(tokens: Any, batch_size: int, context_length: int) -> Iterator[np.ndarray]:
    """Non-overlapping windows covering the whole split; the last one may be shorter."""
    n = len(tokens)
    starts = list(range(0, max(n - 1, 0), context_length))
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        if all(s + context_length + 1 <= n for s in chunk):
            offsets = np.asarray(chunk)[:, None] + np.arange(context_length + 1)
            yield np.asarray(tokens[offsets])
        else:  # ragged tail: one window at a time
            for s in chunk:
                yield np.asarray(tokens[s : min(s + context_length + 1, n)])[None, :]


def model_loss(model: Callable[..., Any], inputs: torch.Tensor, targets: torch.Tensor,
               autocast: Callable[[], Any], loss_in_forward: bool) -> torch.Tensor:
    """Mean cross-entropy of ``model`` on ``targets``: from ``model(inputs, targets=targets)`` when
    ``loss_in_forward`` (:func:`modulm.kinds.takes_targets`), else from its logits, the loss
    computed outside ``autocast``."""
    with autocast():
        out = model(inputs, targets=targets) if loss_in_forward else model(inputs)
    return out if loss_in_forward else cross_entropy(out, targets)


@torch.no_grad()
def evaluate(model: torch.nn.Module, windows: Iterator[np.ndarray], device: torch.device,
             autocast: Callable[[], Any], bytes_per_token: float | None = None) -> EvalResult:
    """Mean cross-entropy over every target of every window (model put in eval mode meanwhile). A
    model whose forward takes ``targets=`` computes the loss itself (the transformer without
    forming the logits)."""
    start = time.perf_counter()
    loss_in_forward = takes_targets(model)
    was_training = model.training
    model.eval()
    wide = torch.float32 if torch.device(device).type == "mps" else torch.float64  # MPS has no float64
    total, count = torch.zeros((), dtype=wide, device=device), 0  # read once at the end: no sync per batch
    try:
        for window in windows:
            batch = torch.from_numpy(window.astype(np.int64)).to(device)
            inputs, targets = batch[:, :-1], batch[:, 1:]
            if inputs.shape[1] == 0:
                continue
            if not targets.numel():  # an empty share still runs the forward pass (fsdp: a collective)
                with autocast():
                    model(inputs)
                continue
            loss = model_loss(model, inputs, targets, autocast, loss_in_forward)
            total += loss.to(wide) * targets.numel()
            count += targets.numel()
    finally:
        model.train(was_training)
    loss = total.item() / count if count else float("nan")
    return EvalResult(loss, count, time.perf_counter() - start, bytes_per_token)
