"""``x @ weight.T`` (a linear layer without bias), with the CPU's float32 matrix products computed
by the library :mod:`modulm.functional.cpu_matmul` chose: torch's BLAS or oneDNN.

Only float32 CPU tensors take the oneDNN path, outside autocast (whose bf16 products already run
in oneDNN); everything else is ``torch.matmul``. Under ``torch.compile`` the products are the
custom operators ``modulm::onednn_linear``, ``modulm::onednn_input_grad`` and
``modulm::onednn_weight_grad``, which inductor calls as external kernels. The two libraries
differ only in float32 rounding (a relative 1e-6 per product).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.utils.flop_counter
from torch import Tensor
from torch.autograd.function import once_differentiable

from modulm.functional.cpu_matmul import chosen, cpu_matmul
from modulm.functional.plain import plain

#: Products of fewer multiply-adds than this stay with torch's BLAS: a oneDNN call costs about 10 µs
#: more (1×128×128: 2.5 against 12 µs; 64×128×128: 14 against 17; 256×128×128: 43 against 28).
ONEDNN_MIN_MACS = 1 << 21


def uses_onednn(*tensors: Tensor) -> bool:
    """Whether a product of these tensors takes the eager oneDNN path (float32 CPU, no autocast, not
    compiling: see :func:`linear` for the compiled one)."""
    if (torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu") or not torch.backends.mkldnn.enabled
            or not all(plain(t) and t.device.type == "cpu" and t.dtype == torch.float32
                       and t.layout == torch.strided for t in tensors)):
        return False
    return cpu_matmul() == "onednn"  # resolved (and for "auto" timed) at the first such product


def onednn_product(x: Tensor, weight: Tensor) -> Tensor:
    """``x @ weight.T`` in oneDNN (float32 CPU tensors, any strides)."""
    return torch.ops.mkldnn._linear_pointwise.default(x, weight, None, "none", [], "")


def weight_grad(grad: Tensor, x: Tensor) -> Tensor:
    """``grad.T @ x`` for 2-D ``grad`` ``(rows, n)`` and ``x`` ``(rows, k)`` as a contiguous ``(n, k)``
    tensor, through oneDNN when it is large enough (:data:`ONEDNN_MIN_MACS`). The kernel copies a
    transposed input to contiguous memory, so the product is formed the way round that copies the
    smaller of the two."""
    if grad.numel() * x.shape[1] < ONEDNN_MIN_MACS:
        return torch.mm(grad.t(), x)
    if grad.shape[1] <= x.shape[1]:
        return onednn_product(grad.t(), x.t())
    return onednn_product(x.t(), grad.t()).t().contiguous()


class _OneDNNLinear(torch.autograd.Function):
    """``x @ weight.T`` through oneDNN, forward and backward (``grad @ weight``, ``grad.T @ x``)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        return onednn_product(x, weight)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return _gradients(ctx, grad, _input_grad, weight_grad)


def _input_grad(grad: Tensor, weight: Tensor) -> Tensor:
    return onednn_product(grad, weight.t())


def _gradients(ctx, grad: Tensor, input_grad, weight_grad_of) -> tuple[Tensor | None, Tensor | None]:
    """The gradients of ``x @ weight.T`` for the saved ``x, weight``: ``input_grad(grad, weight)``
    (``grad @ weight``) and ``weight_grad_of`` (:func:`weight_grad`'s contract), as needed."""
    x, weight = ctx.saved_tensors
    grad_x = input_grad(grad, weight) if ctx.needs_input_grad[0] else None
    grad_weight = None
    if ctx.needs_input_grad[1]:
        grad_weight = weight_grad_of(grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1]))
    return grad_x, grad_weight


class ProductKernels(NamedTuple):
    """The eager kernels of ``x @ weight.T`` and its two gradients in one library: ``forward(x, weight)``,
    ``input_grad(grad, weight)`` (``grad @ weight``) and ``weight_grad(grad, x)`` (``grad.T @ x``, 2-D,
    contiguous)."""

    forward: Callable[[Tensor, Tensor], Tensor]
    input_grad: Callable[[Tensor, Tensor], Tensor]
    weight_grad: Callable[[Tensor, Tensor], Tensor]


