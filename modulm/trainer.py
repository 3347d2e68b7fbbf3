"""The training loop: one linear read from the first step to the final sample.

:class:`Trainer` takes an :class:`~modulm.assemble.Assembly` (live components plus settings) and
runs it: resume if asked, then per step — learning rate from the schedule, forward and backward over
``grad_accum_steps`` micro-batches, gradient clipping, optimizer step — with logging, periodic
evaluation and checkpoints at their intervals, and at the end a final checkpoint, a full
evaluation and a generated sample. It reads no TOML and no global state.

Under torchrun the same loop runs on every rank (:mod:`modulm.distributed`): the model is wrapped
in DistributedDataParallel, each rank reads its rows of the global batch, the logged loss and the
evaluation are reduced over the ranks, the ranks agree on when to stop, and rank 0 alone writes
the run directory.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import modulm
from modulm import distributed, preflight, rundir, runlines, runlock
from modulm.checkpoint import rng_state, set_rng_state, unwrap
from modulm.errors import ModulmError, OutOfMemory, is_out_of_memory
from modulm.evaluate import EvalResult, evaluate, full_windows, model_loss, sampled_windows
from modulm.fileio import atomic_directory, atomic_write_text
from modulm.functional.grad import clip_gradients
from modulm.kinds import takes_targets
from modulm.runtime import autocast, configure, grad_scaler, resolve_device
from modulm.strategy import strategy
from modulm.tomlwrite import dumps

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class TrainingDiverged(ModulmError):
    """The loss became NaN or infinite."""


@dataclass
class RunResult:
    iterations: int
    train_losses: dict[int, float] = field(default_factory=dict)  # step -> loss, at every step
    final_eval: EvalResult | None = None
    sample: str = ""
    interrupted: bool = False
    run_dir: Path | None = None
    stop_signal: str | None = None  # "SIGINT"/"SIGTERM" when a signal stopped the run (exit 130/143)
    complete: bool = False  # the run was already complete: nothing was done


class Trainer:
    """Runs an assembled recipe. ``run(stop_at=N)`` stops after iteration N (the schedule still
    spans ``max_iterations``), which is how a run is split in two to test exact resume."""

    def __init__(self, assembly: Any) -> None:
        self.a = assembly
        self.training, self.ckpt = assembly.training, assembly.checkpointing
        self.logging, self.system = assembly.logging, assembly.system
        self.dist = distributed.setup(getattr(assembly, "distributed", None), self.system.device)
        self.device = distributed.device_for(resolve_device(self.system.device), self.dist)
        self.runtime = configure(self.system, self.device)  # dtype "auto" resolved, threads and TF32 set
        self.model = unwrap(assembly.model).to(self.device)
        self.strategy = strategy(getattr(assembly, "distributed", None), self.system)  # ddp or fsdp
        trained = self.strategy.wrap(self.model)
        self.forward = torch.compile(trained) if self.system.compile else trained
        self._loss_in_forward = takes_targets(self.model)
        self.optimizer, self.schedule = assembly.optimizer, assembly.schedule
        self.data = self.dist.shard_data(assembly.data)
        self.context_length = int(self.model.context_length)
        if self.training.batch_size % self.training.grad_accum_steps:
            raise ModulmError(f"training.batch_size {self.training.batch_size} is not divisible by "
                              f"training.grad_accum_steps {self.training.grad_accum_steps}")
        self.micro_batch = self.training.batch_size // self.training.grad_accum_steps  # per process
        self.global_batch = self.training.batch_size * self.dist.world_size
        self.scaler = grad_scaler(self.device, self.runtime.dtype)
        self.iteration, self.best_val_loss, self.elapsed, self.tokens_seen = 0, math.inf, 0.0, 0
        self.loggers: list[Any] = []
        self._stop_signal: str | None = None
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []  # steps not yet read back
        self.doing = "starting"  # what the run is doing, for an out-of-memory message

    # -- set-up -------------------------------------------------------------------------------
    def _autocast(self):
        return autocast(self.device, self.runtime.dtype)

    def _log(self, **event: Any) -> None:
        for logger in self.loggers:
            logger.log(event)

    def _start(self) -> tuple[Path | None, bool]:
        """Preflight (:mod:`modulm.preflight`), then the run directory and the loggers.

        Nothing is written until every check passed: the data, the run directory, the checkpoint to
        resume (its tensors and recipe), the components' needs. Returns the checkpoint resumed and
        whether the run is already complete (then nothing is written at all).
        """
        preflight.check_components({"loggers": self.a.logger_builders})
        plan = self.dist.on_main(lambda: rundir.plan(self.ckpt))
        self.run_dir, resume_path = plan.run_dir, plan.resume
        self._notes = [plan.note] if plan.note else []
        if resume_path is not None:
            if self.dist.enabled and not resume_path.exists():
                raise ModulmError(f"rank {self.dist.rank} cannot read {resume_path}: a multi-node run needs "
                                  "checkpointing.checkpoint_dir on a filesystem every node shares")
            state = self.strategy.read(resume_path)
            self._notes += preflight.check_resume(state, resume_path, self.model, self.a.resolved)
            self._resume(state, resume_path)
            if self.iteration >= self.training.max_iterations:
                return resume_path, True
        if hasattr(self.data, "validate"):  # the last check: a source may cache its scans once it passes
            self.data.validate(self.context_length)
        self.runtime.choose_cpu_matmul()  # after the checks: "auto" may time both libraries (once per machine)
        self.dist.on_main(lambda: self._prepare_run_dir(plan))
        if self.dist.is_main:
            self.loggers = [build(run_dir=self.run_dir) for build in self.a.logger_builders]
        return resume_path, False

    def _prepare_run_dir(self, plan: rundir.RunPlan) -> None:
        run_dir, resume_path = rundir.prepare(plan)
        recipe = run_dir / rundir.RECIPE
        if resume_path is not None and recipe.is_file():  # recipe.toml describes the checkpoints: keep the old one
            try:
                before = tomllib.loads(recipe.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
                before = None
            if before is None or preflight.recipe_changes(before, self.a.resolved):
                kept = rundir.keep_recipe_history(run_dir, self.iteration)
                self._notes.append(f"the recipe used up to iteration {self.iteration} is kept as {kept}")
        self._write(recipe, lambda: atomic_write_text(recipe, dumps(self.a.resolved)))
        tokenizer = getattr(self.data, "tokenizer", None)
        if tokenizer is not None and hasattr(tokenizer, "save") and not (run_dir / rundir.TOKENIZER).exists():
            self._write(run_dir / rundir.TOKENIZER, lambda: atomic_directory(run_dir / rundir.TOKENIZER, tokenizer.save))

    @staticmethod
    def _write(path: Path, write: Any, what: str = "write") -> None:
        """Run ``write()``; a failing disk (full, permission, I/O error) becomes one line naming ``path``."""
        try:
            write()
        except OSError as exc:
            raise ModulmError(f"{exc.filename or path}: cannot {what}: {exc.strerror or exc}") from None

    # -- checkpoints --------------------------------------------------------------------------
    def _save(self, path: Path, loss: float | None = None) -> Path:
        """Under torchrun every rank calls this (its sampler and RNG states are gathered); the strategy
        writes ``path`` (rank 0) or a sharded directory in its place (every rank), and returns it.

        ``meta.loss`` is always the training loss of the last optimizer step before the save (the mean
        over its micro-batches and ranks; None before the first step of this process): ``loss`` when
        given, else looked up. A failing write stops the run with one line naming the file and the
        cause; the previous checkpoints stay as they were and no partial file is left.
        """
        self.doing = "saving a checkpoint"
        if loss is None:
            loss = self._last_loss()
        per_rank = {}
        if self.dist.enabled:
            data_states, rngs = zip(*self.dist.gather((self.data.state_dict(), rng_state())))
            per_rank = {"distributed": {"world_size": self.dist.world_size, "data": list(data_states), "rng": list(rngs)}}
        meta = {"loss": loss, "lr": self.schedule(max(self.iteration - 1, 0)), "elapsed": self.elapsed,
                "tokens_seen": self.tokens_seen, "vocab_size": int(self.model.vocab_size),
                "modulm": modulm.__version__, "torch": str(torch.__version__), "saved_at": time.time()}
        saved: list[Path] = []
        self._write(path, lambda: saved.append(self.strategy.save(
            path, self.model, self.optimizer, self.iteration, **per_rank,
            data=self.data.state_dict(), rng=rng_state(), scaler=self.scaler.state_dict(),
            best_val_loss=self.best_val_loss, recipe=self.a.resolved, meta=meta)), "save the checkpoint")
        return saved[0]

    def _last_loss(self) -> float | None:
        result = getattr(self, "_result", None)
        return result.train_losses.get(self.iteration - 1) if result is not None else None

    def _resume(self, state: dict[str, Any], path: Path) -> None:
        """Restore every stateful part from a checkpoint already read (and its shapes checked)."""
        try:
            self.strategy.restore(state, path, self.model, self.optimizer)
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise ModulmError(f"{path}: its optimizer state does not fit this recipe's optimizer ({exc}); "
                              "resume with the optimizer it was trained with, or start afresh (--overwrite)") from None
        self.iteration = int(state["iteration"])
        if "data" in state:
            self.data.load_state_dict(self.dist.own_state(state, "data"))
        if "rng" in state:
            set_rng_state(self.dist.own_state(state, "rng"))
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.best_val_loss = float(state.get("best_val_loss", math.inf))
        meta = state.get("meta", {})
        self.elapsed, self.tokens_seen = float(meta.get("elapsed", 0.0)), int(meta.get("tokens_seen", 0))

    # -- evaluation ---------------------------------------------------------------------------
    def _evaluate(self, full: bool) -> EvalResult | None:
        self.doing = "evaluation"
        if "val" not in getattr(self.data, "splits", ()):
            return None
        tokens = self.data.tokens("val")
        batch = self.micro_batch * self.dist.world_size  # the windows one process would see; each rank takes its rows
        windows = (full_windows(tokens, batch, self.context_length) if full else
                   sampled_windows(tokens, self.logging.eval_iters, batch, self.context_length))
        result = evaluate(self.forward, self.dist.shard_rows(windows, keep_empty=self.strategy.collective_forward), self.device, self._autocast,
                          self.data.bytes_per_token("val"))
        result = self.dist.reduce_eval(result)
        self._log(event="eval", step=self.iteration, val_loss=result.loss, val_perplexity=result.perplexity,
                  val_bpb=result.bits_per_byte, eval_time=result.seconds, eval_tokens=result.tokens,
                  scope="full" if full else "sampled", split_size=len(tokens) if full else None,
                  tokens=self.tokens_seen, elapsed=self.elapsed)
        if result.loss < self.best_val_loss:
            self.best_val_loss = result.loss
            self._save(self.run_dir / rundir.BEST)
        return result

    # -- one optimizer step -------------------------------------------------------------------
    def _step(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step. Returns the loss and the pre-clipping gradient norm (None without
        clipping) as device tensors: reading them would make the host wait for the device, so the
        loop reads them back only at log, evaluation and checkpoint boundaries."""
        lr = self.schedule(self.iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for micro_step in range(self.training.grad_accum_steps):
            inputs, targets = self.data.get_batch("train", self.micro_batch, self.context_length, self.device)
            with self.strategy.no_sync(last_micro_step=micro_step == self.training.grad_accum_steps - 1):
                loss = model_loss(self.forward, inputs, targets, self._autocast, self._loss_in_forward)
                loss = loss / self.training.grad_accum_steps
                self.scaler.scale(loss).backward()
            total += loss.detach()
        self.scaler.unscale_(self.optimizer)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        norm = clip_gradients(params, self.training.grad_clip) if self.training.grad_clip > 0 else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total, norm

    def _read_back(self, result: RunResult) -> tuple[float, float | None]:
        """Read the losses of the steps since the last boundary in one host sync (averaged over the
        ranks in one collective), record them, and stop at the first non-finite one, so a divergence
        is noticed within ``log_interval`` steps. Returns the last step's loss and gradient norm."""
        steps, losses, norms = zip(*self._pending)
        self._pending.clear()
        values = torch.stack([loss.float() for loss in losses])
        if norms[-1] is not None:
            values = torch.cat([values, norms[-1].float().reshape(1).to(values.device)])
        values = values.tolist()
        last_norm = values.pop() if norms[-1] is not None else None
        values = self.dist.mean_all(values)
        for step, loss in zip(steps, values):
            if not math.isfinite(loss):
                raise self._diverged(f"loss became {loss} at iteration {step}")
            result.train_losses[step] = loss
        return values[-1], last_norm

    def _check_finite_model(self) -> None:
        """Before a checkpoint is written: an update that went non-finite is never saved. (Each rank
        checks the parameters it holds, its shards under fsdp, and the ranks agree.)"""
        held = [p.to_local() if hasattr(p, "to_local") else p for p in self.model.parameters()]
        finite = not held or bool(torch.stack([t.detach().isfinite().all() for t in held]).all())
        if self.dist.any(not finite):
            raise self._diverged(f"the parameters became non-finite by iteration {self.iteration}")

    def _diverged(self, what: str) -> TrainingDiverged:
        periodic = rundir.periodic_checkpoints(self.run_dir)
        kept = f"the last good checkpoint is {periodic[-1][1]}" if periodic else "no checkpoint was written yet"
        return TrainingDiverged(
            f"{what}; {kept} (losses are read every logging.log_interval steps; training ran to iteration "
            f"{self.iteration}). Try a lower optimizer.lr, more schedule.warmup_iters, a smaller "
            "training.grad_clip, or check the data")

    # -- the run ------------------------------------------------------------------------------
    def run(self, stop_at: int | None = None) -> RunResult:
        resume_path, complete = self._start()
        result = self._result = RunResult(self.iteration, run_dir=self.run_dir)
        if complete:  # nothing is evaluated, written or logged again
            result.complete = True
            if self.dist.is_main:
                print(preflight.complete_message(self.run_dir, self.iteration, self.training.max_iterations, resume_path))
            return result
        self._log(event="start", lines=runlines.start_lines(self, resume_path), step=self.iteration)
        if self.runtime.precision.warning:
            self._log(event="message", level="WARNING", text=self.runtime.precision.warning)
        last_stop = self.training.max_iterations if stop_at is None else min(stop_at, self.training.max_iterations)
        tokens_per_step = self.global_batch * self.context_length
        previous = {signal.SIGINT: signal.getsignal(signal.SIGINT), signal.SIGTERM: signal.getsignal(signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, self._on_signal)
        try:
            self.model.train()
            window_start, window_steps, boundary = time.perf_counter(), 0, True
            while self.iteration < last_stop and not self._stop_requested(boundary):
                step, step_start = self.iteration, time.perf_counter()
                self.doing = "a training step"
                self._pending.append((step, *self._step()))
                self.iteration += 1
                self.tokens_seen += tokens_per_step
                window_steps += 1
                log = step % self.logging.log_interval == 0 or self.iteration == last_stop
                evaluate = bool(self.logging.eval_interval) and self.iteration % self.logging.eval_interval == 0 \
                    and self.iteration < self.training.max_iterations
                save = bool(self.ckpt.checkpoint_interval) and self.iteration % self.ckpt.checkpoint_interval == 0
                boundary = log or evaluate or save
                if boundary:  # the only host syncs of the loop
                    loss, grad_norm = self._read_back(result)
                self.elapsed += time.perf_counter() - step_start  # on a GPU the device's time lands at boundaries
                if log:
                    seconds = time.perf_counter() - window_start
                    self._log(event="train", step=step, max_steps=self.training.max_iterations, loss=loss,
                              lr=self.schedule(step), grad_norm=grad_norm, step_time=seconds / window_steps,
                              tokens_per_sec=tokens_per_step * window_steps / seconds, tokens=self.tokens_seen,
                              elapsed=self.elapsed)
                    window_start, window_steps = time.perf_counter(), 0
                if evaluate:
                    self._evaluate(full=False)
                    window_start, window_steps = time.perf_counter(), 0  # evaluation time is not training time
                if save:
                    self._check_finite_model()
                    self._save(self.run_dir / f"checkpoint_{self.iteration}.pt", loss)
                    if self.dist.is_main:
                        rundir.prune(self.run_dir, self.ckpt.keep_last)
            if self._pending:  # stopped by a signal between boundaries
                self._read_back(result)
            self._check_finite_model()
            result.iterations = self.iteration
            stopped = self._stop_requested()
            if stopped or self.iteration < self.training.max_iterations:
                result.interrupted = stopped
                result.stop_signal = self._stop_signal or ("SIGTERM" if stopped else None)
                saved = self._save(self.run_dir / f"checkpoint_{self.iteration}.pt", result.train_losses.get(self.iteration - 1))
                signal_name = self._stop_signal or "a stop signal on another rank"
                why = f"received {signal_name}" if stopped else f"stopped at iteration {self.iteration}"
                self._log(event="message", text=f"{why}; saved {saved.name}; run the same "
                          "command again to resume")
                return result
            self._save(self.run_dir / rundir.FINAL, result.train_losses.get(self.iteration - 1))
            result.final_eval = self._evaluate(full=self.logging.final_eval == "full")
            # under fsdp every forward gathers parameters, so every rank decodes (the same tokens)
            result.sample = self._sample() if self.dist.is_main or self.strategy.collective_forward else ""
            self._log(event="end", lines=[f"Training complete: {self.iteration} iterations in {self.elapsed:.1f}s "
                                          f"({self.tokens_seen:,} tokens)", *runlines.next_steps(self.run_dir, self.a.generation.prompt)], step=self.iteration)
            return result
        except ModulmError as exc:  # divergence, a failing save: in training.log too, not only on stderr
            self._log_error(str(exc))
            raise
        except OSError as exc:  # a log or metrics file on a full or failing disk
            message = f"{exc.filename or self.run_dir}: cannot write: {exc.strerror or exc}"
            self._log_error(message)
            raise ModulmError(message) from None
        except (MemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            message = runlines.out_of_memory_line(self, exc)
            self._log_error(message)
            raise OutOfMemory(message) from None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for logger in self.loggers:
                with contextlib.suppress(OSError):  # a full disk was reported above
                    logger.close()
            runlock.release(self.run_dir)  # taken when the run directory was prepared; all is written

    def _log_error(self, text: str) -> None:
        with contextlib.suppress(OSError):  # the log itself may be what cannot be written
            self._log(event="error", level="ERROR", text=text)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop_signal = signal.Signals(signum).name

    def _stop_requested(self, boundary: bool = True) -> bool:
        """Whether to stop now; under torchrun all ranks agree (a signal may reach only some), which
        takes a collective, so they ask only after a log, evaluation or checkpoint boundary."""
        if self.dist.enabled and not boundary:
            return False
        return self.dist.any(self._stop_signal is not None)

    def _sample(self) -> str:
        from modulm.sampling import generate

        self.doing = "sampling"
        gen = self.a.generation
        tokenizer = getattr(self.data, "tokenizer", None)
        if tokenizer is None or gen.max_tokens <= 0:
            return ""
        with self._autocast():
            text = "".join(generate(self.model, tokenizer, gen.prompt, gen.max_tokens, temperature=gen.temperature,
                                    top_p=gen.top_p, seed=self.system.seed))
        self._log(event="message", text=f"Sample:\n{gen.prompt}{text}")
        return text
