"""Device, precision, threads and seeding: the [system] settings turned into torch objects.

``system.dtype = "auto"`` (the default) picks bfloat16 autocast only where the device runs it
natively, float32 elsewhere: on a CPU without native bf16 (AVX2 only) torch emulates bf16 matrix
products about 50x slower than float32 ones (0.6 against 32.8 GFLOP/s measured on such a machine),
so a bf16 default there turned a 4-minute recipe into a 5-hour one. :func:`configure` applies the
[system] table and returns the start lines that say what was chosen and why.
"""

from __future__ import annotations

import contextlib
import platform
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modulm.errors import ModulmError
from modulm.functional.cpu_matmul import check_cpu_matmul, forget_cpu_matmul, set_cpu_matmul
from modulm.machine import cpu_budget, cpu_quota, memory_limit, ram_and_swap, usable_cpus

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: The ATen CPU capabilities of x86 builds whose bf16 kernels are emulated (no AVX-512).
_EMULATED_BF16_CAPABILITIES = ("DEFAULT", "AVX2")


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


# -- precision --------------------------------------------------------------------------------
def cpu_capability() -> str:
    """What this process's CPU kernels use, as one line (ATen capability, oneDNN bf16, AMX)."""
    return (f"ATen CPU capability {torch.backends.cpu.get_cpu_capability()}, "
            f"oneDNN bf16 {_mkldnn_bf16()}, AMX {_cpu_flag('_is_amx_tile_supported')}")


