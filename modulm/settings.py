"""The top level of a recipe: which components a run uses and the trainer's own settings.

Each settings table is a dataclass; its fields are validated like a component's parameters.
``docs/recipes.md`` maps every setting of the training guide to its key here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Mapping

from annotated_types import Ge, Interval, MinLen

from modulm.constraints import checks, problem, warning
from modulm.kinds import nested


def _accumulation_divides_batch(p: Mapping[str, Any]) -> list:
    """batch_size is divisible by grad_accum_steps."""
    if p["batch_size"] % p["grad_accum_steps"]:
        return [problem(f"{p['batch_size']} is not divisible by training.grad_accum_steps ({p['grad_accum_steps']}): "
                        "each optimizer step splits the batch into equal micro-batches", key="batch_size")]
    return []


@checks(_accumulation_divides_batch)
@dataclass
class TrainingSettings:
    """[training]: the optimisation loop.

    batch_size: sequences per optimizer step per process (the global batch is batch_size x processes), split into grad_accum_steps micro-batches
    max_iterations: optimizer steps in the run
    grad_clip: clip gradients to this global L2 norm (0 disables)
    grad_accum_steps: micro-batches accumulated per optimizer step (must divide batch_size)
    """

    batch_size: Annotated[int, Ge(1)] = 32
    max_iterations: Annotated[int, Ge(1)] = 10000
    grad_clip: Annotated[float, Ge(0)] = 1.0
    grad_accum_steps: Annotated[int, Ge(1)] = 1


@dataclass
class CheckpointSettings:
    """[checkpointing]: where the run lives and how it is saved and resumed.

    checkpoint_dir: the run directory (checkpoints, logs, metrics, resolved recipe)
    checkpoint_interval: save checkpoint_{iter}.pt every N iterations (0 disables)
    keep_last: how many periodic checkpoints to keep, at least 1 (to keep every one, set it to max_iterations / checkpoint_interval or more)
    resume: "auto" (resume the run directory's latest checkpoint if any), a checkpoint path, or false
    resume_from: the training guide's name for a checkpoint path to resume from (wins over resume)
    overwrite: start afresh in an existing run directory, deleting its checkpoints
    """

    checkpoint_dir: Annotated[str, MinLen(1)] = "./checkpoints"
    checkpoint_interval: Annotated[int, Ge(0)] = 1000
    keep_last: Annotated[int, Ge(1)] = 3
    resume: Annotated[str, MinLen(1)] | bool = "auto"
    resume_from: Annotated[str, MinLen(1)] | None = None
    overwrite: bool = False


@dataclass
class LoggingSettings:
    """[logging]: how often to log and evaluate.

    log_interval: log training metrics every N iterations
    eval_interval: evaluate on the validation split every N iterations (0 disables)
    eval_iters: batches per periodic evaluation
    final_eval: "full" evaluates the whole validation split in non-overlapping windows at the end; "sampled" uses eval_iters batches
    """

    log_interval: Annotated[int, Ge(1)] = 10
    eval_interval: Annotated[int, Ge(0)] = 100
    eval_iters: Annotated[int, Ge(1)] = 20
    final_eval: Literal["full", "sampled"] = "full"


DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _device_names_a_device(p: Mapping[str, Any]) -> list:
    """device is auto, cpu, cuda, cuda:N or mps."""
    if not DEVICE_NAME.fullmatch(str(p["device"])):
        return [problem(f"{p['device']!r} is not a device (use auto, cpu, cuda, cuda:N or mps)", key="device")]
    return []


def _float16_needs_a_gpu(p: Mapping[str, Any]) -> list:
    """dtype float16 needs a CUDA or MPS device (autocast has no float16 on the CPU)."""
    if p["dtype"] != "float16" or _device_names_a_device(p):
        return []
    device = str(p["device"])
    if device == "auto":
        import torch  # only for this rare case: validating stays free of torch otherwise

        mps = getattr(torch.backends, "mps", None)
        if torch.cuda.is_available() or (mps is not None and mps.is_available()):
            return []
        device = "cpu (what device = \"auto\" picks on this machine)"
    if device.startswith("cpu"):
        return [problem(f"float16 autocast is not supported on device {device}; use bfloat16 or float32", key="dtype")]
    return []


def _onednn_needs_its_kernel(p: Mapping[str, Any]) -> list:
    """cpu_matmul = "onednn" needs a torch build with oneDNN's float32 linear kernel."""
    if p.get("cpu_matmul") != "onednn":
        return []
    from modulm.functional.cpu_matmul import onednn_available  # imports torch: only for this setting

    if not onednn_available():
        return [problem("'onednn' requested, but this torch build has no usable oneDNN linear kernel; "
                        "use \"auto\" or \"blas\"", key="cpu_matmul")]
    return []


@checks(_device_names_a_device, _float16_needs_a_gpu, _onednn_needs_its_kernel)
@dataclass
class SystemSettings:
    """[system]: hardware and reproducibility.

    device: "auto" (cuda > mps > cpu), "cpu", "cuda", "cuda:N" or "mps"
    dtype: "auto" (bfloat16 autocast where the device runs bf16 natively, else float32), "float32", or "bfloat16"/"float16" autocast (float16 uses a gradient scaler on CUDA)
    compile: wrap the model in torch.compile (the first step compiles: tens of seconds)
    seed: seeds parameters, sampling and data order (a non-negative integer)
    threads: CPU threads for torch (torch.set_num_threads); unset keeps torch's default, "auto" means the physical cores; at most the CPUs this process can keep busy (affinity and cgroup CPU quota)
    tf32: on CUDA, float32 matmuls and convolutions use TF32 tensor cores (ignored elsewhere)
    cpu_matmul: the library for float32 matrix products on a CPU: "auto" (the CPU's default, oneDNN on x86 CPUs not made by Intel that have AVX-512 and torch's BLAS elsewhere, unless a timing once per machine finds the other at least 1.05x as fast), "onednn" or "blas"
    """

    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    compile: bool = False
    seed: Annotated[int, Interval(ge=0, lt=2**63)] = 42
    threads: Annotated[int, Ge(1)] | Literal["auto"] | None = None
    tf32: bool = True
    cpu_matmul: Literal["auto", "onednn", "blas"] = "auto"


@dataclass
class DistributedSettings:
    """[distributed]: data-parallel training, when launched by torchrun or modulm run --nproc N.

    backend: "auto" (nccl on CUDA, gloo on CPU), "nccl" or "gloo"
    timeout_seconds: how long a collective waits for the other ranks; past it the job fails with an error instead of hanging
    strategy: "ddp" (every process holds the whole model, gradients all-reduced) or "fsdp" (parameters, gradients and optimizer state sharded over the processes with FSDP2; checkpoints are sharded directories)
    reshard_after_forward: fsdp only: free each block's gathered parameters after its forward and gather them again for the backward (less memory, one more all-gather per block)
    """

    backend: Literal["auto", "nccl", "gloo"] = "auto"
    timeout_seconds: Annotated[int, Ge(1)] = 300
    strategy: Literal["ddp", "fsdp"] = "ddp"
    reshard_after_forward: bool = True


@dataclass
class GenerationSettings:
    """[generation]: the sample printed at the end of a run.

    prompt: text to continue ("" starts from nothing)
    max_tokens: new tokens at most (0 skips the sample)
    temperature: softmax temperature; 0 means greedy
    top_p: nucleus sampling mass (1.0 disables)
    """

    prompt: str = "Once upon a time"
    max_tokens: Annotated[int, Ge(0)] = 200
    temperature: Annotated[float, Ge(0)] = 0.8
    top_p: Annotated[float, Interval(gt=0, le=1)] = 0.95


def _warmup_ends_within_run(top: Mapping[str, Any]) -> list:
    """warning: schedule.warmup_iters >= training.max_iterations (the peak lr is never reached)."""
    warmup = getattr(top.get("schedule"), "params", {}).get("warmup_iters")
    iterations = getattr(top.get("training"), "max_iterations", None)
    if isinstance(warmup, int) and isinstance(iterations, int) and warmup >= iterations:
        return [warning(f"{warmup} >= training.max_iterations ({iterations}): the run ends before the "
                        "learning rate reaches its peak", key="schedule.warmup_iters")]
    return []


def _floor_below_peak_lr(top: Mapping[str, Any]) -> list:
    """schedule.min_lr is at most optimizer.lr."""
    min_lr = getattr(top.get("schedule"), "params", {}).get("min_lr")
    lr = getattr(top.get("optimizer"), "params", {}).get("lr")
    if isinstance(min_lr, (int, float)) and isinstance(lr, (int, float)) and min_lr > lr:
        return [problem(f"{min_lr} exceeds the optimizer's peak lr ({lr}): the schedule decays from lr down to min_lr",
                        key="schedule.min_lr")]
    return []


# Recipe-level rules: they need values from several tables.
@checks(_warmup_ends_within_run, _floor_below_peak_lr)
def recipe_schema(
    data: nested("data"),
    model: nested("model") = "transformer",
    optimizer: nested("optimizer") = "adamw",
    schedule: nested("schedule") = "cosine-warmup",
    loggers: nested("logger", many=True) = ("console", "file", "jsonl"),
    training: TrainingSettings = TrainingSettings,
    checkpointing: CheckpointSettings = CheckpointSettings,
    logging: LoggingSettings = LoggingSettings,
    system: SystemSettings = SystemSettings,
    distributed: DistributedSettings = DistributedSettings,
    generation: GenerationSettings = GenerationSettings,
    name: str = "",
):
    """A training recipe. Every table is optional except [data]."""


#: Top-level keys that are not components or settings.
META_KEYS = ("extends",)

#: The training guide's flat names whose recipe key has another name (see docs/recipes.md).
GUIDE_NAMES = {
    "learning_rate": "lr",
    "min_learning_rate": "min_lr",
    "train_data_path": "train",
    "val_data_path": "val",
    "compile_model": "compile",
}
