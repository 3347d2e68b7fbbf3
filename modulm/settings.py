"""The top level of a recipe: which components a run uses and the trainer's own settings.

Each settings table is a dataclass; its fields are validated like a component's parameters.
``docs/recipes.md`` maps every setting of the training guide to its key here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from modulm.kinds import nested


@dataclass
class TrainingSettings:
    """[training]: the optimisation loop.

    batch_size: sequences per optimizer step per process (the global batch is batch_size x processes), split into grad_accum_steps micro-batches
    max_iterations: optimizer steps in the run
    grad_clip: clip gradients to this global L2 norm (0 disables)
    grad_accum_steps: micro-batches accumulated per optimizer step
    """

    batch_size: int = 32
    max_iterations: int = 10000
    grad_clip: float = 1.0
    grad_accum_steps: int = 1


@dataclass
class CheckpointSettings:
    """[checkpointing]: where the run lives and how it is saved and resumed.

    checkpoint_dir: the run directory (checkpoints, logs, metrics, resolved recipe)
    checkpoint_interval: save checkpoint_{iter}.pt every N iterations (0 disables)
    keep_last: how many periodic checkpoints to keep (0 keeps all)
    resume: "auto" (resume the run directory's latest checkpoint if any), a checkpoint path, or false
    resume_from: the training guide's name for a checkpoint path to resume from (wins over resume)
    overwrite: start afresh in an existing run directory, deleting its checkpoints
    """

    checkpoint_dir: str = "./checkpoints"
    checkpoint_interval: int = 1000
    keep_last: int = 3
    resume: str | bool = "auto"
    resume_from: str | None = None
    overwrite: bool = False


@dataclass
class LoggingSettings:
    """[logging]: how often to log and evaluate.

    log_interval: log training metrics every N iterations
    eval_interval: evaluate on the validation split every N iterations (0 disables)
    eval_iters: batches per periodic evaluation
    final_eval: "full" evaluates the whole validation split in non-overlapping windows at the end; "sampled" uses eval_iters batches
    """

    log_interval: int = 10
    eval_interval: int = 100
    eval_iters: int = 20
    final_eval: Literal["full", "sampled"] = "full"


@dataclass
class SystemSettings:
    """[system]: hardware and reproducibility.

    device: "auto" (cuda > mps > cpu), "cpu", "cuda", "cuda:N" or "mps"
    dtype: "float32", or "bfloat16"/"float16" autocast (float16 uses a gradient scaler on CUDA)
    compile: wrap the model in torch.compile
    seed: seeds parameters, sampling and data order
    """

    device: str = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    compile: bool = False
    seed: int = 42


@dataclass
class DistributedSettings:
    """[distributed]: data-parallel training, when launched by torchrun or modulm run --nproc N.

    backend: "auto" (nccl on CUDA, gloo on CPU), "nccl" or "gloo"
    timeout_seconds: how long a collective waits for the other ranks; past it the job fails with an error instead of hanging
    strategy: "ddp" (every process holds the whole model, gradients all-reduced) or "fsdp" (parameters, gradients and optimizer state sharded over the processes with FSDP2; checkpoints are sharded directories)
    reshard_after_forward: fsdp only: free each block's gathered parameters after its forward and gather them again for the backward (less memory, one more all-gather per block)
    """

    backend: Literal["auto", "nccl", "gloo"] = "auto"
    timeout_seconds: int = 300
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
    max_tokens: int = 200
    temperature: float = 0.8
    top_p: float = 0.95


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
