"""Preflight: everything ``modulm run`` checks before it writes anything.

A run that fails preflight leaves the file system exactly as it was. The checks, in order:

* the recipe (:func:`modulm.recipe.validate`);
* the training state's memory (:func:`check_training_memory`): parameters, gradients and optimizer
  state of the model built on the meta device, one micro-batch of token ids and the activations
  its forward pass keeps (sized on fake tensors, :mod:`modulm.activations`), against the device's
  memory;
* the run directory (:func:`modulm.rundir.plan`): not an empty string, not under a file, creatable
  and writable (probed with a file removed at once), and what starting there means; its disk's
  free space for a checkpoint (refused) and for all the run may keep (a warning,
  :mod:`modulm.storage`);
* the checkpoint to resume (:func:`modulm.checkpoint.read_checkpoint`): readable, a modulm
  checkpoint, tensors of the shapes this recipe builds. A recipe that differs from the one stored in
  the checkpoint is named key by key: refused when the model's tensors no longer fit, a one-line
  notice otherwise (:func:`check_resume`);
* what components need from the environment: a component factory may define
  ``preflight(params) -> list[str]`` (for example a logger whose optional package is missing);
* the data (its source's ``validate(context_length)``: long enough for one window; the sources
  check existence, dtype, shape and ids when they open their files).

:func:`before_build` runs the checks that need no built part, so that ``modulm run`` fails (or
finds the run already complete) before a data source spends time or cache space.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from modulm.errors import ModulmError, RecipeError

#: Recipe keys that say how to start, not what the run is: never a change of recipe.
START_KEYS = ("checkpointing.resume", "checkpointing.resume_from", "checkpointing.overwrite")


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key} {_short(self.old)} -> {_short(self.new)}"


def _short(value: Any) -> str:
    text = "(unset)" if value is _UNSET else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_UNSET = object()


def _flatten(table: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted keys and values; None is left out (TOML has no null) and tuples compare as lists."""
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, dotted + ".")
        elif value is not None:
            yield dotted, _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    return value


