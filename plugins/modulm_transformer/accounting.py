"""Resource accounting of a built model: parameters, forward FLOPs and training-state memory.

Follows the CS336 handout's transformer accounting: only matrix multiplies count, an ``(m, n) @
(n, p)`` product costs ``2mnp`` FLOPs, attention scores cost ``QKᵀ`` plus ``softmax·V`` over the
full ``T x T`` square (no causal discount), and a training step costs 3x the forward pass
(backward = 2x forward). Big models can be accounted without allocating memory by building them
on the meta device: ``with torch.device("meta"): model = TransformerLM(...)``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import nn

from modulm.errors import human_bytes
from modulm_transformer.layers import Linear

#: Block child name -> reported component.
_PART_NAMES = {"attn": "attention", "ffn": "ffn", "ln1": "norm", "ln2": "norm"}
FLOP_PARTS = ("attention_projections", "attention_scores", "ffn", "lm_head", "other")


def _component_of(param_name: str) -> str:
    parts = param_name.split(".")
    if parts[0] == "token_embeddings":
        return "embedding"
    if parts[0] == "lm_head":
        return "lm_head"
    if parts[0] == "ln_final":
        return "norm"
    if parts[0] == "layers" and len(parts) > 2:
        return _PART_NAMES.get(parts[2], parts[2])
    return parts[0]


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per component plus ``embedding``, ``non_embedding`` and ``total``.

    Shared (tied) parameters count once, under the first name that holds them. ``non_embedding``
    excludes the token embedding and the LM head (both ``vocab_size x d_model``).
    """
    counts: Counter[str] = Counter({"embedding": 0, "attention": 0, "ffn": 0, "norm": 0, "lm_head": 0})
    for name, param in model.named_parameters():
        counts[_component_of(name)] += param.numel()
    total = sum(counts.values())
    return {**counts, "non_embedding": total - counts["embedding"] - counts["lm_head"], "total": total}


def _flop_part(module_name: str) -> str:
    component = _component_of(module_name + ".x")
    return {"attention": "attention_projections", "ffn": "ffn", "lm_head": "lm_head"}.get(component, "other")


def forward_flops_per_token(model: nn.Module, context_length: int) -> dict[str, int]:
    """Forward FLOPs per token at sequence length ``context_length``, by part, plus ``total``.

    Every ``Linear`` (modulm's or torch's) costs ``2 * in * out``; every attention module exposing
    ``num_heads`` and ``head_dim`` adds ``4 * T * num_heads * head_dim`` for its scores.
    """
    flops = dict.fromkeys(FLOP_PARTS, 0)
    for name, module in model.named_modules():
        if isinstance(module, (Linear, nn.Linear)):
            flops[_flop_part(name)] += 2 * module.in_features * module.out_features
        if hasattr(module, "num_heads") and hasattr(module, "head_dim"):
            flops["attention_scores"] += 4 * context_length * module.num_heads * module.head_dim
    flops["total"] = sum(flops.values())
    return flops


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return resolved


def model_accounting(model: nn.Module, batch_size: int = 1, context_length: int | None = None,
                     dtype: torch.dtype | str = torch.float32) -> dict[str, Any]:
    """Parameters, FLOPs and memory of ``model`` for steps of ``batch_size x context_length`` tokens.

    ``context_length`` defaults to ``model.context_length``; ``dtype`` is the dtype the parameters
    (and so gradients and AdamW moments) are stored in. Returns a dict with ``params``,
    ``flops`` (``per_token`` and ``per_step`` forward by part, ``train_per_step`` = 3x forward)
    and ``memory`` (bytes of parameters, gradients, AdamW's two moments and their total).
    """
    context_length = context_length or model.context_length
    params = parameter_counts(model)
    per_token = forward_flops_per_token(model, context_length)
    tokens = batch_size * context_length
    per_step = {part: value * tokens for part, value in per_token.items()}
    dtype = _dtype(dtype)
    width = torch.empty((), dtype=dtype).element_size()
    weights = params["total"] * width
    return {
        "batch_size": batch_size,
        "context_length": context_length,
        "tokens_per_step": tokens,
        "params": params,
        "flops": {"per_token": per_token, "per_step": per_step, "train_per_step": 3 * per_step["total"]},
        "memory": {"dtype": str(dtype).removeprefix("torch."), "bytes_per_value": width, "params": weights,
                   "grads": weights, "adamw_state": 2 * weights, "total": 4 * weights},
    }


def _human(value: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {suffix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def format_accounting(report: dict[str, Any]) -> str:
    """``model_accounting``'s dict as an aligned text table."""
    params, flops, memory = report["params"], report["flops"], report["memory"]
    lines = ["parameters", f"  {'component':<28}{'count':>16}{'share':>8}"]
    for name, count in params.items():
        if name in ("non_embedding", "total") or count:
            share = 100 * count / params["total"] if params["total"] else 0.0
            lines.append(f"  {name:<28}{count:>16,}{share:>7.1f}%")
    lines.append(f"forward FLOPs at batch {report['batch_size']} x context {report['context_length']}"
                 f" ({report['tokens_per_step']:,} tokens per step)")
    lines.append(f"  {'part':<28}{'per token':>16}{'per step':>16}{'share':>8}")
    total = flops["per_token"]["total"]
    for part, value in flops["per_token"].items():
        if part == "total" or value:
            share = 100 * value / total if total else 0.0
            lines.append(f"  {part:<28}{_human(value, 'FLOP'):>16}{_human(flops['per_step'][part], 'FLOP'):>16}{share:>7.1f}%")
    lines.append(f"  {'training step (3x forward)':<28}{'':>16}{_human(flops['train_per_step'], 'FLOP'):>16}")
    lines.append(f"memory in {memory['dtype']} ({memory['bytes_per_value']} bytes per value; activations not included)")
    for part in ("params", "grads", "adamw_state", "total"):
        lines.append(f"  {part:<28}{human_bytes(memory[part]):>16}")
    if memory["bytes_per_value"] < 4:
        lines.append(f"  (under autocast the weights, gradients and AdamW state stay float32: "
                     f"{human_bytes(16 * params['total'])} in all)")
    return "\n".join(lines)