def _mkldnn_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _cpu_flag(name: str) -> bool:
    check = getattr(getattr(torch, "cpu", None), name, None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` runs bfloat16 matrix products natively, and the evidence.

    CUDA: compute capability 8.0 or newer (Ampere on; ROCm always). CPU: oneDNN reports bf16
    support and ATen's kernels are not the AVX2/DEFAULT ones (``ONEDNN_MAX_CPU_ISA`` and
    ``ATEN_CPU_CAPABILITY`` lower both; AMX alone is not enough, since cpuinfo reports it even when
    oneDNN has been told not to use it). MPS: not assumed.
    """
    if device.type == "cuda":
        if torch.version.hip:
            return True, "ROCm GPU"
        major, minor = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        return major >= 8, f"{name}, compute capability {major}.{minor}"
    if device.type == "cpu":
        capability = torch.backends.cpu.get_cpu_capability()
        x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
        native = _mkldnn_bf16() and not (x86 and capability in _EMULATED_BF16_CAPABILITIES)
        return native, cpu_capability()
    return False, f"{device.type} device"


@dataclass(frozen=True)
class Precision:
    """The dtype a run computes in, why it was chosen, and a warning when the choice is slow."""

    dtype: str
    reason: str
    warning: str | None = None


def resolve_precision(device: torch.device, requested: str) -> Precision:
    """Turn ``system.dtype`` (``auto`` or a dtype name) into the dtype used on ``device``."""
    if requested not in ("auto", *DTYPES):
        raise ModulmError(f"system.dtype: {requested!r} is not one of 'auto', {', '.join(map(repr, DTYPES))}")
    if requested == "float16" and device.type == "cpu":
        raise ModulmError("system.dtype: float16 autocast is not supported on the CPU; use auto or bfloat16")
    if requested == "auto":
        native, evidence = native_bf16(device)
        if native:
            return Precision("bfloat16", f"auto: bfloat16 autocast, native on this device ({evidence})")
        return Precision("float32", f"auto: float32, no native bfloat16 here ({evidence})")
    if requested == "bfloat16" and device.type == "cpu":
        native, evidence = native_bf16(device)
        if not native:
            return Precision("bfloat16", f"bfloat16 autocast, as set ({evidence})", warning=(
                f"Warning: system.dtype = \"bfloat16\" on a CPU without native bf16 ({evidence}): torch emulates bf16 "
                "matrix products here, measured about 50x slower than float32 (0.6 against 32.8 GFLOP/s on an "
                "AVX2-only CPU), for the same loss. Set system.dtype = \"auto\" or \"float32\"."))
    return Precision(requested, f"{requested}{' autocast' if requested != 'float32' else ''}, as set")


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass; float32 means none (``dtype`` is already resolved)."""
    if dtype == "float32":
        return contextlib.nullcontext()
    if dtype == "float16" and device.type == "cpu":
        raise ModulmError("system.dtype: float16 autocast is not supported on the CPU; use bfloat16")
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def grad_scaler(device: torch.device, dtype: str) -> Any:
    """A gradient scaler for float16 on CUDA only: bfloat16 has float32's range and needs none."""
    enabled = dtype == "float16" and device.type == "cuda"
    return torch.amp.GradScaler(device.type, enabled=enabled)


# -- threads and matmul precision ---------------------------------------------------------------
def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-threads counted once), at most
    its cgroup's CPU quota (:func:`modulm.machine.cpu_budget`)."""
    cpus = usable_cpus()
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()))
        except OSError:
            cores = set(cpus)
            break
    return max(1, min(len(cores), cpu_budget()))


#: This machine's RAM and swap in bytes, or None (a cgroup's limit is :func:`device_memory_bytes`'s).
cpu_memory = ram_and_swap


def device_memory_bytes(device: torch.device) -> int | None:
    """The memory one process's tensors can use at most on ``device``: RAM + swap for the CPU, or
    less where its cgroup (a container's memory limit) allows less; the GPU's memory for CUDA; None
    where it cannot be read (MPS, others)."""
    if device.type == "cpu":
        memory = cpu_memory()
        if not memory:
            return None
        limit = memory_limit(memory[1])
        return sum(memory) if limit is None else min(sum(memory), limit)
    if device.type == "cuda":
        try:
            return torch.cuda.get_device_properties(device).total_memory
        except (RuntimeError, AssertionError):
            return None
    return None


def device_memory(device: torch.device) -> str:
    """The device and its memory in words: ``"cpu with 23.43 GiB of RAM"`` (and swap where there is
    some), ``"cuda:0 with 79.19 GiB"``, or the device alone where it cannot be read."""
    from modulm.errors import human_bytes

    if device.type == "cpu" and (memory := cpu_memory()):
        ram, swap = memory
        text = f"cpu with {human_bytes(ram)} of RAM" + (f" and {human_bytes(swap)} of swap" if swap else "")
        limit = memory_limit(swap)
        return text if limit is None or limit >= ram + swap else f"{text}, {human_bytes(limit)} of it for this cgroup"
    total = device_memory_bytes(device)
    return f"{device} with {human_bytes(total)}" if total else str(device)


def resolve_threads(threads: Any) -> int | None:
    """``system.threads``: None keeps torch's choice, ``"auto"`` means the physical cores, or an int >= 1."""
    if threads is None:
        return None
    if threads == "auto":
        return physical_cores()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ModulmError(f"system.threads: expected an integer >= 1 or \"auto\", got {threads!r}")
    return threads


def set_tf32(enabled: bool) -> None:
    """TF32 tensor cores for float32 matmuls and convolutions on CUDA; the CPU's matmuls are untouched.

    (``torch.set_float32_matmul_precision`` would also change oneDNN's CPU matmuls.)
    """
    value = "tf32" if enabled else "ieee"
    try:  # torch >= 2.9; mixing it with the legacy allow_tf32 flags is an error there
        torch.backends.cuda.matmul.fp32_precision = value
        torch.backends.cudnn.conv.fp32_precision = value
    except AttributeError:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


@dataclass
class Runtime:
    """The applied [system] table: resolved precision and the start lines describing it."""

    device: torch.device
    precision: Precision
    threads: int
    lines: list[str] = field(default_factory=list)
    cpu_matmul: str = "auto"  # system.cpu_matmul as requested

    @property
    def dtype(self) -> str:
        return self.precision.dtype

    def choose_cpu_matmul(self) -> None:
        """On a CPU: settle ``system.cpu_matmul`` (for ``"auto"`` a timing, once per machine and
        thread count) and add its start line. The trainer calls it once the run's checks passed."""
        if self.device.type == "cpu":
            choice = set_cpu_matmul(self.cpu_matmul)
            self.lines.append(f"CPU float32 matmuls: {choice.reason} (system.cpu_matmul)")


def configure(system: Any, device: torch.device) -> Runtime:
    """Apply ``system`` (threads, TF32, the CPU's matmul library unless ``"auto"``: see
    :meth:`Runtime.choose_cpu_matmul`) for ``device`` and resolve its dtype. Checks before it
    changes anything."""
    precision = resolve_precision(device, getattr(system, "dtype", "float32"))
    threads = resolve_threads(getattr(system, "threads", None))
    tf32 = bool(getattr(system, "tf32", True))
    requested_matmul = getattr(system, "cpu_matmul", "auto")
    try:
        check_cpu_matmul(requested_matmul)
    except ValueError as exc:
        raise ModulmError(f"system.{exc}") from None
    how = ("torch's default" if threads is None else
           "auto: physical cores" if getattr(system, "threads", None) == "auto" else "as set")
    cpus = cpu_budget()
    quota = cpu_quota()
    where = (f"the {cpus} CPUs its cgroup's quota ({quota:g}) lets this process keep busy"
             if quota is not None and quota < len(usable_cpus()) else f"the {cpus} CPUs this process may use")
    if threads is None and torch.get_num_threads() > cpus:  # torch counts the host's cores, not a container's quota
        how, threads = f"torch's default of {torch.get_num_threads()}, capped at {where}", cpus
    elif threads is not None and threads > cpus:  # thousands of threads are slow, and past ~30000 torch crashes
        how = f"system.threads = {threads} is more than {where}"
        threads = cpus
    if threads is not None:
        torch.set_num_threads(threads)
    if requested_matmul == "auto":  # timed later (Runtime.choose_cpu_matmul) or at the first product
        forget_cpu_matmul()
    else:
        set_cpu_matmul(requested_matmul)
    if device.type == "cuda":
        set_tf32(tf32)
    count = torch.get_num_threads()
    lines = [f"Precision: {precision.reason}"]
    if device.type == "cpu" or threads is not None:
        lines.append(f"CPU threads: {count} ({how}; on a busy machine fewer can be faster: system.threads)")
    if device.type == "cuda":
        lines.append(f"TF32 matmuls for float32: {'on' if tf32 else 'off'} (system.tf32)")
    return Runtime(device, precision, count, lines, requested_matmul)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