def recipe_changes(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[Change]:
    """The keys whose values differ between two resolved recipes (start-only keys ignored)."""
    old, new = dict(_flatten(stored)), dict(_flatten(current))
    keys = list(new) + [k for k in old if k not in new]
    return [Change(k, old.get(k, _UNSET), new.get(k, _UNSET)) for k in keys
            if k not in START_KEYS and old.get(k, _UNSET) != new.get(k, _UNSET)]


def _shape_keys(changes: list[Change]) -> list[Change]:
    """The changes that can change the model's tensors: the model table and the data's vocabulary."""
    picked = [c for c in changes if c.key.startswith("model.") or c.key.startswith("data.")]
    return picked or changes


def check_resume(state: Mapping[str, Any], path: Path | str, model: Any, resolved: Mapping[str, Any]) -> list[str]:
    """Refuse a checkpoint whose tensors do not fit ``model``; return notices for other recipe changes."""
    from modulm.checkpoint import check_model_state

    changes = recipe_changes(state.get("recipe") or {}, resolved) if state.get("recipe") else []
    try:
        check_model_state(state["model"], model, path)
    except ModulmError as exc:
        named = _shape_keys(changes)
        why = f"; the recipe changed {', '.join(map(str, named[:4]))}" if named else ""
        raise ModulmError(f"{exc}{why}; resume with the recipe it was trained with, or start afresh "
                          "(modulm run --overwrite, or another checkpointing.checkpoint_dir)") from None
    if not changes:
        return []
    shown = ", ".join(map(str, changes[:6])) + (f" (+{len(changes) - 6} more)" if len(changes) > 6 else "")
    return [f"note: resuming {path} with a changed recipe: {shown}"]


def component_problems(bound: Mapping[str, Any]) -> list[str]:
    """What each bound component's ``preflight(params)`` hook reports (missing optional packages, ...)."""
    from modulm.assemble import ComponentBuilder

    problems: list[str] = []

    def visit(value: Any, where: str) -> None:
        if isinstance(value, ComponentBuilder):
            hook = getattr(value.component.factory, "preflight", None)
            if callable(hook):
                found = hook(dict(value.params)) or []
                source = f"[{value.kind} {value.name!r} from plugin {value.component.plugin!r}]"
                problems.extend(f"{where}: {p} {source}" for p in found)
            for key, param in value.params.items():
                visit(param, f"{where}.{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(item, f"{where}.{i}")

    for key, value in bound.items():
        visit(value, key)
    return problems


def check_components(bound: Mapping[str, Any]) -> None:
    problems = component_problems(bound)
    if problems:
        raise RecipeError(problems)


def recipe_vocab_size(resolved: Mapping[str, Any]) -> int | None:
    """The vocabulary size a recipe implies without building its data: data.vocab_size or data.tokenizer.vocab_size."""
    data = resolved.get("data", {})
    tokenizer = data.get("tokenizer")
    if isinstance(data.get("vocab_size"), int):
        return data["vocab_size"]
    if isinstance(tokenizer, Mapping) and isinstance(tokenizer.get("vocab_size"), int):
        return tokenizer["vocab_size"]
    return None


@dataclass(frozen=True)
class Preflight:
    """The outcome of :func:`before_build`: the plan, and whether the run is already complete."""

    plan: Any
    iteration: int = 0
    complete: bool = False
    warnings: tuple[str, ...] = ()


def complete_message(run_dir: Path, iteration: int, max_iterations: int, resume: Path | None = None) -> str:
    """What ``modulm run`` says when the checkpoint it would resume already reached the end."""
    what = f"run {run_dir} is complete" if resume is None or Path(resume).parent == Path(run_dir) \
        else f"checkpoint {resume} already reached the end"
    return (f"{what} ({iteration} of training.max_iterations = {max_iterations}); nothing to do. "
            f"Extend it with training.max_iterations=N, or start afresh with --overwrite")


def meta_model(bound: Mapping[str, Any], vocab_size: Any) -> Any:
    """The recipe's model built on the meta device (no memory), or None where the vocabulary size
    is unknown or the model cannot be built there (the trainer's checks then run on the real one)."""
    import torch

    if not isinstance(vocab_size, int):
        return None
    try:
        with torch.device("meta"):
            return bound["model"](vocab_size=vocab_size)
    except ModulmError:
        raise
    except Exception:
        return None


def activation_floor(bound: Mapping[str, Any], vocab_size: Any, device: Any = None, spent_model: Any = None) -> int | None:
    """Bytes one micro-batch's forward pass keeps for the backward pass, at least
    (:func:`modulm.activations.saved_activation_bytes`), on the recipe's device (or ``device``) and
    dtype; None where it cannot be sized (unknown vocabulary, a model that fake tensors cannot
    run, ``system.compile``). It uses up a meta model: ``spent_model``, one the caller is done
    with, or a fresh one."""
    from modulm.activations import saved_activation_bytes
    from modulm.runtime import autocast, resolve_device, resolve_precision
    from modulm.strategy import micro_batch_token_bytes

    system = bound["system"]
    model = spent_model if spent_model is not None else meta_model(bound, vocab_size)
    if model is None or system.compile:
        return None
    device = resolve_device(system.device) if device is None else device
    try:
        dtype = resolve_precision(device, system.dtype).dtype
    except ModulmError:  # float16 on a CPU: refused where the run resolves its precision
        return None
    micro_batch, _ = micro_batch_token_bytes(bound["training"], 0)
    return saved_activation_bytes(model, micro_batch, getattr(model, "context_length", 0) or 0, device,
                                  lambda: autocast(device, dtype))


#: A step's peak over the activations kept for backward, as measured (the base recipe's model at batch
#: 128: 1.2x in float32, 1.5x in bfloat16): past the memory at this, a run is warned it may not fit.
PEAK_OVER_KEPT = 1.5


def check_training_memory(bound: Mapping[str, Any], model: Any, nproc: int = 1,
                          activations: int | None = None) -> list[str]:
    """Refuse a run whose training state, the parameters, their gradients and the optimizer's state
    where it can be sized on the meta device (what ``modulm info`` prints), plus one micro-batch of
    int64 token ids (inputs and targets, as every data source returns them) and the
    ``activations`` its forward pass keeps at least (:func:`activation_floor`; None: not counted),
    is more than its device's memory: RAM and swap for a CPU (times the processes the run starts
    on it), the GPU's memory on CUDA. Every part is a floor (a step's temporaries come on top), so
    a run that passes can still run out of memory; one that fails cannot fit. Returns a warning
    where the activations at :data:`PEAK_OVER_KEPT` times their floor would not fit."""
    import os

    from modulm.errors import OutOfMemory, human_bytes
    from modulm.runtime import device_memory, device_memory_bytes, resolve_device
    from modulm.strategy import micro_batch_token_bytes, training_state_memory

    device = resolve_device(bound["system"].device)
    limit = device_memory_bytes(device)
    if limit is None:
        return []
    world = nproc if nproc > 1 else int(os.environ.get("WORLD_SIZE", "1"))
    local = nproc if nproc > 1 else int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    sharded = world > 1 and getattr(bound.get("distributed"), "strategy", None) == "fsdp"
    use = training_state_memory(model, bound["optimizer"], sharded, world)
    context = getattr(model, "context_length", 0) or 0
    micro_batch, ids = micro_batch_token_bytes(bound["training"], context)
    kept = activations or 0
    processes = local if device.type == "cpu" else 1  # a CPU's processes share its memory
    needed = (use.total + ids + kept) * processes
    if needed <= limit:
        likely = round((use.total + ids + kept * PEAK_OVER_KEPT) * processes)
        if likely <= limit:
            return []
        return [f"training.batch_size: a step needs at least {human_bytes(needed)} (the model's {human_bytes(use.total)}, "
                f"a micro-batch's token ids and {human_bytes(kept)} of activations kept for the backward pass{per_text(processes)}), "
                f"and a step's temporaries add up to half as much again (measured: 1.2-1.5x the kept activations): up to "
                f"about {human_bytes(likely)}, more than {device_memory(device)}. If it runs out of memory, split the "
                "batch with training.grad_accum_steps"]
    per = per_text(processes)
    if ids + kept > use.total:  # the batch, not the model, is what cannot fit
        batch = ids + kept
        room = limit // processes - use.total
        fit = room * micro_batch // batch if room > 0 else 0
        advice = (f" (at most about {fit} sequences of {context} tokens fit in a micro-batch); make training.batch_size "
                  "smaller, split it with training.grad_accum_steps, or shorten model.context_length" if fit else
                  f", and not even one sequence of {context} tokens fits; shorten model.context_length")
        if kept:
            what = (f"tokens needs at least {human_bytes(batch)} ({human_bytes(ids)} of token ids, int64 inputs and "
                    f"targets, + {human_bytes(kept)} of activations kept for the backward pass){per}, on top of")
        else:
            what = f"token ids (inputs and targets, int64) takes {human_bytes(ids)}{per}, before"
        raise OutOfMemory(
            f"training.batch_size: one micro-batch of {micro_batch} x {context} {what} the model's "
            f"{human_bytes(use.total)}: more than {device_memory(device)}{advice}")
    shard = ", or shard it over more GPUs with distributed.strategy = \"fsdp\"" if device.type == "cuda" else ""
    kept_part = f" + activations {human_bytes(kept)}" if kept else ""
    smaller = "model.d_model, model.num_layers, the vocabulary size"
    if use.buffers > use.parameters:  # tables built up to the context length (RoPE's)
        smaller = f"model.context_length, whose buffers take {human_bytes(use.buffers)}; {smaller}"
    raise OutOfMemory(
        f"model: training it needs {'at least ' if kept else ''}{human_bytes(needed)}"
        f"{'' if kept else ' before any activation'} ({use.parts()} + a micro-batch's token ids "
        f"{human_bytes(ids)}{kept_part}{per}), more than {device_memory(device)}; make it smaller ({smaller}){shard}. "
        "modulm info RECIPE prints these numbers")


def per_text(processes: int) -> str:
    return f" per process x {processes} processes" if processes > 1 else ""


def process_warnings(bound: Mapping[str, Any], nproc: int) -> list[str]:
    """A note where ``--nproc`` CPU processes are more than the CPUs this process can keep busy:
    they share them, each step slower than with fewer processes."""
    from modulm.machine import cpu_budget
    from modulm.runtime import resolve_device

    cpus = cpu_budget()
    if nproc <= cpus or resolve_device(bound["system"].device).type != "cpu":
        return []
    return [f"--nproc {nproc}: more processes than the {cpus} CPUs this process can keep busy; they share "
            f"them, one thread each, and a step is slower than with --nproc {cpus} or fewer"]


def disk_warnings(bound: Mapping[str, Any], model: Any, run_dir: Path) -> list[str]:
    """:func:`modulm.storage.check_disk_space` for the checkpoints of ``model`` (on the meta
    device) and the recipe's optimizer: refuses a disk that cannot hold one, warns where it cannot
    hold all the run may keep."""
    from modulm.storage import check_disk_space, kept_periodic
    from modulm.strategy import training_state_memory

    use = training_state_memory(model, bound["optimizer"], False, 1)  # a checkpoint is whole, however sharded
    periodic = kept_periodic(bound["checkpointing"], bound["training"].max_iterations)
    return check_disk_space(run_dir, use.parameters + (use.optimizer or 0), periodic)


def before_build(recipe: Any, registry: Any, nproc: int = 1) -> Preflight:
    """The checks that need no built component: recipe, training-state memory, run directory,
    checkpoint to resume, extras (``nproc``: the processes ``modulm run --nproc`` will start).

    Writes nothing. The model is built on the meta device (no memory) to size its training state
    and to compare the checkpoint's tensor shapes when the recipe tells its vocabulary size; the
    trainer checks the shapes again against the real model.
    """
    from modulm import rundir
    from modulm.assemble import resolved_recipe
    from modulm.recipe import validate
    from modulm.sharded_checkpoint import read_any

    bound = validate(recipe, registry)
    check_components(bound)
    resolved = resolved_recipe(bound)
    vocab_size = recipe_vocab_size(resolved)
    model = meta_model(bound, vocab_size)
    warnings = []
    if model is not None:
        warnings += check_training_memory(bound, model, nproc, activation_floor(bound, vocab_size))
    warnings += process_warnings(bound, nproc)
    chosen = rundir.plan(bound["checkpointing"])
    if model is not None:
        warnings += disk_warnings(bound, model, chosen.run_dir)
    warnings = tuple(warnings)
    if chosen.resume is None:
        return Preflight(chosen, warnings=warnings)
    state = read_any(chosen.resume, mmap=True)  # a file, or a sharded (fsdp) directory
    if model is None:  # the vocabulary may be the checkpoint's
        model = meta_model(bound, (state.get("meta") or {}).get("vocab_size"))
    if model is not None:
        check_resume(state, chosen.resume, model, resolved)
    iteration = int(state["iteration"])
    max_iterations = bound["training"].max_iterations
    return Preflight(chosen, iteration, complete=iteration >= max_iterations, warnings=warnings)
