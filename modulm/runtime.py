"""Device, precision and seeding: the [system] settings turned into torch objects."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import torch

from modulm.errors import ModulmError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; anything else must be available here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModulmError(f"system.device: {name!r} is not a device (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModulmError(f"system.device: {name!r} requested but CUDA is not available on this machine")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModulmError(f"system.device: {name!r} requested but MPS is not available on this machine")
    return device


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass; float32 means none."""
    if dtype == "float32":
        return contextlib.nullcontext()
    if dtype == "float16" and device.type == "cpu":
        raise ModulmError("system.dtype: float16 autocast is not supported on the CPU; use bfloat16")
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def grad_scaler(device: torch.device, dtype: str) -> Any:
    """A gradient scaler for float16 on CUDA (bfloat16 and float32 need none)."""
    enabled = dtype == "float16" and device.type == "cuda"
    return torch.amp.GradScaler(device.type, enabled=enabled)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