_BLAS_KERNELS = ProductKernels(lambda x, weight: torch.matmul(x, weight.t()), torch.matmul,
                               lambda grad, x: torch.mm(grad.t(), x))
_ONEDNN_KERNELS = ProductKernels(onednn_product, _input_grad, weight_grad)


def product_kernels(x: Tensor, weight: Tensor) -> ProductKernels:
    """The kernels :func:`linear` would use for ``x @ weight.T`` outside ``torch.compile``, for
    hand-written autograd functions that form the products themselves (oneDNN's where
    :func:`uses_onednn` and the product reaches :data:`ONEDNN_MIN_MACS`, else ``torch.matmul``)."""
    if x.numel() * weight.shape[0] >= ONEDNN_MIN_MACS and uses_onednn(x, weight):
        return _ONEDNN_KERNELS
    return _BLAS_KERNELS


# The same products as operators of their own, for torch.compile: inductor calls them as external
# kernels (it would otherwise lower the product to torch's BLAS), and AOTAutograd traces the
# backward through their registered formula.
def _operator(name: str, impl, out_shape):
    """``impl`` (two tensors to one) as the custom operator ``modulm::name``, whose output for
    tracing is an empty tensor of ``out_shape(a, b)``."""
    op = torch.library.custom_op(f"modulm::{name}", impl, mutates_args=())
    op.register_fake(lambda a, b: a.new_empty(out_shape(a, b)))
    return op


_compiled_linear = _operator("onednn_linear", onednn_product, lambda x, weight: (*x.shape[:-1], weight.shape[0]))
_compiled_input_grad = _operator("onednn_input_grad", _input_grad,
                                 lambda grad, weight: (*grad.shape[:-1], weight.shape[1]))
_compiled_weight_grad = _operator("onednn_weight_grad", weight_grad, lambda grad, x: (grad.shape[1], x.shape[1]))


def _keep_inputs(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _compiled_backward(ctx, grad: Tensor):
    return _gradients(ctx, grad, _compiled_input_grad, _compiled_weight_grad)


_compiled_linear.register_autograd(_compiled_backward, setup_context=_keep_inputs)


def _compiled_onednn(x: Tensor, weight: Tensor) -> bool:
    """Inside torch.compile: whether the product goes to :func:`_compiled_linear` (the checks dynamo
    can trace: the library was chosen before compiling, float32 CPU tensors, no autocast)."""
    return (chosen() == "onednn" and not torch.is_autocast_enabled("cpu") and x.device.type == "cpu"
            and weight.device.type == "cpu" and x.dtype == weight.dtype == torch.float32)


def _count_linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    rows = 1
    for size in x_shape[:-1]:
        rows *= size
    return 2 * rows * x_shape[-1] * w_shape[0]


try:  # so that torch.utils.flop_counter.FlopCounterMode counts these products as it counts torch.mm
    # (the formula is the default overload's, the only one used here)
    torch.utils.flop_counter.register_flop_formula(torch.ops.mkldnn._linear_pointwise)(_count_linear_flops)
except (AttributeError, RuntimeError, ValueError):  # no such kernel (never used then), or already registered
    pass


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """``x @ weight.T``: ``x`` ``(..., k)``, ``weight`` ``(n, k)`` -> ``(..., n)``, differentiable in both.

    Float32 CPU products of at least :data:`ONEDNN_MIN_MACS` multiply-adds use the library
    :func:`cpu_matmul` names; everything else is ``torch.matmul``. Either way the values are a
    float32 matrix product (the two libraries differ in rounding, a relative 1e-6).
    """
    if x.dim() >= 1 and weight.dim() == 2 and x.numel() * weight.shape[0] >= ONEDNN_MIN_MACS:
        if torch.compiler.is_compiling():
            if _compiled_onednn(x, weight):
                return _compiled_linear(x, weight)
        elif uses_onednn(x, weight):
            if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
                return _OneDNNLinear.apply(x, weight)
            return onednn_product(x, weight)
    return torch.matmul(x, weight.t())
