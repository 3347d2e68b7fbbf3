"""The trainer's text for people: the start lines before the first step, the next steps at the end,
and the line for running out of memory."""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import torch

import modulm
from modulm import rundir

if TYPE_CHECKING:
    from modulm.trainer import Trainer


def start_lines(trainer: "Trainer", resume_path: Path | None) -> list[str]:
    """The lines a run logs before its first step: device, precision, data, model, batch, run directory."""
    tokens_per_step = trainer.global_batch * trainer.context_length
    lines = [f"Starting Transformer Language Model Training (modulm {modulm.__version__})",
             f"Using device: {trainer.device} | dtype: {trainer.runtime.dtype} | compile: {trainer.system.compile}",
             *trainer.runtime.lines]
    if trainer.dist.enabled:
        lines.append(f"Distributed: {trainer.dist.world_size} processes ({trainer.dist.backend}), {trainer.strategy.describe()}; "
                     "rank 0 writes the run directory")
    lines.append(trainer.strategy.memory(trainer.model, trainer.optimizer).line(trainer.strategy.name, trainer.dist.world_size))
    lines += list(trainer.data.describe()) if hasattr(trainer.data, "describe") else []
    per_step = (f"{trainer.training.batch_size} sequences" if not trainer.dist.enabled else
                f"{trainer.training.batch_size} sequences per process x {trainer.dist.world_size} processes")
    lines += [parameters_line(trainer.model),
              f"Batch: {per_step} x {trainer.context_length} tokens = {tokens_per_step:,} "
              f"tokens per step (global batch = {trainer.global_batch}, grad_accum_steps = {trainer.training.grad_accum_steps})",
              f"Run directory: {trainer.run_dir}"]
    if resume_path is not None:
        lines.append(f"Resuming from {resume_path} at iteration {trainer.iteration}")
    lines += getattr(trainer, "_notes", [])
    if trainer.system.compile:
        lines.append("torch.compile: the first step (and the first evaluation) compiles the model; "
                     "expect a pause of tens of seconds before the first log line")
    lines.append("Starting training loop")
    return lines


def parameters_line(model: torch.nn.Module) -> str:
    """Parameter counts as ``modulm info`` gives them, when the model offers its own accounting."""
    accounting = getattr(model, "accounting", None)
    total = sum(p.numel() for p in model.parameters())
    if not callable(accounting):
        return f"Model initialized with {total:,} trainable parameters"
    params = accounting()["params"]
    return (f"Model initialized with {params['total']:,} trainable parameters ({params['non_embedding']:,} "
            "non-embedding: without the token embedding and LM head, as modulm info counts)")


def next_steps(run_dir: Path, prompt: str) -> list[str]:
    """Where the run's outputs are and the commands that use them."""
    have = [name for name in (rundir.FINAL, rundir.BEST, rundir.RECIPE, "training.log", "metrics.jsonl")
            if (run_dir / name).exists()]
    have += [rundir.TOKENIZER + "/"] if (run_dir / rundir.TOKENIZER).is_dir() else []
    final = shlex.quote(str(run_dir / rundir.FINAL))
    lines = [f"Outputs in {run_dir}: {', '.join(have)}", "Next:",
             f"  modulm generate {final} --prompt {shlex.quote(prompt or 'Once upon a time')}"]
    if (run_dir / "metrics.jsonl").exists():
        lines.append(f"  modulm plot {shlex.quote(str(run_dir))} --out {shlex.quote(str(run_dir / 'loss.png'))}")
    lines.append(f"  modulm export {final} {shlex.quote(str(run_dir / 'export'))}")
    return lines


def out_of_memory_line(trainer: "Trainer", exc: BaseException) -> str:
    """The error line for an allocation that failed during a run: where, how much, and the settings that shrink it."""
    from modulm.errors import allocation_size
    from modulm.runtime import device_memory

    asked = allocation_size(exc)
    what = f"could not allocate {asked}" if asked else "an allocation failed"
    accum, micro = trainer.training.grad_accum_steps, trainer.micro_batch
    factor = _smallest_factor(micro)  # the next finer split of each micro-batch
    fixes = ([f"training.grad_accum_steps={accum * factor} (micro-batches of {micro // factor}; the same training)"]
             if factor else [])
    fixes.append("a smaller training.batch_size or model.context_length")
    return (f"out of memory at iteration {trainer.iteration} ({trainer.doing}): {what} on {device_memory(trainer.device)}; "
            f"a micro-batch is {trainer.micro_batch} x {trainer.context_length} tokens. Try {', or '.join(fixes)} "
            "(docs/troubleshooting.md#out-of-memory)")


def _smallest_factor(n: int, search: int = 1 << 20) -> int | None:
    """The smallest factor of ``n`` above 1 (``n`` itself where none is found up to ``search``);
    None for 1."""
    if n < 2:
        return None
    return next((f for f in range(2, min(math.isqrt(n), search) + 1) if n % f == 0), n)
