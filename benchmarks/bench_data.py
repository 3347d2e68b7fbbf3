"""Data-loading cost against the training step it feeds, and ``prepare`` throughput; same run.

1. A token file of ``--tokens`` (default 100 M) random uint16 ids is generated in a temporary
   folder (deleted at the end). For the bench-tiny (batch 16, context 128) and bench-small
   (batch 8, context 256) shapes it times one batch from ``MemmapSource.get_batch`` (positioned
   reads, what training uses) and from ``modulm_data.get_batch`` on the memory map, and one
   training step of the plain-PyTorch reference model of that shape (``RefLM`` from
   ``bench_train_step.py``: nn.Linear, F.scaled_dot_product_attention, torch.optim.AdamW). The ratio batch / step is the share of a
   step spent loading data; the target is < 2 %. The file sits in the page cache (it was just
   written), as it does after the first pass of any run.
2. The id check of that file (a full chunked scan, then the cached result).
3. ``prepare`` throughput: ``benchmarks/bench_prepare.py`` in a fresh process (no torch, as the
   CLI runs): ``pydocs_3.11.txt`` with GPT-2's tokenizer, 1 and 2 worker processes, against
   tiktoken on 1 and 2 threads (target: 2 workers >= 0.5x tiktoken's 2-thread MB/s).

    flock /tmp/modulm-bench.lock python benchmarks/bench_data.py [--tokens 100000000]
        [--steps 10] [--batches 2000] [--repeats 5] [--device cpu|cuda] [--skip-prepare]

With ``--device cuda`` batches are copied to the GPU (pinned memory, non-blocking) and the step runs
there; every timed call ends with ``torch.cuda.synchronize()``, so batch times include the copy.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from modulm_data import MemmapSource, get_batch
from modulm_data.checks import check_file_for
from modulm_data.tools import make_dummy

from bench_train_step import CONFIGS, Config, RefLM

# The shapes and the plain-PyTorch model are bench_train_step.py's reference, written once there.
SHAPES = (CONFIGS["tiny"], CONFIGS["small"])


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_seconds(s: Config, steps: int, warmup: int, device: str) -> float:
    """Median time of one training step: forward, cross-entropy, backward, AdamW step, zero_grad."""
    torch.manual_seed(0)
    model = RefLM(s).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    inputs = torch.randint(0, s.vocab_size, (s.batch_size, s.context_length), device=device)
    targets = torch.randint(0, s.vocab_size, (s.batch_size, s.context_length), device=device)
    times = []
    for i in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def per_call_seconds(fn, batches: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean time per call over ``batches`` calls (after a warm-up)."""
    for _ in range(min(200, batches)):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            fn()
        samples.append((time.perf_counter() - start) / batches)
    return statistics.median(samples)


# -- part 1 and 2: batches against steps, the id check --------------------------------------------
def bench_batches(folder: Path, tokens: int, steps: int, batches: int, repeats: int, device: str) -> None:
    path = folder / "tokens.npy"
    start = time.perf_counter()
    make_dummy(path, tokens, 10000, seed=0)
    print(f"generated {tokens:,} uint16 tokens ({path.stat().st_size / 2**20:,.0f} MiB) in {time.perf_counter() - start:.1f}s")

    start = time.perf_counter()
    source = MemmapSource(str(path), 10000, seed=0)
    first_scan = time.perf_counter() - start
    assert check_file_for(path).exists()
    start = time.perf_counter()
    MemmapSource(str(path), 10000, seed=0)
    cached = time.perf_counter() - start
    print(f"id check: first scan {first_scan:.2f}s ({tokens / first_scan / 1e6:,.0f} M tokens/s), "
          f"cached {cached * 1e3:.1f} ms\n")

    mapped = source.tokens("train")
    generator = torch.Generator().manual_seed(0)
    header = f"{'shape':12} {'batch x ctx':>11} {'source.get_batch':>17} {'get_batch(memmap)':>18} {'train step':>11} {'share of step':>14}"
    print(header)
    print("-" * len(header))
    for s in SHAPES:
        def from_source_call():
            source.get_batch("train", s.batch_size, s.context_length, device)
            synchronize(device)

        def from_map_call():
            get_batch(mapped, s.batch_size, s.context_length, device, generator)
            synchronize(device)

        from_source = per_call_seconds(from_source_call, batches, repeats)
        from_map = per_call_seconds(from_map_call, batches, repeats)
        step = step_seconds(s, steps, warmup=3, device=device)
        print(f"{s.name:12} {f'{s.batch_size} x {s.context_length}':>11} {from_source * 1e6:>14.1f} us "
              f"{from_map * 1e6:>15.1f} us {step * 1e3:>8.1f} ms {100 * from_source / step:>12.3f} %")
    where = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} torch threads"
    print(f"\ntarget: source.get_batch < 2 % of a training step ({where})")


# -- part 3: prepare throughput ---------------------------------------------------------------------
def bench_prepare(repeats: int) -> None:
    """Run benchmarks/bench_prepare.py in a fresh process: without torch, as ``modulm data prepare`` runs."""
    print()
    script = Path(__file__).with_name("bench_prepare.py")
    subprocess.run([sys.executable, str(script), "--repeats", str(repeats)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=100_000_000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--skip-prepare", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="modulm-bench-data-", dir="/tmp"))
    try:
        bench_batches(folder, args.tokens, args.steps, args.batches, args.repeats, args.device)
        if not args.skip_prepare:
            bench_prepare(max(1, math.ceil(args.repeats / 2)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
