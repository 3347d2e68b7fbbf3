"""[system] settings: dtype "auto" follows the hardware, the bf16 warning, threads and TF32."""

import os
from pathlib import Path
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from modulm import runtime
from modulm.errors import ModulmError

CPU = torch.device("cpu")


def system(**changes):
    return SimpleNamespace(**{"dtype": "auto", "threads": None, "tf32": True, **changes})


@pytest.fixture
def cpu_kind(monkeypatch):
    """Pretend to be a CPU of a given kind: ``cpu_kind(capability, mkldnn_bf16)``."""
    def pretend(capability: str, bf16: bool) -> None:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(runtime, "_mkldnn_bf16", lambda: bf16)
        monkeypatch.setattr(runtime.platform, "machine", lambda: "x86_64")
    return pretend


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("capability, bf16, expected", [
    ("AVX2", False, "float32"), ("DEFAULT", False, "float32"), ("AVX2", True, "float32"),
    ("AVX512", False, "float32"), ("AVX512", True, "bfloat16")])
def test_auto_picks_bf16_only_where_the_cpu_runs_it_natively(cpu_kind, capability, bf16, expected):
    cpu_kind(capability, bf16)
    precision = runtime.resolve_precision(CPU, "auto")
    assert precision.dtype == expected and precision.warning is None
    assert precision.reason.startswith(f"auto: {expected}") and f"ATen CPU capability {capability}" in precision.reason
    assert f"oneDNN bf16 {bf16}" in precision.reason


def test_explicit_bf16_without_native_support_runs_but_warns_with_the_fix(cpu_kind):
    cpu_kind("AVX2", False)
    precision = runtime.resolve_precision(CPU, "bfloat16")
    assert precision.dtype == "bfloat16"
    assert "50x slower" in precision.warning and 'system.dtype = "auto"' in precision.warning
    cpu_kind("AVX512", True)
    assert runtime.resolve_precision(CPU, "bfloat16").warning is None


def test_explicit_dtypes_are_kept_and_float16_on_the_cpu_is_refused():
    assert runtime.resolve_precision(CPU, "float32").dtype == "float32"
    with pytest.raises(ModulmError, match="system.dtype: float16 autocast is not supported on the CPU"):
        runtime.resolve_precision(CPU, "float16")
    with pytest.raises(ModulmError, match="system.dtype: 'fp8' is not one of"):
        runtime.resolve_precision(CPU, "fp8")


def test_an_avx2_process_reads_avx2_and_picks_float32():
    """The imitation of an AVX2-only machine that the docs' timings use really lowers both checks."""
    code = ("import torch; from modulm.runtime import resolve_precision, cpu_capability; "
            "print(cpu_capability()); print(resolve_precision(torch.device('cpu'), 'auto').dtype)")
    env = dict(os.environ, ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    line, dtype = out.splitlines()
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip(f"not an x86 CPU with AVX2 ({line})")
    assert "ATen CPU capability AVX2" in line and "oneDNN bf16 False" in line
    assert dtype == "float32"


def test_threads_setting(keep_threads, monkeypatch):
    assert runtime.resolve_threads(None) is None
    assert runtime.resolve_threads(3) == 3
    assert runtime.resolve_threads("auto") == runtime.physical_cores() >= 1
    for bad in (0, -2, "four", 1.5, True):
        with pytest.raises(ModulmError, match="system.threads: expected an integer >= 1"):
            runtime.resolve_threads(bad)
    configured = runtime.configure(system(dtype="float32", threads=1), CPU)
    assert torch.get_num_threads() == 1 and configured.threads == 1
    assert any(line.startswith("CPU threads: 1 (as set") for line in configured.lines)
    monkeypatch.setattr(runtime, "physical_cores", lambda: 2)
    runtime.configure(system(dtype="float32", threads="auto"), CPU)
    assert torch.get_num_threads() == 2
    cpus = len(runtime.usable_cpus())
    configured = runtime.configure(system(dtype="float32", threads=100_000), CPU)  # torch alone crashes here
    assert torch.get_num_threads() == configured.threads == cpus
    assert f"CPU threads: {cpus} (system.threads = 100000 is more than the {cpus} CPUs this process may use" in configured.lines[1]


def test_configure_checks_before_it_changes_anything(keep_threads):
    torch.set_num_threads(1)
    with pytest.raises(ModulmError, match="float16"):
        runtime.configure(system(dtype="float16", threads=2), CPU)
    assert torch.get_num_threads() == 1


def test_start_lines_say_what_was_chosen_and_why(cpu_kind, keep_threads):
    cpu_kind("AVX2", False)
    lines = runtime.configure(system(), CPU).lines
    assert lines[0] == ("Precision: auto: float32, no native bfloat16 here "
                        f"(ATen CPU capability AVX2, oneDNN bf16 False, AMX {runtime._cpu_flag('_is_amx_tile_supported')})")
    assert not any("TF32" in line for line in lines)  # a CUDA-only setting is not shown on the CPU


def test_tf32_setting_changes_only_cuda_flags():
    cpu_matmul = torch.backends.mkldnn.matmul.fp32_precision if hasattr(torch.backends.mkldnn, "matmul") else None
    before = torch.backends.cuda.matmul.fp32_precision
    try:
        runtime.set_tf32(True)
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        runtime.set_tf32(False)
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    finally:
        torch.backends.cuda.matmul.fp32_precision = before
    if cpu_matmul is not None:
        assert torch.backends.mkldnn.matmul.fp32_precision == cpu_matmul


def test_bf16_autocast_needs_no_gradient_scaler():
    assert not runtime.grad_scaler(CPU, "bfloat16").is_enabled()
    assert not runtime.grad_scaler(torch.device("cuda"), "bfloat16").is_enabled()
    assert not runtime.grad_scaler(torch.device("cuda"), "float32").is_enabled()


def test_validate_reports_a_bad_threads_value_with_the_other_problems(tmp_path, capsys):
    from modulm.cli import main

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "base.toml"
    assert main(["validate", str(recipe), "system.threads=0", "system.dtype=fp8"]) == 2
    err = capsys.readouterr().err
    assert "system.threads: 0 is out of range: must be >= 1" in err and "system.dtype: 'fp8' is not one of" in err


@pytest.mark.parametrize("seed, ok", [(0, True), (2**63 - 1, True), (2**63, False), (-1, False), (10**23, False)])
def test_a_seed_torch_cannot_take_is_a_recipe_error(capsys, seed, ok):
    from modulm.cli import main

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "base.toml"
    assert main(["validate", str(recipe), f"system.seed={seed}"]) == (0 if ok else 2)
    if ok:
        runtime.seed_everything(seed)  # torch, numpy and random take every seed the recipe admits
    else:
        assert f"system.seed: {seed} is out of range: must be in [0, 9223372036854775808)" in capsys.readouterr().err
