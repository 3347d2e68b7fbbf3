"""Turning run events into the training guide's log lines."""

from __future__ import annotations

import time
from typing import Any, Mapping


def _number(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def event_text(event: Mapping[str, Any]) -> list[str]:
    """The human-readable lines for one event (empty for events with nothing to say)."""
    kind = event.get("event")
    if kind == "start":
        return list(event.get("lines", ()))
    if kind == "train":
        width = len(str(event.get("max_steps", "")))
        return [
            f"Iter {event['step']:>{max(width, 6)}}/{event.get('max_steps', '?')} | Loss: {event['loss']:.4f}"
            f" | LR: {event['lr']:.2e} | Grad: {_number(event.get('grad_norm'), '.2f')}"
            f" | Time: {event.get('step_time', 0.0):.3f}s | Tok/s: {event.get('tokens_per_sec', 0.0):.0f}"
        ]
    if kind == "eval":
        parts = [f"Eval {event['step']:>6} | Val loss: {event['val_loss']:.4f}", f"Perplexity: {event['val_perplexity']:.2f}"]
        if event.get("val_bpb") is not None:
            parts.append(f"BPB: {event['val_bpb']:.4f}")
        if event.get("split_size"):
            parts.append(f"{event.get('scope', 'sampled')} over {event['split_size']:,} tokens")
        parts.append(f"Eval time: {event.get('eval_time', 0.0):.2f}s")
        return [" | ".join(parts)]
    if kind in ("message", "error"):
        return str(event.get("text", "")).splitlines() or [""]
    if kind == "end":
        return list(event.get("lines", ()))
    return []


def stamped(line: str, level: str = "INFO") -> str:
    return f"{time.strftime('%Y-%m-%d %H:%M:%S')} - {level} - {line}"
