"""CPUs and memory within a cgroup's limits (modulm.machine), on cgroup trees laid out as v1 and v2
mount them, and what runs do with them: threads capped at the CPU quota, memory at the limit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modulm import machine, runtime
from modulm.machine import cgroup, cpu_budget, cpu_quota, memory_limit

GiB = 2**30
V1_UNLIMITED = "9223372036854771712"


def _files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def _v2(tmp_path: Path, files: dict[str, str], group: str = "/a/b") -> machine.Cgroup:
    root = tmp_path / "cgroup"
    _files(root, {"cgroup.controllers": "cpu memory", **files})
    (root / group.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (tmp_path / "proc").write_text(f"0::{group}\n")
    return cgroup(root, tmp_path / "proc")


def _v1(tmp_path: Path, files: dict[str, str], group: str = "/a") -> machine.Cgroup:
    root = tmp_path / "cgroup"
    _files(root, files)
    for mount in ("memory", "cpu,cpuacct"):
        (root / mount / group.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (tmp_path / "proc").write_text(f"5:memory:{group}\n4:cpu,cpuacct:{group}\n1:name=systemd:/\n")
    return cgroup(root, tmp_path / "proc")


def test_v2_the_lowest_quota_and_limit_along_the_hierarchy_hold(tmp_path):
    group = _v2(tmp_path, {"a/cpu.max": "150000 100000", "a/b/cpu.max": "max 100000",
                           "a/memory.max": str(4 * GiB), "a/b/memory.max": str(8 * GiB), "a/b/memory.swap.max": "0"})
    assert group.version == 2
    assert cpu_quota(group) == 1.5
    assert cpu_budget(group) == 1  # 1.5 CPUs' worth: one busy thread, not two throttled ones
    assert memory_limit(swap=GiB, group=group) == 4 * GiB  # swap limited to none


@pytest.mark.parametrize("swap_max, expected", [("max", 3 * GiB), (None, 3 * GiB), (str(GiB // 2), 2 * GiB + GiB // 2)])
def test_v2_swap_counts_up_to_its_own_limit(tmp_path, swap_max, expected):
    files = {"a/b/memory.max": str(2 * GiB)} | ({"a/b/memory.swap.max": swap_max} if swap_max else {})
    assert memory_limit(swap=GiB, group=_v2(tmp_path, files)) == expected


def test_v2_without_limits_is_none_and_the_budget_is_the_usable_cpus(tmp_path):
    group = _v2(tmp_path, {"a/b/cpu.max": "max 100000", "a/b/memory.max": "max"})
    assert cpu_quota(group) is None and memory_limit(swap=0, group=group) is None
    assert cpu_budget(group) == len(machine.usable_cpus())


def test_v1_limits_with_and_without_a_swap_limit(tmp_path):
    group = _v1(tmp_path, {"cpu,cpuacct/a/cpu.cfs_quota_us": "250000", "cpu,cpuacct/a/cpu.cfs_period_us": "100000",
                           "memory/a/memory.limit_in_bytes": str(2 * GiB),
                           "memory/a/memory.memsw.limit_in_bytes": V1_UNLIMITED})
    assert group.version == 1
    assert cpu_quota(group) == 2.5
    assert memory_limit(swap=GiB, group=group) == 3 * GiB  # swap not limited apart: the machine's counts
    (tmp_path / "cgroup" / "memory/a/memory.memsw.limit_in_bytes").write_text(str(2 * GiB + 100))
    assert memory_limit(swap=GiB, group=group) == 2 * GiB + 100


def test_v1_unlimited_values_and_no_quota_are_none(tmp_path):
    group = _v1(tmp_path, {"cpu,cpuacct/a/cpu.cfs_quota_us": "-1", "cpu,cpuacct/a/cpu.cfs_period_us": "100000",
                           "memory/a/memory.limit_in_bytes": V1_UNLIMITED})
    assert cpu_quota(group) is None and memory_limit(swap=GiB, group=group) is None


def test_a_namespaced_container_reads_the_mount_point_itself(tmp_path):
    """/proc/self/cgroup names the host's path, which the container's mount does not show."""
    root = tmp_path / "cgroup"
    _files(root, {"cgroup.controllers": "cpu memory", "cpu.max": "100000 100000", "memory.max": str(GiB)})
    (tmp_path / "proc").write_text("0::/kubepods/pod42/abc\n")
    group = cgroup(root, tmp_path / "proc")
    assert cpu_quota(group) == 1.0 and memory_limit(swap=0, group=group) == GiB


def test_no_cgroup_file_means_no_limit(tmp_path):
    assert cgroup(tmp_path, tmp_path / "missing") is None
    (tmp_path / "proc").write_text("0::/\n")  # v2 named, but no unified hierarchy mounted
    assert cgroup(tmp_path / "nothing", tmp_path / "proc") is None


@settings(max_examples=25)
@given(cpu=st.text(max_size=30), memory=st.text(max_size=30), swap=st.text(max_size=30))
def test_whatever_the_files_hold_the_reading_never_raises(tmp_path_factory, cpu, memory, swap):
    tmp_path = tmp_path_factory.mktemp("garbage")
    group = _v2(tmp_path, {"a/b/cpu.max": cpu, "a/b/memory.max": memory, "a/b/memory.swap.max": swap})
    quota, limit = cpu_quota(group), memory_limit(swap=GiB, group=group)
    assert quota is None or quota > 0
    assert limit is None or limit >= 0
    assert 1 <= cpu_budget(group) <= len(machine.usable_cpus())


# -- what runs do with them ----------------------------------------------------------------------

@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_torchs_default_threads_are_capped_at_the_cpu_quota(monkeypatch, restore_threads):
    from modulm.settings import SystemSettings

    torch.set_num_threads(2)
    monkeypatch.setattr(runtime, "cpu_budget", lambda: 1)
    monkeypatch.setattr(runtime, "cpu_quota", lambda: 1.0)
    monkeypatch.setattr(runtime, "usable_cpus", lambda: [0, 1])
    lines = runtime.configure(SystemSettings(device="cpu", dtype="float32"), torch.device("cpu")).lines
    assert torch.get_num_threads() == 1
    assert any("CPU threads: 1 (torch's default of 2, capped at the 1 CPUs its cgroup's quota (1) lets this "
               "process keep busy" in line for line in lines), lines
    runtime.configure(SystemSettings(device="cpu", dtype="float32", threads=2), torch.device("cpu"))
    assert torch.get_num_threads() == 1  # an explicit count past the quota too


def test_the_cpu_memory_is_the_cgroup_limit_where_lower(monkeypatch):
    ram, swap = runtime.cpu_memory()
    monkeypatch.setattr(runtime, "memory_limit", lambda swap: 4 * GiB)
    assert runtime.device_memory_bytes(torch.device("cpu")) == min(ram + swap, 4 * GiB)
    if ram + swap > 4 * GiB:
        assert runtime.device_memory(torch.device("cpu")).endswith(", 4.00 GiB of it for this cgroup")
    monkeypatch.setattr(runtime, "memory_limit", lambda swap: None)
    assert runtime.device_memory_bytes(torch.device("cpu")) == ram + swap


def test_more_processes_or_sweep_jobs_than_cpus_are_warned_of(tmp_path, capsys, monkeypatch):
    from modulm import plugins, preflight
    from modulm.recipe import recipe_from_dict, validate
    from tests.runkit import cli, tiny_recipe, write_recipe

    monkeypatch.setattr(machine, "cpu_budget", lambda group=None: 1)
    bound = validate(recipe_from_dict(tiny_recipe(tmp_path)), plugins.load().registry)
    assert preflight.process_warnings(bound, 1) == []
    assert "--nproc 2: more processes than the 1 CPUs" in preflight.process_warnings(bound, 2)[0]
    write_recipe(tmp_path, tiny_recipe(tmp_path))
    sweep = tmp_path / "s.toml"
    sweep.write_text('name = "s"\nbase = "r.toml"\n[grid]\n"optimizer.lr" = [1e-3, 2e-3]\n')
    monkeypatch.setattr("modulm.cli.sweep.cpu_budget", lambda: 1)
    code, _, err = cli(capsys, "sweep", sweep, "--jobs", "2", "--dry-run", "--out", tmp_path / "out")
    assert code == 0
    assert any("modulm: warning: --jobs 2: more points at a time than the 1 CPUs" in line for line in err), err


def test_modulm_env_reports_what_a_run_would_use_and_writes_nothing(tmp_path, capsys, monkeypatch):
    from modulm.runtime import cpu_capability
    from tests.runkit import cli

    monkeypatch.setenv("MODULM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(machine, "cpu_quota", lambda group=None: 1.5)
    code, out, err = cli(capsys, "env")
    assert code == 0 and err == []
    lines = out.splitlines()
    assert lines[0].startswith("modulm ") and f"torch {torch.__version__}" in lines[0]
    assert any(line.startswith(f"cpu kernels: {cpu_capability()}; system.dtype = \"auto\" trains in ") for line in lines)
    cpus = len(machine.usable_cpus())
    assert f"cpus: {cpus} usable, " in out and "cgroup quota 1.5: 1 to keep busy" in out
    assert f"cache: {tmp_path / 'cache'} (MODULM_CACHE_DIR)" in lines
    assert any(line.startswith("plugins: ") and "transformer" in line for line in lines)
    assert not (tmp_path / "cache").exists()
