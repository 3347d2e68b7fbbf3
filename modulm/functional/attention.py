"""From-scratch attention primitives: a stable softmax, scaled dot-product attention, SiLU and
the SiLU-gated product of SwiGLU.

Plain tensor ops only (no ``torch.nn.functional``), so the built-in transformer's reference path
shows every step of the computation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from modulm.functional.workspace import workspace


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """Softmax of ``x`` along ``dim``, stable for any finite input.

    Subtracting the maximum first leaves the result unchanged (softmax is shift-invariant) and
    keeps ``exp`` from overflowing, so huge inputs give finite probabilities that sum to 1.
    Entries equal to ``-inf`` get probability 0 as long as one entry of the slice is finite.
    """
    shifted = x - x.amax(dim=dim, keepdim=True)
    exps = torch.exp(shifted)
    return exps / exps.sum(dim=dim, keepdim=True)


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """``softmax(q kᵀ / sqrt(d_k)) v`` over any leading batch dims.

    ``q``: ``(..., n, d_k)``, ``k``: ``(..., m, d_k)``, ``v``: ``(..., m, d_v)``; returns
    ``(..., n, d_v)`` in ``q``'s dtype. ``mask`` is boolean, broadcastable to ``(..., n, m)``;
    ``True`` means the query attends to the key. Every query must attend to at least one key.
    Scores and probabilities are computed in float32 for half-precision inputs.
    """
    scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v).to(q.dtype)


class _SiLU(torch.autograd.Function):
    """``x * sigmoid(x)`` with a hand-written backward that allocates two tensors, not five."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.sigmoid(x).mul_(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        # d/dx (x * s) = s * (1 + x * (1 - s)) = s * (1 + x - x * s)
        out = torch.mul(x, s)
        torch.sub(x, out, out=out)
        return out.add_(1).mul_(s).mul_(grad)


def silu(x: Tensor) -> Tensor:
    """SiLU (swish): ``x * sigmoid(x)``, elementwise, same dtype as ``x``."""
    return _SiLU.apply(x)


def gate_grads_in_place(a: Tensor, b: Tensor, grad: Tensor, purpose: str) -> tuple[Tensor, Tensor]:
    """The gradients of ``silu(a) * b`` for the incoming ``grad``, written over ``a`` and ``b``
    (returned as ``(grad_a, grad_b)``); the sigmoid goes in the reused ``purpose`` workspace."""
    # d silu(a)/da = s + silu(a) (1 - s) for s = sigmoid(a)
    s = torch.sigmoid(a, out=workspace(purpose, a.shape, a.dtype, a.device))
    a.mul_(s)  # silu(a)
    s.lerp_(s.new_ones(()), a).mul_(b)  # b * d silu(a)/da
    torch.mul(a, grad, out=b)
    torch.mul(s, grad, out=a)
    return a, b


class _GatedSiLU(torch.autograd.Function):
    """``silu(a) * b`` for ``h = [a | b]`` split in half along the last dim, with a hand-written
    backward that writes both halves of the gradient into one tensor (no concatenation): a new one,
    or, with ``overwrite``, ``h``'s own memory (no new full-size buffer, two passes fewer)."""

    @staticmethod
    def forward(ctx, h: Tensor, overwrite: bool) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(h)
        ctx.overwrite = overwrite
        a, b = h.chunk(2, dim=-1)
        return torch.sigmoid(a).mul_(a).mul_(b)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (h,) = ctx.saved_tensors
        a, b = h.chunk(2, dim=-1)
        # d silu(a)/da = s * (1 + a * (1 - s)) = s + silu(a) * (1 - s)
        if ctx.overwrite:  # h's version counter moves, so a second backward through it raises
            gate_grads_in_place(a, b, grad, "gated_silu")
            return h, None
        s = torch.sigmoid(a)
        grad_h = torch.empty_like(h)
        grad_a, grad_b = grad_h.chunk(2, dim=-1)
        torch.mul(a, s, out=grad_b)  # silu(a)
        torch.sub(a, grad_b, out=grad_a)
        grad_a.add_(1).mul_(s).mul_(b).mul_(grad)
        grad_b.mul_(grad)
        return grad_h, None


def gated_silu(h: Tensor, overwrite_input: bool = False) -> Tensor:
    """SwiGLU's gate: ``silu(a) * b`` where ``a, b`` are the first and second halves of ``h``'s
    last dim (even width); returns ``(..., width / 2)`` in ``h``'s dtype.

    ``overwrite_input=True`` lets the backward pass write ``h``'s gradient into ``h``'s memory: for
    an ``h`` nothing else reads after the backward (an FFN's pre-activation); a second backward
    through the same graph then raises instead of reading the overwritten values.
    """
    if h.shape[-1] % 2:
        raise ValueError(f"gated_silu needs an even last dim, got {h.shape[-1]}")
    return _GatedSiLU.apply(h, overwrite_input)


def causal_mask(num_queries: int, num_keys: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """Boolean ``(num_queries, num_keys)`` mask, ``True`` where a query may attend.

    The queries are the last ``num_queries`` positions of a sequence of ``num_keys`` keys (the
    shape a KV cache gives), so query ``i`` sees keys ``j <= i + num_keys - num_queries``.
    """
    num_keys = num_queries if num_keys is None else num_keys
    q_pos = torch.arange(num_keys - num_queries, num_keys, device=device)
    k_pos = torch.arange(num_keys, device=device)
    return k_pos[None, :] <= q_pos[:, None]
