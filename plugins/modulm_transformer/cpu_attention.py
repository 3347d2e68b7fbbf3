"""Causal attention on the CPU as a few query blocks, so torch's flash kernel skips masked work.

torch's CPU flash kernel splits the keys into blocks of 512 and skips a block only when it lies
wholly above the diagonal: for a context of up to 512 it computes the full ``T x T`` square of
scores and masks half of it away. Split the queries into ``n`` blocks instead: block ``i`` (rows
``lo:hi``) attends only keys ``:hi``, causally over its own rows, so about ``(n + 1) / 2n`` of the
square is computed (5/8 with four blocks). Each block is one call of the same kernel; the forward
keeps each block's log-sum-exp, so the backward replays the kernel's own backward block by block and
sums the key and value gradients.

Same maths, different summation order: outputs and gradients agree with one
``scaled_dot_product_attention(is_causal=True)`` call to float32 rounding (tested). Measured on
bench-tiny's heads (16 x 4 x 128 x 32), forward and backward with the heads merged afterwards:
6.4 -> 5.2 ms at 1 thread, 4.4 -> 3.8 ms at 2 threads; bench-small's (8 x 16 x 256 x 32):
47.8 -> 36.9 ms and 27.6 -> 24.4 ms (docs/components.md).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from modulm.functional.attention import causal_mask
from modulm.functional.cpu_matmul import cpu_vendor
from modulm.functional.plain import dispatch_mode_active

_aten = torch.ops.aten
# the kernels this needs are private ATen ops: looked up once, not on every call
_HAS_KERNELS = hasattr(_aten, "_scaled_dot_product_flash_attention_for_cpu_backward")
_MIN_BLOCK = 32  # the kernel's own query block at these lengths; smaller blocks cost more calls than they skip


def block_causal_available(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether :func:`block_causal_attention` applies: float32 CPU tensors ``(batch, heads, T, d)``
    with as many queries as keys, at least two blocks long, outside ``torch.compile`` and CPU autocast."""
    return (
        q.device.type == "cpu"
        and q.dtype == k.dtype == v.dtype == torch.float32
        and q.dim() == k.dim() == v.dim() == 4
        and q.shape[-2] == k.shape[-2] >= 2 * _MIN_BLOCK
        and not torch.compiler.is_compiling()
        and not torch.is_autocast_enabled("cpu")
        and _HAS_KERNELS
    )


def blocks_pay_off() -> bool:
    """Whether this CPU runs causal attention faster in query blocks: every CPU but Intel's. On a
    2-core Intel Xeon (AMX) one ``is_causal`` call measured as fast or faster, whole training steps
    of bench-tiny 1.03x and of bench-small 1.00x with one call; the gains in the module doc were
    measured on AMD CPUs."""
    return cpu_vendor() != "GenuineIntel"


def num_blocks(length: int) -> int:
    """Query blocks for a context of ``length``: 4 up to 512 (at least 32 rows each), 8 beyond."""
    return max(1, min(length // _MIN_BLOCK, 4 if length <= 512 else 8))


def block_causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``softmax(q kᵀ / sqrt(d) + causal) v`` for ``(batch, heads, T, d)`` inputs (see
    :func:`block_causal_available`); returns ``(batch, heads, T, d)`` laid out as
    ``(batch, T, heads, d)``, so merging the heads afterwards is a view."""
    return _BlockCausal.apply(q, k, v)


def _bounds(length: int) -> list[int]:
    n = num_blocks(length)
    return [length * i // n for i in range(n + 1)]


def _new_mask(lo: int, hi: int, dtype: torch.dtype) -> Tensor:
    """Additive ``(hi - lo, hi)`` mask: row ``r`` (query ``lo + r``) sees keys ``<= lo + r`` (the
    kernel takes a mask in the queries' dtype, not a boolean one)."""
    return torch.zeros(hi - lo, hi, dtype=dtype).masked_fill_(~causal_mask(hi - lo, hi), float("-inf"))


_mask = functools.lru_cache(maxsize=64)(_new_mask)  # bounded: prompts of many lengths must not grow it without end


def _block_args(lo: int, hi: int, dtype: torch.dtype) -> dict:
    # the first block is square and starts at 0, where the kernel's own (top-left) causal flag is right
    if lo == 0:
        return {"is_causal": True}
    # under a dispatch mode (fake tensors sizing the memory) the mask is the mode's own and is not
    # kept: a cached fake mask would break the real run after it
    return {"is_causal": False, "attn_mask": _new_mask(lo, hi, dtype) if dispatch_mode_active() else _mask(lo, hi, dtype)}


class _BlockCausal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # type: ignore[override]
        batch, heads, length, width = q.shape
        bounds = _bounds(length)
        out = q.new_empty(batch, length, heads, width).transpose(1, 2)
        lses = []
        for lo, hi in zip(bounds, bounds[1:]):
            block, lse = _aten._scaled_dot_product_flash_attention_for_cpu.default(
                q.narrow(2, lo, hi - lo), k.narrow(2, 0, hi), v.narrow(2, 0, hi), 0.0, **_block_args(lo, hi, q.dtype))
            out.narrow(2, lo, hi - lo).copy_(block)
            lses.append(lse)
        ctx.save_for_backward(q, k, v, out, *lses)
        ctx.bounds = bounds
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        q, k, v, out, *lses = ctx.saved_tensors
        bounds = ctx.bounds
        grad_q_blocks = []
        grad_k = grad_v = None
        # the last block sees every key: its key and value gradients start the sums
        for i in reversed(range(len(lses))):
            lo, hi = bounds[i], bounds[i + 1]
            rows = hi - lo
            gq, gk, gv = _aten._scaled_dot_product_flash_attention_for_cpu_backward.default(
                grad.narrow(2, lo, rows), q.narrow(2, lo, rows), k.narrow(2, 0, hi), v.narrow(2, 0, hi),
                out.narrow(2, lo, rows), lses[i], 0.0, **_block_args(lo, hi, q.dtype))
            grad_q_blocks.append(gq)
            if grad_k is None:
                grad_k, grad_v = gk, gv
            else:
                grad_k.narrow(2, 0, hi).add_(gk)
                grad_v.narrow(2, 0, hi).add_(gv)
        return torch.cat(grad_q_blocks[::-1], dim=2), grad_k, grad_v
