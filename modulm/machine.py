"""What this machine lets the process use: CPUs and memory, within its control group's limits.

A container started with ``--cpus 2`` or ``--memory 8g`` on a 64-core, 256 GiB host still shows
the host in ``os.cpu_count()`` and ``/proc/meminfo``; its limits are in the cgroup files
(``cpu.max`` and ``memory.max`` under cgroup v2; ``cpu.cfs_quota_us``, ``memory.limit_in_bytes``
and ``memory.memsw.limit_in_bytes`` under v1). Past the memory limit the kernel kills the process;
past the CPU quota its threads wait, so more threads than the quota only slow a step down.

Torch-free: the sweep runner and the data preparation ask it without importing torch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
#: cgroup v1 writes "no limit" as a huge number (2^63 rounded down to a page); anything past this is none.
_UNLIMITED = 1 << 60


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


@dataclass(frozen=True)
class Cgroup:
    """This process's control group: ``version`` 1 or 2, and for each controller read (``cpu``,
    ``memory``) its mount point and this process's directory under it."""

    version: int
    mounts: dict[str, tuple[Path, Path]]

    def chain(self, controller: str) -> list[Path]:
        """The controller's directory and those above it up to its mount point (a parent's limit
        holds for its children), nearest first; empty where the controller is not mounted."""
        if controller not in self.mounts:
            return []
        mount, here = self.mounts[controller]
        found = [here]
        while here != mount and mount in here.parents:
            here = here.parent
            found.append(here)
        return found


def cgroup(root: Path = CGROUP_ROOT, proc: Path = PROC_CGROUP) -> Cgroup | None:
    """This process's cgroup as ``proc`` (``/proc/self/cgroup``) names it under ``root``, or None
    where there is none to read. In a container whose cgroup namespace hides the host's path, the
    named directory is missing under the mount point, which is then the container's own group."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return None
    v1: dict[str, tuple[Path, Path]] = {}
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        relative = path.strip().lstrip("/")
        if controllers == "":  # the v2 unified hierarchy, where it is mounted
            if (root / "cgroup.controllers").exists():
                here = root / relative if (root / relative).is_dir() else root
                return Cgroup(2, {"cpu": (root, here), "memory": (root, here)})
            continue
        names = controllers.split(",")
        for controller in ("cpu", "memory"):
            if controller not in names:
                continue
            mount = next((root / m for m in (controllers, controller) if (root / m).is_dir()), None)
            if mount is not None:
                here = mount / relative
                v1[controller] = (mount, here if here.is_dir() else mount)
    return Cgroup(1, v1) if v1 else None


def _read_int(path: Path) -> int | None:
    """The integer in a cgroup file; None for ``max``, a missing or unreadable file, or no limit."""
    try:
        text = path.read_text().split()
    except OSError:
        return None
    if not text or text[0] == "max":
        return None
    try:
        value = int(text[0])
    except ValueError:
        return None
    return value if 0 <= value < _UNLIMITED else None


def _lowest(values: list[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def cpu_quota(group: Cgroup | None = None) -> float | None:
    """CPUs' worth of time per period the cgroup allows (``cpu.max`` ``200000 100000`` is 2.0),
    the lowest along its hierarchy; None where there is no quota or none can be read."""
    group = cgroup() if group is None else group
    if group is None:
        return None
    quotas = []
    for directory in group.chain("cpu"):
        if group.version == 2:
            try:
                fields = (directory / "cpu.max").read_text().split()
            except OSError:
                continue
            if len(fields) == 2 and fields[0] != "max":
                try:
                    quota, period = int(fields[0]), int(fields[1])
                except ValueError:
                    continue
                if quota > 0 and period > 0:
                    quotas.append(quota / period)
        else:
            quota, period = _read_int(directory / "cpu.cfs_quota_us"), _read_int(directory / "cpu.cfs_period_us")
            if quota and period:
                quotas.append(quota / period)
    return min(quotas) if quotas else None


def cpu_budget(group: Cgroup | None = None) -> int:
    """The CPUs this process can keep busy: its usable CPUs, at most its cgroup's CPU quota (rounded
    down, at least 1)."""
    cpus = len(usable_cpus())
    quota = cpu_quota(group)
    return max(1, min(cpus, math.floor(quota))) if quota is not None else max(1, cpus)


def ram_and_swap() -> tuple[int, int] | None:
    """This machine's RAM and swap in bytes (``/proc/meminfo``; RAM alone from ``sysconf``
    elsewhere), or None where neither can be read."""
    try:
        with open("/proc/meminfo") as info:
            fields = dict(line.split(":", 1) for line in info if ":" in line)
        return int(fields["MemTotal"].split()[0]) * 1024, int(fields.get("SwapTotal", "0 kB").split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), 0
    except (ValueError, OSError, AttributeError):
        return None


def memory_limit(swap: int, group: Cgroup | None = None) -> int | None:
    """The bytes of memory and swap this process's cgroup may use, the lowest along its hierarchy,
    or None where memory is not limited. ``swap`` is the machine's, counted up to any swap limit."""
    group = cgroup() if group is None else group
    if group is None:
        return None
    chain = group.chain("memory")
    if group.version == 2:
        memory = _lowest([_read_int(d / "memory.max") for d in chain])
        swap_cap = _lowest([_read_int(d / "memory.swap.max") for d in chain])
        return None if memory is None else memory + (swap if swap_cap is None else min(swap_cap, swap))
    memory = _lowest([_read_int(d / "memory.limit_in_bytes") for d in chain])
    if memory is None:
        return None
    with_swap = _lowest([_read_int(d / "memory.memsw.limit_in_bytes") for d in chain])
    return memory + swap if with_swap is None else min(with_swap, memory + swap)
