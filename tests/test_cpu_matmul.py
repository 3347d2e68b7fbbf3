"""modulm.functional.cpu_matmul: which library computes the CPU's float32 products. ``auto`` starts
from the vendor's default, lets a measured timing overrule it only by MARGIN, and remembers the
timing per machine and thread count, so later runs choose the same library without timing."""

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

import modulm.functional.cpu_matmul as cm
from modulm import runtime
from modulm.errors import ModulmError
from tests.runkit import tiny_recipe, write_recipe


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """``machine(vendor, speedup, arch="x86_64", capability="AVX512")``: a CPU of ``vendor`` with ATen
    capability ``capability`` on which oneDNN measures ``speedup`` times torch's BLAS, with a fresh
    cache; returns the list of thread counts measured at."""
    monkeypatch.setenv("MODULM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cm, "_backend", cm._backend)  # restored afterwards
    measured: list[int] = []

    def use(vendor: str, speedup: float, arch: str = "x86_64", capability: str = "AVX512") -> list[int]:
        monkeypatch.setattr(cm, "onednn_available", lambda: True)
        monkeypatch.setattr(cm, "cpu_capability", lambda: capability)
        monkeypatch.setattr(cm.platform, "machine", lambda: arch)
        monkeypatch.setattr(cm, "cpu_vendor", lambda: vendor)

        def measure() -> cm.Timing:
            measured.append(torch.get_num_threads())
            return cm.Timing(blas=speedup * 0.01, onednn=0.01)
        monkeypatch.setattr(cm, "measure", measure)
        return measured
    return use


@given(default=st.sampled_from(["blas", "onednn"]), speedup=st.floats(0.2, 5.0))
def test_choose_keeps_the_default_unless_the_other_library_is_margin_faster(default, speedup):
    chosen = cm.choose(default, cm.Timing(blas=speedup, onednn=1.0))
    faster_other = speedup >= cm.MARGIN if default == "blas" else 1 / speedup >= cm.MARGIN
    assert chosen == (("onednn" if default == "blas" else "blas") if faster_other else default)


@pytest.mark.parametrize("vendor, capability, speedup, expected", [
    ("AuthenticAMD", "AVX512", 2.1, "onednn"), ("AuthenticAMD", "AVX512", 1.0, "onednn"),
    ("AuthenticAMD", "AVX512", 0.9, "blas"), ("HygonGenuine", "AVX512", 1.02, "onednn"),
    # without AVX-512 both libraries run AVX2 kernels: the BLAS is the default, even off Intel
    ("AuthenticAMD", "AVX2", 1.0, "blas"), ("AuthenticAMD", "AVX2", 1.04, "blas"),
    ("AuthenticAMD", "AVX2", 1.06, "onednn"), ("HygonGenuine", "DEFAULT", 0.99, "blas"),
    ("GenuineIntel", "AVX512", 1.0, "blas"), ("GenuineIntel", "AVX512", 1.04, "blas"),
    ("GenuineIntel", "AVX2", 1.12, "onednn"), ("", "AVX512", 1.2, "onednn"), ("", "AVX512", 1.0, "blas"),
])
def test_auto_is_the_vendor_default_unless_the_timing_overrules_it(machine, vendor, capability, speedup, expected):
    machine(vendor, speedup, capability=capability)
    chosen = cm.resolve_cpu_matmul("auto")
    assert chosen.backend == expected
    assert chosen.reason.startswith("auto: ") and f"oneDNN {speedup:.2f}x torch's BLAS" in chosen.reason
    assert f"{vendor or 'unknown vendor'} {capability} CPU" in chosen.reason
    assert ("overruling its default" in chosen.reason) == (expected != cm.vendor_default())


@pytest.mark.parametrize("vendor, capability, default", [
    ("AuthenticAMD", "AVX512", "onednn"), ("HygonGenuine", "AVX512", "onednn"),
    ("AuthenticAMD", "AVX2", "blas"), ("AuthenticAMD", "DEFAULT", "blas"),
    ("GenuineIntel", "AVX512", "blas"), ("GenuineIntel", "AVX2", "blas"), ("", "AVX512", "blas"),
])
def test_the_default_is_onednn_only_off_intel_with_avx512(machine, vendor, capability, default):
    machine(vendor, 1.0, capability=capability)
    assert cm.vendor_default() == default


def test_other_architectures_and_builds_without_the_kernel_time_nothing(machine, monkeypatch):
    measured = machine("", 3.0, arch="aarch64")
    assert cm.resolve_cpu_matmul("auto").backend == "blas"
    monkeypatch.setattr(cm.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(cm, "onednn_available", lambda: False)
    assert cm.resolve_cpu_matmul("auto").backend == "blas"
    assert measured == []
    with pytest.raises(ValueError, match="no usable oneDNN"):
        cm.resolve_cpu_matmul("onednn")
    with pytest.raises(ValueError, match="must be one of"):
        cm.resolve_cpu_matmul("mkl")


def test_the_timing_is_remembered_per_thread_count(machine, monkeypatch, tmp_path):
    measured = machine("GenuineIntel", 1.3)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    first = cm.resolve_cpu_matmul("auto")
    again = cm.resolve_cpu_matmul("auto")
    assert first.backend == again.backend == "onednn" and measured == [2]
    assert first.reason.endswith("measured)") and again.reason.endswith("remembered)")
    cache = json.loads((tmp_path / "cache" / cm.CACHE_FILE).read_text())
    assert list(cache) == [cm.machine_key(2)] and cache[cm.machine_key(2)]["blas_s"] == pytest.approx(0.013)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    cm.resolve_cpu_matmul("auto")
    assert measured == [2, 1] and len(json.loads((tmp_path / "cache" / cm.CACHE_FILE).read_text())) == 2


def test_the_key_names_the_cpu_torch_threads_and_kernel_limits(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    plain = cm.machine_key(2)
    assert torch.__version__ in plain and "2 threads" in plain and plain != cm.machine_key(1)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in cm.machine_key(2)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"KEY": {"blas_s": -1, "onednn_s": 0.1}}',
                                     '{"KEY": {"blas_s": "x"}}', '{"KEY": 3}',
                                     '{"KEY": {"blas_s": Infinity, "onednn_s": 0.1}}'])
