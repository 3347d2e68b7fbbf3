"""Normalisation layers: RMSNorm, and Identity for the no-norm ablation."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x²) + eps) * weight`` over the last dim, with gain ``weight`` initialised to 1.

    Computes in float32 (float64 stays float64) and returns the input's dtype. With ``gain=False``
    the gain is a constant 1 (a non-persistent buffer, no parameters).

    ``RMSNorm(d_model, eps=1e-5, device=None, dtype=None, gain=True)``: ``(..., d_model) -> (..., d_model)``.
    """

    def __init__(self, d_model: int, eps: float = 1e-5, device=None, dtype=None, gain: bool = True) -> None:
        super().__init__()
        self.d_model = d_model
        self.eps = eps
        ones = torch.ones(d_model, device=device, dtype=dtype)
        if gain:
            self.weight = nn.Parameter(ones)
        else:
            self.register_buffer("weight", ones, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return _RMSNorm.apply(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}" + ("" if isinstance(self.weight, nn.Parameter) else ", gain=False")


class _RMSNorm(torch.autograd.Function):
    """RMSNorm with a hand-written backward: four element-wise passes and two reductions into one
    new tensor, where autograd's graph makes eight temporaries.

    With ``r = (mean(x²) + eps)^-1/2``, ``x̂ = x r`` and ``y = x̂ w``, for an incoming gradient ``g``
    and ``t = g x̂``: ``dL/dw = Σ_rows t`` and ``dL/dx = r (g w - x̂ (t·w) / d)``, where ``t·w`` (one
    matrix-vector product) is ``Σ_last g w x̂``. The forward saves ``x̂`` (not ``x``) for it.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))
        ctx.input_dtype = x.dtype
        mean_square = torch.linalg.vector_norm(x32, dim=-1, keepdim=True).square_().div_(x.shape[-1])
        inv_rms = mean_square.add_(eps).rsqrt_()
        x_hat = torch.mul(x32, inv_rms)
        ctx.save_for_backward(x_hat, weight, inv_rms)
        return torch.mul(x_hat, weight).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x_hat, weight, inv_rms = ctx.saved_tensors
        grad = grad.to(x_hat.dtype)
        width = x_hat.shape[-1]
        t = grad * x_hat
        grad_weight = t.reshape(-1, width).sum(0)
        projection = torch.matmul(t, weight.to(t.dtype)).unsqueeze(-1)
        # t is spent: the input's gradient takes its memory
        grad_x = torch.mul(grad, weight, out=t).addcmul_(x_hat, projection, value=-1 / width).mul_(inv_rms)
        return grad_x.to(ctx.input_dtype), grad_weight.to(weight.dtype), None


class Identity(nn.Module):
    """No normalisation: returns its input (the layer-norm ablation). Has no parameters."""

    def forward(self, x: Tensor) -> Tensor:
        return x
