"""Which of torch's two GEMM libraries computes this process's float32 products on a CPU.

torch computes float32 products with its BLAS (MKL in the x86 wheels), and also ships oneDNN. MKL
runs its AVX2 kernels on processors not made by Intel, even where they have AVX-512, while oneDNN
picks its kernels from the CPU's features: on a 2-core AMD EPYC (Zen 5) VM oneDNN computes a
training step's products at about twice MKL's rate (``benchmarks/bench_gemm.py``).

``system.cpu_matmul = "auto"`` (:func:`resolve_cpu_matmul`) settles it on the machine at hand:

* the CPU's default is oneDNN on x86 CPUs not made by Intel whose kernels reach AVX-512 (ATen's
  CPU capability), and torch's BLAS on Intel ones and on AVX2-only CPUs, where both libraries run
  AVX2 kernels and whole training steps measured slower in oneDNN (:func:`vendor_default`);
* both libraries are then timed on a fixed set of training-sized products (:func:`measure`,
  about a second), and the other library replaces the default only where it is at least
  :data:`MARGIN` times as fast;
* the outcome is remembered per machine, torch build and thread count in
  ``$MODULM_CACHE_DIR/cpu_matmul.json`` (default ``~/.cache/modulm``), so every later run on the
  machine, a resume included, uses the same library and computes the same bits without timing
  again. Deleting the file measures afresh.

Other architectures, and torch builds without oneDNN's kernel, use torch's BLAS without a timing.
The two libraries differ only in float32 rounding (a relative 1e-6 per product); oneDNN's products
are deterministic, also across thread counts.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import torch

from modulm.fileio import atomic_write_text, cache_dir
from modulm.functional.plain import outside_dispatch_modes

CPU_MATMULS = ("auto", "onednn", "blas")
#: How much faster the other library must measure to replace the vendor's default: near a tie the
#: default stands, so timing noise cannot flip the choice from one machine of a kind to the next.
MARGIN = 1.05
#: The products :func:`measure` times, as ``(rows, k, n)`` of ``x (rows, k) @ W (n, k).T``, each
#: also as its two backward products: layers of the small benchmark models at 2048 tokens a step
#: (``benchmarks/bench_train_step.py``), about 2.5 G multiply-adds a round. Smaller products
#: misjudge the step: with oneDNN held to AVX2 on an AMD CPU, a 1024-row set measured 0.97–1.10
#: at 2 threads where these measured 1.09–1.12 and the step's own products a median 1.08
#: (``benchmarks/bench_gemm.py``).
PROBE_SHAPES = ((2048, 128, 384), (2048, 128, 2048), (2048, 512, 512), (2048, 1344, 512))
CACHE_FILE = "cpu_matmul.json"
# Environment variables that change which kernels the libraries run, so belong to the cache key.
_KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


@dataclass(frozen=True)
class CpuMatmul:
    """The library the CPU's float32 products use (``"onednn"`` or ``"blas"``) and why."""

    backend: str
    reason: str


@dataclass(frozen=True)
class Timing:
    """Seconds :data:`PROBE_SHAPES`' products take in each library (:func:`measure`)."""

    blas: float
    onednn: float

    @property
    def onednn_speedup(self) -> float:
        return self.blas / self.onednn


_CPUINFO = Path("/proc/cpuinfo")


def cpuinfo_field(name: str) -> str:
    """A field of ``/proc/cpuinfo`` (its first CPU's), or ``""`` where there is none."""
    try:
        for line in _CPUINFO.read_text().splitlines():
            if line.startswith(name) and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


@lru_cache(maxsize=1)
def cpu_vendor() -> str:
    """The CPU's vendor string (``GenuineIntel``, ``AuthenticAMD``, …), or ``""`` when unknown."""
    if vendor := cpuinfo_field("vendor_id"):
        return vendor
    for vendor in ("GenuineIntel", "AuthenticAMD", "HygonGenuine"):
        if vendor in platform.processor():
            return vendor
    return ""