def test_a_damaged_cache_is_measured_again_and_mended(machine, tmp_path, content):
    measured = machine("AuthenticAMD", 2.0)
    path = tmp_path / "cache" / cm.CACHE_FILE
    path.parent.mkdir()
    path.write_text(content.replace("KEY", cm.machine_key(torch.get_num_threads()).replace('"', '\\"')))
    assert cm.resolve_cpu_matmul("auto").backend == "onednn" and len(measured) == 1
    assert cm.resolve_cpu_matmul("auto").reason.endswith("remembered)") and len(measured) == 1


def test_an_unwritable_cache_still_gives_a_choice(machine, monkeypatch, tmp_path):
    from modulm import fileio

    blocker = tmp_path / "file"
    blocker.write_text("")
    measured = machine("AuthenticAMD", 2.0)
    monkeypatch.setenv("MODULM_CACHE_DIR", str(blocker / "cache"))  # a directory under a file
    monkeypatch.setattr(fileio.tempfile, "gettempdir", lambda: str(blocker))  # and no fallback either
    assert cm.resolve_cpu_matmul("auto").backend == "onednn"
    assert cm.resolve_cpu_matmul("auto").backend == "onednn" and len(measured) == 2
    monkeypatch.setattr(fileio.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))  # the fallback keeps it
    assert cm.resolve_cpu_matmul("auto").backend == "onednn"
    assert cm.resolve_cpu_matmul("auto").backend == "onednn" and len(measured) == 3
    assert list((tmp_path / "tmp").glob("modulm-cache-*/cpu_matmul.json"))


def test_without_a_home_directory_the_timing_is_taken_and_not_kept(machine, monkeypatch):
    measured = machine("AuthenticAMD", 0.5)

    def no_home():
        raise RuntimeError("Could not determine home directory.")
    monkeypatch.setattr(cm, "cache_dir", no_home)
    assert cm.resolve_cpu_matmul("auto").backend == "blas" and len(measured) == 1


