"""SwiGLU's gated input, ``silu(x W1ᵀ) ⊙ (x W3ᵀ)``, as one autograd function over both products.

Stacking ``W1`` and ``W3`` into one ``(2 d_ff, d)`` product (the way :func:`gated_silu` is fed)
leaves the gate's two halves as column slices of one output, with a row stride twice their width;
torch's element-wise kernels run such slices at a fraction of their contiguous rate (a sigmoid over
bench-tiny's 2048 x 344 half: 1.47 against 1.14 ms; an exp 2.25 against 0.58 ms, 2 threads, AVX2).
Here each half is its own product with a contiguous output, the gating and its backward run in
place on those two buffers (no concatenated weight, no split gradient), and the weight gradients
come straight out of the two halves of the incoming gradient. Whole bench-tiny steps on that
machine: 1.02-1.03x at 2 threads, 1.01x at 1; bench-small's FFN: the same to within 1%
(docs/against-nanogpt.md).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from modulm.functional.attention import gate_grads_in_place, gated_silu
from modulm.functional.linear import linear, product_kernels
from modulm.functional.plain import plain


class _GatedLinear(torch.autograd.Function):
    """``silu(x W1ᵀ) ⊙ (x W3ᵀ)``; the backward overwrites the saved pre-activations with their
    gradients, so a second backward through the same graph raises."""

    @staticmethod
    def forward(ctx, x: Tensor, w1: Tensor, w3: Tensor) -> Tensor:  # type: ignore[override]
        rows = x.reshape(-1, x.shape[-1])
        kernels = product_kernels(rows, w1)
        a, b = kernels.forward(rows, w1), kernels.forward(rows, w3)
        ctx.save_for_backward(rows, w1, w3, a, b)
        ctx.kernels, ctx.input_shape = kernels, x.shape
        return torch.sigmoid(a).mul_(a).mul_(b).view(*x.shape[:-1], w1.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        rows, w1, w3, a, b = ctx.saved_tensors
        grad_a, grad_b = gate_grads_in_place(a, b, grad.reshape(a.shape), "gated_linear")
        kernels = ctx.kernels
        grad_x = grad_w1 = grad_w3 = None
        if ctx.needs_input_grad[0]:
            grad_x = kernels.input_grad(grad_a, w1).add_(kernels.input_grad(grad_b, w3)).view(ctx.input_shape)
        if ctx.needs_input_grad[1]:
            grad_w1 = kernels.weight_grad(grad_a, rows)
        if ctx.needs_input_grad[2]:
            grad_w3 = kernels.weight_grad(grad_b, rows)
        return grad_x, grad_w1, grad_w3


def gated_linear(x: Tensor, w1: Tensor, w3: Tensor) -> Tensor:
    """``silu(x @ w1.T) * (x @ w3.T)``: ``x`` ``(..., d)``, ``w1`` and ``w3`` ``(d_ff, d)`` ->
    ``(..., d_ff)``, differentiable in all three.

    Eager plain tensors (any device or dtype, no autocast) take the fused path above, its products
    in the library :func:`modulm.functional.linear.linear` would use; under ``torch.compile``,
    autocast, or for tensor subclasses (DTensor) it is one :func:`linear` against the stacked
    weights followed by :func:`gated_silu`. The two differ only in float32 rounding.
    """
    if (torch.compiler.is_compiling() or torch.is_autocast_enabled(x.device.type)
            or not plain(x, w1, w3)):
        hidden = linear(x, torch.cat((w1, w3)))
        # hidden is this call's own: its memory can take its gradient (not while compiling, where
        # the graph is functional)
        return gated_silu(hidden, overwrite_input=not torch.compiler.is_compiling())
    return _GatedLinear.apply(x, w1, w3)
