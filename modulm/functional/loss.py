"""From-scratch cross-entropy for language modelling, and perplexity.

``cross_entropy(logits, targets)`` is the mean over every position of ``-log softmax(o)[x]``,
computed as ``log(sum(exp(o - max o))) - (o[x] - max o)``: subtracting the row maximum keeps
``exp`` from overflowing and the log cancels the exp of the target term, so logits of any size
(1e4 and beyond) give exact finite losses. Work is done in float32 for every narrower dtype
(bfloat16, float16) and in float64 for float64.

Speed: the loss runs on every training step over ``rows x vocab_size`` logits, so rows are
processed in cache-sized chunks, and while a chunk is hot the gradient ``(softmax - onehot) / rows``
is written too. The backward pass then only scales that stored gradient by the incoming one
(or, for the usual incoming 1, returns it as it is).

:func:`linear_cross_entropy`, the LM head fused with the loss that models and the trainer use, is
the fast path: on the CPU each chunk's softmax is torch's fused kernel (one pass where the
from-scratch formula makes six), with the from-scratch formula kept for the rows whose target
probability underflows. :func:`cross_entropy` stays the from-scratch reference the two are tested
against.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from modulm.functional.linear import linear, uses_onednn, weight_grad
from modulm.functional.plain import is_fake
from modulm.functional.workspace import workspace

#: Elements (rows x vocab) per chunk on the CPU: 4 MiB of float32, so a chunk stays in cache
#: across the max / exp / sum / gradient passes. Accelerators take far larger chunks.
_CPU_CHUNK_ELEMENTS = 1 << 20
_ACCELERATOR_CHUNK_ELEMENTS = 1 << 26
_LOG2_E = 1.0 / math.log(2.0)


def _chunk_rows(rows: int, vocab: int, device: torch.device, fake: bool = False) -> int:
    if fake:  # sized on fake tensors (modulm.activations): one chunk, not thousands of loop turns
        return max(1, rows)
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
    step = _chunk_rows(rows, vocab, logits.device, is_fake(logits))
    scratch = torch.empty((step, vocab), dtype=compute, device=logits.device)
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        _chunk_losses(logits[start:stop], targets[start:stop], scratch[: stop - start], losses[start:stop],
                      None if grad_out is None else grad_out[start:stop], 1.0 / rows)
    return losses


def _chunk_losses(chunk: Tensor, target: Tensor, shifted: Tensor, losses: Tensor, grad: Tensor | None,
                  inv_rows: float) -> None:
    """One chunk of rows: ``-log softmax(chunk)[target]`` into ``losses`` and, when ``grad`` is given,
    ``(softmax - onehot) * inv_rows`` into it. ``shifted`` is scratch in the compute dtype (float32,
    float64 for float64) of ``chunk``'s shape; it may be ``chunk`` itself (then overwritten), and
    ``grad`` may be ``chunk`` too."""
    compute = shifted.dtype
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
    torch.sub(sums.squeeze(1).log(), target_shifted, out=losses)
    if grad is None:
        return
    # Narrower dtypes: finish in the compute dtype so each entry is rounded only once.
    out = grad if grad.dtype == compute else shifted
    torch.mul(shifted, sums.reciprocal_().mul_(inv_rows), out=out)
    out.scatter_add_(1, target, torch.full_like(target, -inv_rows, dtype=compute))
    if out is not grad:
        grad.copy_(out)


def _times_incoming(grad: Tensor | None, grad_loss: Tensor) -> Tensor | None:
    """A gradient computed in the forward pass, scaled by the loss's incoming gradient. The usual
    ``loss.backward()`` passes 1: then it is handed over as it is. (Checking the value would stall
    an accelerator, so there the product is always formed.)"""
    if grad is None or (grad_loss.device.type == "cpu" and grad_loss.item() == 1.0):
        return grad
    return grad * grad_loss.to(grad.dtype)


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
        return _times_incoming(grad, grad_loss).view(ctx.logits_shape), None


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


#: Logit elements per chunk of :func:`linear_cross_entropy` on the CPU (16 MiB of float32): the
#: chunk's matmuls need enough rows to run near the matmul peak, and the chunk is reused in place
#: for the logits, the softmax and the gradient. At least ``_MIN_FUSED_ROWS`` rows per chunk.
_CPU_FUSED_CHUNK_ELEMENTS = 1 << 22
_MIN_FUSED_ROWS = 256


def _fused_chunk_rows(rows: int, vocab: int, device: torch.device, fake: bool = False) -> int:
    if fake:  # sized on fake tensors (modulm.activations): one chunk, not thousands of loop turns
        return max(1, rows)
    budget = _CPU_FUSED_CHUNK_ELEMENTS if device.type == "cpu" else _ACCELERATOR_CHUNK_ELEMENTS
    return max(1, min(rows, max(budget // max(vocab, 1), _MIN_FUSED_ROWS)))


def _fused_losses(hidden: Tensor, weight: Tensor, targets: Tensor, want_hidden: bool,
                  want_weight: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Mean loss of ``hidden @ weight.T`` and, as asked, the gradients of ``hidden`` (flattened to
    2-D) and ``weight``: a chunk of rows at a time, each chunk's logits turned into their gradient
    ``(softmax - onehot) / rows`` in place."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    flat_targets = targets.reshape(-1, 1).to(torch.int64)
    rows, vocab = flat.shape[0], weight.shape[0]
    losses = torch.empty(rows, dtype=torch.promote_types(flat.dtype, torch.float32), device=flat.device)
    step = _fused_chunk_rows(rows, vocab, flat.device, is_fake(flat))
    chunks = _onednn_chunks if uses_onednn(flat, weight) else _blas_chunks
    grad_hidden, grad_weight = chunks(flat, weight, flat_targets, losses, step, want_hidden, want_weight)
    return losses.mean(), grad_hidden, grad_weight


def _blas_chunks(flat: Tensor, weight: Tensor, targets: Tensor, losses: Tensor, step: int, want_hidden: bool,
                 want_weight: bool) -> tuple[Tensor | None, Tensor | None]:
    """:func:`_fused_losses`'s chunks through ``torch.mm``, into one reused logits buffer. Each chunk
    is turned into ``softmax - onehot`` in place; the ``1 / rows`` of the mean is the products'
    ``alpha`` (free in the GEMM, where scaling the chunk would be one more pass over it)."""
    rows, vocab = flat.shape[0], weight.shape[0]
    inv_rows = 1.0 / max(rows, 1)
    grad_hidden = torch.empty_like(flat) if want_hidden else None
    grad_weight = (torch.empty_like(weight) if rows else torch.zeros_like(weight)) if want_weight else None
    logits = workspace("linear_cross_entropy", (min(step, rows), vocab), flat.dtype, flat.device)
    wide = logits if flat.dtype == losses.dtype else workspace("linear_cross_entropy:wide", logits.shape,
                                                               losses.dtype, flat.device)
    weight_t = weight.t()
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        chunk, part = logits[: stop - start], flat[start:stop]
        torch.mm(part, weight_t, out=chunk)
        _softmax_losses(chunk, wide[: stop - start], part, weight, targets[start:stop], losses[start:stop],
                        want_hidden or want_weight)
        if want_hidden:
            out = grad_hidden[start:stop]
            torch.addmm(out, chunk, weight, beta=0, alpha=inv_rows, out=out)
        if want_weight:
            if start == 0:  # with one chunk, exactly the unchunked product
                torch.addmm(grad_weight, chunk.t(), part, beta=0, alpha=inv_rows, out=grad_weight)
            else:
                grad_weight.addmm_(chunk.t(), part, alpha=inv_rows)
    return grad_hidden, grad_weight


def _onednn_chunks(flat: Tensor, weight: Tensor, targets: Tensor, losses: Tensor, step: int, want_hidden: bool,
                   want_weight: bool) -> tuple[Tensor | None, Tensor | None]:
    """:func:`_fused_losses`'s chunks through oneDNN (float32 on a CPU, :mod:`modulm.functional.linear`),
    whose products are new tensors: each chunk's logits are worked on in place where they land, and
    the products of ``softmax - onehot`` are scaled by ``1 / rows`` afterwards (they are smaller)."""
    rows = flat.shape[0]
    inv_rows = 1.0 / max(rows, 1)
    grad_hidden = torch.empty_like(flat) if want_hidden and not 0 < rows <= step else None  # one chunk: its own
    grad_weight = torch.zeros_like(weight) if want_weight and not rows else None
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        part = flat[start:stop]
        chunk = linear(part, weight)
        _softmax_losses(chunk, chunk, part, weight, targets[start:stop], losses[start:stop],
                        want_hidden or want_weight)
        if want_hidden:
            part_grad = linear(chunk, weight.t()).mul_(inv_rows)
            if grad_hidden is None:
                grad_hidden = part_grad
            else:
                grad_hidden[start:stop] = part_grad
        if want_weight:
            part_grad = weight_grad(chunk, part)
            grad_weight = part_grad.mul_(inv_rows) if grad_weight is None else grad_weight.add_(part_grad, alpha=inv_rows)
    return grad_hidden, grad_weight


_softmax_into = torch.ops.aten._softmax.out


def _softmax_losses(chunk: Tensor, wide: Tensor, part: Tensor, weight: Tensor, target: Tensor, losses: Tensor,
                    want_grad: bool) -> None:
    """One chunk of logits (``part @ weight.T``): ``-log softmax(chunk)[target]`` into ``losses`` and,
    with ``want_grad``, ``softmax - onehot`` over ``chunk``. ``wide`` is ``chunk`` itself or, for a
    narrower dtype, float32 scratch of its shape (the chunk is then rounded once, at the end).

    On the CPU the softmax is torch's fused kernel, in place: one pass over the chunk where the
    from-scratch :func:`_chunk_losses` makes six. The loss is ``-log p[target]``, exact while that
    probability is a normal float; the rare rows where it underflows (a target logit some 87 below
    the row's log-sum-exp in float32) get the from-scratch formula on their recomputed logits.
    Accelerators run :func:`_chunk_losses` (no host sync to find such rows)."""
    if chunk.device.type != "cpu":
        _chunk_losses(chunk, target, wide, losses, chunk if want_grad else None, 1.0)
        return
    if wide is not chunk:
        wide.copy_(chunk)
    _softmax_into(wide, 1, False, out=wide)
    target_probs = wide.gather(1, target).squeeze(1)
    torch.log(target_probs, out=losses).neg_()
    finfo = torch.finfo(wide.dtype)
    underflowed = target_probs < finfo.tiny / finfo.eps  # subnormal or nearly: too few bits left
    if underflowed.any():
        rows = underflowed.nonzero().squeeze(1)
        logits = torch.mm(part[rows], weight.t()).to(losses.dtype)  # its own memory: scratch for the formula
        exact = torch.empty(rows.numel(), dtype=losses.dtype)
        _chunk_losses(logits, target[rows], logits, exact, None, 1.0)
        losses[rows] = exact
    if want_grad:
        wide.scatter_add_(1, target, torch.full_like(target, -1, dtype=wide.dtype))
        if wide is not chunk:
            chunk.copy_(wide)


class _LinearCrossEntropy(torch.autograd.Function):
    """``cross_entropy(hidden @ weight.T, targets)`` through :func:`_fused_losses`: both gradients
    are computed in the forward pass; the backward only scales them."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:  # type: ignore[override]
        loss, grad_hidden, grad_weight = _fused_losses(hidden, weight, targets, *ctx.needs_input_grad[:2])
        ctx.hidden_shape = hidden.shape
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor):  # type: ignore[override]
        grad_hidden, grad_weight = (_times_incoming(g, grad_loss) for g in ctx.saved_tensors)
        return None if grad_hidden is None else grad_hidden.view(ctx.hidden_shape), grad_weight, None


def linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    """``cross_entropy(hidden @ weight.T, targets)``: the LM head and the loss in one pass.

    ``hidden``: ``(..., d)``; ``weight``: ``(vocab_size, d)`` (an LM head's); ``targets``: int
    ``(...)`` in ``[0, vocab_size)``. Same value and gradients as the two steps (within float
    rounding: over several chunks the weight's gradient is summed chunk by chunk), without forming
    the ``(..., vocab_size)`` logits: rows are processed in chunks that are reused in place, which
    saves the logits' memory and, on a CPU, most of the head's time outside the matmuls.

    Under autocast, under ``torch.compile``, or when ``hidden`` and ``weight`` differ in dtype,
    it runs the two steps (the matmul under the autocast in force, the loss outside it, and outside
    a compiled graph).
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"linear_cross_entropy: targets of shape {tuple(targets.shape)} do not match "
                         f"hidden of shape {tuple(hidden.shape)} (expected targets of shape hidden.shape[:-1])")
    if (torch.is_autocast_enabled(hidden.device.type) or torch.compiler.is_compiling()
            or hidden.dtype != weight.dtype or not hidden.is_floating_point()):
        logits = linear(hidden, weight)
        with torch.autocast(hidden.device.type, enabled=False):
            return _eager_cross_entropy(logits, targets)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets)
    with torch.no_grad():
        return _fused_losses(hidden, weight, targets, False, False)[0]


#: The loss outside a compiled graph, as when the trainer computed it from a compiled model's logits
#: (its chunk loop and its backward's check of the incoming gradient are eager code).
_eager_cross_entropy = torch.compiler.disable(cross_entropy)


def perplexity(loss: float | Tensor) -> float | Tensor:
    """``exp(loss)`` for a mean cross-entropy in nats: a float for a float, a tensor for a tensor."""
    if isinstance(loss, Tensor):
        return torch.exp(loss.to(torch.promote_types(loss.dtype, torch.float32)))
    return math.exp(loss)