def test_a_process_waiting_for_the_lock_uses_the_timing_the_holder_wrote(machine, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    measured = machine("AuthenticAMD", 2.0)
    directory = tmp_path / "cache"
    directory.mkdir()
    threads = torch.get_num_threads()
    result = {}
    with open(directory / (cm.CACHE_FILE + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        waiter = threading.Thread(target=lambda: result.update(got=cm.remembered_timing(threads, directory)))
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive()  # blocked on the lock
        entry = {"blas_s": 0.05, "onednn_s": 0.02, "measured": "2026-12-01"}
        (directory / cm.CACHE_FILE).write_text(json.dumps({cm.machine_key(threads): entry}))
    waiter.join(10)
    assert result["got"] == (cm.Timing(0.05, 0.02), "remembered") and measured == []


@pytest.mark.skipif(not cm.onednn_available(), reason="this torch build has no oneDNN linear kernel")
def test_measure_times_both_libraries_in_float32_unseen_by_dispatch_modes(monkeypatch):
    seen, mm = set(), torch.mm

    def recording_mm(a, b):
        seen.add((a.dtype, a.device.type, b.dtype, b.device.type))
        return mm(a, b)
    monkeypatch.setattr(torch, "mm", recording_mm)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the timing is of float32 products whatever the default
    try:
        with FlopCounterMode(display=False) as counter, torch.device("meta"):
            timing = cm.measure(shapes=((64, 32, 2048),), rounds=2)
    finally:
        torch.set_default_dtype(previous)
    assert counter.get_total_flops() == 0
    assert seen == {(torch.float32, "cpu", torch.float32, "cpu")}
    assert 0 < timing.blas < 1 and 0 < timing.onednn < 1 and timing.onednn_speedup > 0


def test_auto_is_timed_after_configure_at_the_run_thread_count(machine):
    measured = machine("AuthenticAMD", 2.0)
    cm.set_cpu_matmul("blas")
    before = torch.get_num_threads()
    try:
        settings = SimpleNamespace(dtype="float32", threads=1, tf32=True, cpu_matmul="auto")
        rt = runtime.configure(settings, torch.device("cpu"))
        assert measured == [] and cm.chosen() is None  # nothing timed before the run's checks
        rt.choose_cpu_matmul()
    finally:
        torch.set_num_threads(before)
    assert measured == [1] and cm.cpu_matmul() == "onednn"
    assert rt.lines[-1].startswith("CPU float32 matmuls: auto: oneDNN (AuthenticAMD AVX512 CPU")


def test_configure_applies_system_cpu_matmul_and_says_so(machine):
    measured = machine("AuthenticAMD", 2.0)
    settings = SimpleNamespace(dtype="float32", threads=None, tf32=True, cpu_matmul="blas")
    rt = runtime.configure(settings, torch.device("cpu"))
    assert cm.cpu_matmul() == "blas"
    rt.choose_cpu_matmul()
    assert measured == [] and rt.lines[-1] == "CPU float32 matmuls: torch's BLAS, as set (system.cpu_matmul)"
    with pytest.raises(ModulmError, match="system.cpu_matmul must be one of"):
        runtime.configure(SimpleNamespace(**{**vars(settings), "cpu_matmul": "fast"}), torch.device("cpu"))
    assert cm.cpu_matmul() == "blas"  # the refused value changed nothing


def test_a_run_times_auto_after_its_checks_and_says_what_it_chose(machine, tmp_path, capsys):
    from modulm.cli import main

    measured = machine("GenuineIntel", 1.3)
    recipe = write_recipe(tmp_path, tiny_recipe(tmp_path))
    assert main(["run", str(recipe), "training.max_iterations=0"]) == 2  # refused: nothing timed
    assert measured == [] and "max_iterations" in capsys.readouterr().err
    assert main(["run", str(recipe), "training.max_iterations=1"]) == 0
    out = capsys.readouterr().out
    assert "CPU float32 matmuls: auto: oneDNN (GenuineIntel AVX512 CPU, overruling its default, torch's BLAS" in out
    assert len(measured) == 1


def test_the_choice_is_made_at_the_first_float32_cpu_product_when_none_was(machine):
    measured = machine("GenuineIntel", 1.5)
    cm.forget_cpu_matmul()
    assert cm.chosen() is None
    assert cm.cpu_matmul() == "onednn" and cm.chosen() == "onednn" and len(measured) == 1


@pytest.mark.parametrize("cpuinfo, processor, expected", [
    ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n", "", "AuthenticAMD"),
    ("processor\t: 0\nvendor_id\t: GenuineIntel\n", "", "GenuineIntel"),
    (None, "Intel64 Family 6 Model 85 Stepping 7, GenuineIntel", "GenuineIntel"),  # no /proc (Windows)
    ("processor\t: 0\nBogoMIPS\t: 50.00\n", "aarch64", ""),  # no vendor line (ARM)
])
def test_cpu_vendor_reads_proc_cpuinfo_then_the_platform(tmp_path, monkeypatch, cpuinfo, processor, expected):
    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    monkeypatch.setattr(cm, "_CPUINFO", path)
    monkeypatch.setattr(cm.platform, "processor", lambda: processor)
    cm.cpu_vendor.cache_clear()
    try:
        assert cm.cpu_vendor() == expected
    finally:
        cm.cpu_vendor.cache_clear()


def test_a_bad_cpu_matmul_value_is_a_recipe_error(capsys):
    from modulm.cli import main

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "base.toml"
    assert main(["validate", str(recipe), "system.cpu_matmul=mkl"]) == 2
    err = capsys.readouterr().err
    assert "system.cpu_matmul" in err and "'mkl'" in err
    assert main(["validate", str(recipe), "system.cpu_matmul=blas"]) == 0
