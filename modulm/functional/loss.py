"""From-scratch cross-entropy for language modelling, and perplexity.

``cross_entropy(logits, targets)`` is the mean over every position of ``-log softmax(o)[x]``,
computed as ``log(sum(exp(o - max o))) - (o[x] - max o)``: subtracting the row maximum keeps
``exp`` from overflowing and the log cancels the exp of the target term, so logits of any size
(1e4 and beyond) give exact finite losses. Work is done in float32 for every narrower dtype
(bfloat16, float16) and in float64 for float64.

Speed: the loss runs on every training step over ``rows x vocab_size`` logits, so rows are
processed in cache-sized chunks, and while a chunk is hot the gradient ``(softmax - onehot) / rows``
is written too. The backward pass then only scales that stored gradient by the incoming one
(or, for the usual incoming 1 on the CPU, returns it as it is).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Elements (rows x vocab) per chunk on the CPU: 4 MiB of float32, so a chunk stays in cache
#: across the max / exp / sum / gradient passes. Accelerators take far larger chunks.
_CPU_CHUNK_ELEMENTS = 1 << 20
_ACCELERATOR_CHUNK_ELEMENTS = 1 << 26
_LOG2_E = 1.0 / math.log(2.0)


def _chunk_rows(rows: int, vocab: int, device: torch.device) -> int:
    budget = _CPU_CHUNK_ELEMENTS if device.type == "cpu" else _ACCELERATOR_CHUNK_ELEMENTS
    return max(1, min(rows, budget // max(vocab, 1)))


def _flatten(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    if logits.dim() < 1 or tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"cross_entropy: targets of shape {tuple(targets.shape)} do not match logits of shape "
            f"{tuple(logits.shape)} (expected targets of shape logits.shape[:-1])"
        )
    if not logits.is_floating_point():
        raise TypeError(f"cross_entropy: logits must be floating point, got {logits.dtype}")
    vocab = logits.shape[-1]
    return logits.reshape(-1, vocab), targets.reshape(-1, 1).to(torch.int64)


def _row_losses(logits: Tensor, targets: Tensor, grad_out: Tensor | None) -> Tensor:
    """Per-row ``-log softmax(o)[x]`` of 2-D ``logits``, writing ``(softmax - onehot) / rows`` into
    ``grad_out`` (the logits' shape and dtype) when given. Computes in float32 (float64 for float64)."""
    rows, vocab = logits.shape
    compute = torch.promote_types(logits.dtype, torch.float32)
    losses = torch.empty(rows, dtype=compute, device=logits.device)
    if rows == 0:
        return losses
    step = _chunk_rows(rows, vocab, logits.device)
    scratch = torch.empty((step, vocab), dtype=compute, device=logits.device)
    inv_rows = 1.0 / rows
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        chunk = logits[start:stop]
        target = targets[start:stop]
        shifted = scratch[: stop - start]
        if chunk.dtype == compute:
            torch.sub(chunk, chunk.amax(dim=1, keepdim=True), out=shifted)  # entries <= 0
        else:  # widen first (exact), then work in cache: a mixed-dtype subtraction is much slower
            shifted.copy_(chunk)
            shifted.sub_(shifted.amax(dim=1, keepdim=True))
        target_shifted = shifted.gather(1, target).squeeze(1)
        # exp(d) as 2**(d * log2(e)): torch's exp2 kernel is several times faster than its exp on
        # the CPU, and the extra rounding of d * log2(e) is a relative 6e-8 * |d| (tiny where the
        # terms matter, d near 0). The target term above stays exact.
        shifted.mul_(_LOG2_E).exp2_()
        sums = shifted.sum(dim=1, keepdim=True)  # in [1, vocab]: the maximum contributes exp(0)
        torch.sub(sums.squeeze(1).log(), target_shifted, out=losses[start:stop])
        if grad_out is not None:
            # Narrower dtypes: finish in the compute dtype so each entry is rounded only once.
            grad = grad_out[start:stop] if grad_out.dtype == compute else shifted
            torch.mul(shifted, sums.reciprocal_().mul_(inv_rows), out=grad)
            grad.scatter_add_(1, target, torch.full_like(target, -inv_rows, dtype=compute))
            if grad is shifted:
                grad_out[start:stop].copy_(shifted)
    return losses


class _CrossEntropy(torch.autograd.Function):
    """Mean cross-entropy whose gradient is computed in the forward pass (see the module doc)."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:  # type: ignore[override]
        flat, flat_targets = _flatten(logits, targets)
        grad = torch.empty(flat.shape, dtype=logits.dtype, device=logits.device)
        losses = _row_losses(flat, flat_targets, grad)
        ctx.logits_shape = logits.shape
        ctx.save_for_backward(grad)
        return losses.mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        # The usual ``loss.backward()`` passes 1: hand the stored gradient over as it is. (Checking
        # the value would stall an accelerator, so there the product is always formed.)
        if not (grad_loss.device.type == "cpu" and grad_loss.item() == 1.0):
            grad = grad * grad_loss.to(grad.dtype)
        return grad.view(ctx.logits_shape), None


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean negative log-likelihood of ``targets`` under ``softmax(logits)``.

    ``logits``: ``(..., vocab_size)`` of any float dtype; ``targets``: int ``(...)`` with values in
    ``[0, vocab_size)``. Returns a float32 scalar (float64 for float64 logits). Its gradient with
    respect to ``logits`` is ``(softmax(logits) - onehot(targets)) / rows`` in the logits' dtype,
    matching ``torch.nn.functional.cross_entropy``. An empty batch gives ``nan`` (the mean of nothing).
    """
    if torch.is_grad_enabled() and logits.requires_grad:
        return _CrossEntropy.apply(logits, targets)
    flat, flat_targets = _flatten(logits, targets)
    return _row_losses(flat, flat_targets, None).mean()


def perplexity(loss: float | Tensor) -> float | Tensor:
    """``exp(loss)`` for a mean cross-entropy in nats: a float for a float, a tensor for a tensor."""
    if isinstance(loss, Tensor):
        return torch.exp(loss.to(torch.promote_types(loss.dtype, torch.float32)))
    return math.exp(loss)