@lru_cache(maxsize=1)
def onednn_available() -> bool:
    """Whether this torch has oneDNN's float32 linear kernel (and has not been told to avoid oneDNN)."""
    with outside_dispatch_modes():  # a first call under fake tensors would cache their (absent) answer
        try:
            op = torch.ops.mkldnn._linear_pointwise.default
            probe = op(torch.ones(2, 3), torch.ones(4, 3), None, "none", [], "")
        except (AttributeError, RuntimeError):
            return False
        return bool(torch.backends.mkldnn.is_available()) and bool(torch.equal(probe, torch.full((2, 4), 3.0)))


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def cpu_capability() -> str:
    """ATen's CPU capability (``AVX512``, ``AVX2``, …; ``ATEN_CPU_CAPABILITY`` lowers it)."""
    return torch.backends.cpu.get_cpu_capability()


def vendor_default() -> str:
    """The library the CPU suggests: oneDNN on x86 CPUs not made by Intel with AVX-512 (where MKL
    keeps to its AVX2 kernels and oneDNN does not), else torch's BLAS. Without AVX-512 both run AVX2
    kernels, and whole bench-tiny and bench-small training steps measured 0.86–0.94x as fast in
    oneDNN (an AMD Zen 4 held to AVX2, 2 threads; on a Zen 2 :func:`measure` gave 0.90–0.92x)."""
    vendor = cpu_vendor()
    avx512 = cpu_capability().startswith("AVX512")
    return "onednn" if _is_x86() and vendor and vendor != "GenuineIntel" and avx512 else "blas"


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(shapes=PROBE_SHAPES, rounds: int = 3) -> Timing:
    """Time every product of ``shapes`` (forward, ``grad @ W``, ``grad.T @ x``) in both libraries at
    the current thread count, the two interleaved product by product, after a warm-up. Each
    library's figure is the sum over the products of each one's fastest of ``rounds`` timings, so
    that a round slowed by other work on the machine does not count. Float32 CPU tensors whatever
    the defaults, without autograd, and unseen by an active dispatch mode (a ``FlopCounterMode``
    around a model's first product does not count the timing's products)."""
    with torch.no_grad(), outside_dispatch_modes():
        return _measure(shapes, rounds)


def layer_products(rows: int, k: int, n: int, generator: torch.Generator | None = None) -> dict[str, tuple]:
    """The three products of a linear layer's training step on random float32 CPU tensors, ``x @ W.T``,
    ``grad @ W`` and ``grad.T @ x`` for ``x (rows, k)``, ``W (n, k)``: ``name -> (blas, onednn)``,
    two calls computing the product in each library as :mod:`modulm.functional.linear` forms it."""
    from modulm.functional.linear import onednn_product, weight_grad  # the kernels the model calls

    x, w, grad = (torch.randn(size, generator=generator, dtype=torch.float32, device="cpu")
                  for size in ((rows, k), (n, k), (rows, n)))
    return {f"{rows}x{k} @ ({n}x{k}).T": (partial(torch.mm, x, w.t()), partial(onednn_product, x, w)),
            f"{rows}x{n} @ {n}x{k}": (partial(torch.mm, grad, w), partial(onednn_product, grad, w.t())),
            f"({rows}x{n}).T @ {rows}x{k}": (partial(torch.mm, grad.t(), x), partial(weight_grad, grad, x))}


def _measure(shapes, rounds: int) -> Timing:
    g = torch.Generator().manual_seed(0)
    pairs = [pair for shape in shapes for pair in layer_products(*shape, generator=g).values()]
    best = [[float("inf"), float("inf")] for _ in pairs]
    for attempt in range(rounds + 1):  # the first is the warm-up
        for fastest, pair in zip(best, pairs):
            for library, product in enumerate(pair):
                seconds = _seconds(product)
                if attempt:
                    fastest[library] = min(fastest[library], seconds)
    return Timing(sum(b for b, _ in best), sum(d for _, d in best))


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows of it."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def machine_key(threads: int) -> str:
    """What the measured choice depends on: the CPU model, torch's build, the kernel-limiting
    environment variables and the thread count."""
    model = cpu_model()
    limits = ",".join(f"{name}={os.environ[name]}" for name in _KERNEL_ENV if os.environ.get(name))
    return (f"{cpu_vendor() or 'unknown'} {model} | {cpu_capability()} | "
            f"torch {torch.__version__} | {limits or 'no kernel limits'} | {threads} threads")


@contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` where the platform and the file system allow one (so that
    processes starting together measure once); otherwise no lock."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except (ImportError, OSError):
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            pass
        yield


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _cached_timing(entry) -> Timing | None:
    try:
        timing = Timing(float(entry["blas_s"]), float(entry["onednn_s"]))
    except (KeyError, TypeError, ValueError):
        return None
    usable = all(math.isfinite(s) and s > 0 for s in (timing.blas, timing.onednn))
    return timing if usable else None


def remembered_timing(threads: int, directory: Path | None = None) -> tuple[Timing, str]:
    """The timing for this machine at ``threads`` from the cache, or measured now and stored there
    (where the cache can be written); and where it came from (``"measured"`` or ``"remembered"``)."""
    try:
        path = (directory or cache_dir()) / CACHE_FILE
    except (RuntimeError, KeyError):  # no home directory to be found
        return measure(), "measured"
    key = machine_key(threads)
    if (timing := _cached_timing(_read_cache(path).get(key))) is not None:
        return timing, "remembered"
    with _locked(path.with_name(CACHE_FILE + ".lock")):
        cache = _read_cache(path)  # another process may have measured while this one waited
        if (timing := _cached_timing(cache.get(key))) is not None:
            return timing, "remembered"
        timing = measure()
        cache[key] = {"blas_s": timing.blas, "onednn_s": timing.onednn, "measured": time.strftime("%Y-%m-%d")}
        try:
            atomic_write_text(path, json.dumps(cache, indent=1, sort_keys=True) + "\n")
        except OSError:
            pass  # a read-only home: this process keeps its own measurement
    return timing, "measured"


def choose(default: str, timing: Timing) -> str:
    """``default`` unless the other library measured at least :data:`MARGIN` times as fast."""
    if default == "blas":
        return "onednn" if timing.onednn_speedup >= MARGIN else "blas"
    return "blas" if 1 / timing.onednn_speedup >= MARGIN else "onednn"


def check_cpu_matmul(requested: str) -> None:
    """Raise ValueError for a value :func:`resolve_cpu_matmul` refuses, without timing anything."""
    if requested not in CPU_MATMULS:
        raise ValueError(f"cpu_matmul must be one of {CPU_MATMULS}, got {requested!r}")
    if requested == "onednn" and not onednn_available():
        raise ValueError("cpu_matmul = 'onednn': this torch build has no usable oneDNN linear kernel")


_NAMES = {"onednn": "oneDNN", "blas": "torch's BLAS"}


def resolve_cpu_matmul(requested: str = "auto") -> CpuMatmul:
    """Turn ``system.cpu_matmul`` (``auto``, ``onednn`` or ``blas``) into the library used here, at
    the current thread count (see the module's docstring for ``auto``)."""
    check_cpu_matmul(requested)
    if requested != "auto":
        return CpuMatmul(requested, f"{_NAMES[requested]}, as set")
    if not onednn_available():
        return CpuMatmul("blas", "auto: torch's BLAS (this torch has no usable oneDNN linear kernel)")
    if not _is_x86():
        return CpuMatmul("blas", f"auto: torch's BLAS ({platform.machine() or 'unknown'} CPU)")
    threads = torch.get_num_threads()
    timing, source = remembered_timing(threads)
    default = vendor_default()
    backend = choose(default, timing)
    overruled = "" if backend == default else f", overruling its default, {_NAMES[default]}"
    return CpuMatmul(backend, f"auto: {_NAMES[backend]} ({cpu_vendor() or 'unknown vendor'} {cpu_capability()} CPU"
                              f"{overruled}; oneDNN "
                              f"{timing.onednn_speedup:.2f}x torch's BLAS at {threads} thread{'s' * (threads != 1)}, {source})")


_backend: str | None = None  # None: resolve "auto" on first use


def set_cpu_matmul(requested: str) -> CpuMatmul:
    """Use ``requested`` (see :func:`resolve_cpu_matmul`) for this process's float32 CPU products."""
    global _backend
    with outside_dispatch_modes():  # probes and timings on real tensors, whatever runs above
        choice = resolve_cpu_matmul(requested)
    _backend = choice.backend
    return choice


def forget_cpu_matmul() -> None:
    """Back to the start: the next float32 CPU product resolves ``"auto"`` again."""
    global _backend
    _backend = None


def cpu_matmul() -> str:
    """The library this process's float32 CPU products use: ``"onednn"`` or ``"blas"`` (resolving
    ``"auto"`` on first use)."""
    if _backend is None:
        set_cpu_matmul("auto")
    return _backend  # type: ignore[return-value]


def chosen() -> str | None:
    """The library chosen so far, or None before any choice (never resolves: safe while compiling)."""
    return _backend
