"""``modulm env``: what this machine gives a run, in lines to paste into a bug report.

Versions, the CPU and the kernels torch runs on it, what ``system.dtype = "auto"`` picks here, the
CPUs and memory a run may use (affinity mask, cgroup quota and limit), the GPUs, the cache
directory and the plugins. It only reads: nothing is timed or written.
"""

from __future__ import annotations

import os
import platform
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("env", help="this machine as a run sees it: versions, CPU, memory, GPUs, cache, plugins")
    p.set_defaults(func=run)


def lines(pm) -> list[str]:
    """The report, a line per fact."""
    import torch

    import modulm
    from modulm.errors import human_bytes
    from modulm.fileio import cache_dir
    from modulm.functional.cpu_matmul import cpu_model, cpuinfo_field
    from modulm.machine import cpu_budget, cpu_quota, memory_limit, ram_and_swap, usable_cpus
    from modulm.runtime import cpu_capability, native_bf16, physical_cores

    family, model = cpuinfo_field("cpu family"), cpuinfo_field("model")
    native, _ = native_bf16(torch.device("cpu"))
    quota = cpu_quota()
    memory = ram_and_swap()
    limit = memory_limit(memory[1]) if memory else None
    out = [
        f"modulm {modulm.__version__}, Python {platform.python_version()}, torch {torch.__version__} "
        f"(CUDA {torch.version.cuda or 'none'})",
        f"platform: {platform.platform()}",
        f"cpu: {cpu_model()}" + (f" (family {family}, model {model})" if family and model else ""),
        f"cpu kernels: {cpu_capability()}; system.dtype = \"auto\" trains in "
        + ("bfloat16 here (native)" if native else "float32 here (bfloat16 would be emulated)"),
        f"cpus: {len(usable_cpus())} usable, {physical_cores()} physical cores, cgroup quota "
        f"{f'{quota:g}' if quota is not None else 'none'}: {cpu_budget()} to keep busy; torch threads "
        f"{torch.get_num_threads()}",
        ("memory: " + (f"{human_bytes(memory[0])} RAM, {human_bytes(memory[1])} swap" if memory else "unknown")
         + f", cgroup limit {human_bytes(limit) if limit is not None else 'none'}"),
    ]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            out.append(f"cuda:{index}: {props.name}, {human_bytes(props.total_memory)}, compute capability "
                       f"{props.major}.{props.minor}")
    else:
        out.append("cuda: not available")
    where = "MODULM_CACHE_DIR" if os.environ.get("MODULM_CACHE_DIR") else "default"
    out.append(f"cache: {cache_dir()} ({where})")
    names = sorted(pm.get_name(p) or "" for p in pm.get_plugins())
    out.append(f"plugins: {', '.join(names)}")
    return out


def run(args) -> int:
    from modulm.cli._common import plugin_manager

    for line in lines(plugin_manager(args)):
        print(line)
    sys.stdout.flush()
    return 0
