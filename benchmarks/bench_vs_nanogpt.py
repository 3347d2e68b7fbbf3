"""Training-step throughput of modulm against nanoGPT's own model and optimizer, side by side.

One step = forward, loss, backward, optimizer step, zero_grad, on random tokens. nanoGPT's side is
``model.py`` of a nanoGPT checkout imported unmodified from ``--nanogpt DIR`` (``GPT`` with
``bias=False``, dropout 0, and its own ``configure_optimizers``: torch's AdamW, two decay groups,
F.cross_entropy inside its forward). modulm's side is ``TransformerLM`` (the CS336 defaults: RoPE,
SwiGLU, RMSNorm, untied head) with ``modulm_optim.AdamW`` and the loss as the trainer computes it
(``model(x, targets=y)``: the LM head fused with modulm's cross-entropy), its float32 products in
the library ``system.cpu_matmul = "auto"`` picks (``--cpu-matmul``; oneDNN on AMD CPUs with
AVX-512, torch's BLAS elsewhere unless its timing says otherwise). Both get n_embd/n_layer/n_head/vocab/block_size from the config; nanoGPT's MLP is its
own (GELU, 4 x d), and the configs' SwiGLU ``d_ff`` makes 3 d d_ff equal to within 2% of nanoGPT's
8 d^2, so the matmul FLOPs per token agree to within 1% (MFU is computed from each model's own
shapes, so the small difference is accounted for).

Each config at each thread count runs in a fresh child process, as each framework's own training
script would (one row's allocations would otherwise change the allocator's state for the next:
glibc raises its mmap threshold to the biggest block freed so far). Within it, each round is a
run of pairs of steps, one timed step of each side back to back (which side goes first
alternating, each after an untimed step of its own to warm the caches), so both sides of a pair
see the same load on the host: on a shared VM that load moves step times by 20% or more from one
second to the next, more than the gap being measured. The ratio a row reports is
the median over rounds of each round's median of its pairs' ratios (and the range of the rounds'
ratios); tokens/s is the median over rounds of each round's median step time, and "tok/s ratio"
their ratio, for comparison; and each side's minor page faults per step. The
fp32 (and, where used, bf16) matmul rate is sampled between rounds (float32 through both torch's
BLAS and oneDNN; the faster is the peak), and MFU is a step's training
FLOPs (3 x the forward matmul FLOPs, attention scores over the full T x T square) over the step
time and that rate. ``--allocator no-trim`` runs the children with glibc settings that keep freed
memory, for the comparison where neither side pays page faults for memory it frees and reallocates.

    flock /tmp/modulm-bench.lock python benchmarks/bench_vs_nanogpt.py --nanogpt /path/to/nanoGPT
        [--threads 1,2] [--configs tiny,small] [--dtypes fp32,bf16] [--rounds 3] [--steps 3] [--round-seconds 1]
        [--allocator default|no-trim] [--cpu-matmul auto|onednn|blas]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from modulm.functional.cpu_matmul import CPU_MATMULS, onednn_available, resolve_cpu_matmul, set_cpu_matmul
from modulm.functional.linear import onednn_product
from modulm_optim.adamw import AdamW
from modulm_transformer import TransformerLM
from modulm_transformer.accounting import forward_flops_per_token

from bench_train_step import CONFIGS, Config  # bench-tiny and bench-small, defined once there

LR, BETAS, WEIGHT_DECAY = 1e-3, (0.9, 0.95), 0.1


def load_nanogpt(directory: Path):
    """nanoGPT's ``model`` module, imported from ``directory/model.py`` as it is."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", directory / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bf16_native() -> bool:
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class Side:
    """One model, its optimizer and a step function; ``times`` holds each round's step times."""

    def __init__(self, name: str, model, optimizer, loss_of, flops_per_step: float) -> None:
        self.name, self.model, self.optimizer, self.loss_of = name, model, optimizer, loss_of
        self.flops_per_step = flops_per_step
        self.round_medians: list[float] = []  # each round's median step time
        self.faults = 0.0  # minor page faults per timed step of the last row

    def step(self, inputs, targets, autocast: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = self.loss_of(inputs, targets)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


def nanogpt_side(nanogpt, cfg: Config) -> Side:
    conf = nanogpt.GPTConfig(block_size=cfg.context_length, vocab_size=cfg.vocab_size, n_layer=cfg.num_layers,
                             n_head=cfg.num_heads, n_embd=cfg.d_model, dropout=0.0, bias=False)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints parameter counts
        model = nanogpt.GPT(conf)
        optimizer = model.configure_optimizers(WEIGHT_DECAY, LR, BETAS, "cpu")
    linear = forward_flops_per_token(model, cfg.context_length)["total"]  # its nn.Linear layers
    scores = 4 * cfg.context_length * cfg.d_model * cfg.num_layers  # QK^T and softmax.V
    flops = 3 * (linear + scores) * cfg.batch_size * cfg.context_length
    return Side("nanoGPT", model, optimizer, lambda x, y: model(x, y)[1], flops)


def modulm_side(cfg: Config) -> Side:
    model = TransformerLM(cfg.vocab_size, cfg.context_length, cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.d_ff)
    optimizer = AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    flops = 3 * forward_flops_per_token(model, cfg.context_length)["total"] * cfg.batch_size * cfg.context_length
    return Side("modulm", model, optimizer, lambda x, y: model(x, targets=y), flops)


class MatmulRate:
    """FLOP/s of an n x n x n product in one dtype, sampled between rounds through each library torch
    offers for it (float32: its BLAS and oneDNN; bf16: oneDNN, which torch.mm calls); ``peak`` is
    the best sample of the fastest (on a loaded machine the median would measure the other
    processes), ``peaks`` each library's best."""

    def __init__(self, dtype: torch.dtype, n: int = 1024) -> None:
        self.n, self.a, self.b = n, torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        self.products = {"blas" if dtype == torch.float32 else "oneDNN": lambda: torch.mm(self.a, self.b)}
        if dtype == torch.float32 and onednn_available():
            self.products["oneDNN"] = lambda: onednn_product(self.a, self.b)
        self.samples: dict[str, list[float]] = {name: [] for name in self.products}
        self.sample()

    def sample(self) -> None:
        for name, product in self.products.items():
            start = time.perf_counter()
            for _ in range(3):
                product()
            self.samples[name].append(3 * 2 * self.n**3 / (time.perf_counter() - start))

    @property
    def peaks(self) -> dict[str, float]:
        return {name: max(samples) for name, samples in self.samples.items()}

    @property
    def peak(self) -> float:
        return max(self.peaks.values())


def run_row(sides: list[Side], cfg: Config, autocast: bool, rate: MatmulRate, rounds: int, steps: int,
            warmup: int, round_seconds: float) -> tuple[int, list[float]]:
    """Time ``rounds`` rounds of ``steps`` pairs of steps; returns the pairs per round (at least
    ``steps``, more where a round would otherwise last under ``round_seconds``: a 60 ms step at 3
    steps a round is at the mercy of the other tenants of a shared host) and each round's median of
    its pairs' ratios (the first side's step time over the second's). A pair is one timed step of
    each side back to back, which side goes first alternating, so both see the same load on the
    host; each timed step follows an untimed one of the same side, as in training (a step right
    after the other model's ran up to 4% slower on bench-tiny, the caches holding the other's data);
    each side's ``round_medians`` gets each round's median step time, ``faults`` its minor page
    faults per timed step."""
    gen = torch.Generator().manual_seed(0)
    batch = [torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.context_length), generator=gen) for _ in range(2)]
    faults = {side.name: 0 for side in sides}
    pair_ratios = []
    for side in sides:
        side.round_medians = []
        warm = [side.step(*batch, autocast) for _ in range(max(warmup, 1))]
        steps = max(steps, math.ceil(round_seconds / min(warm)))
    for r in range(rounds):
        rate.sample()
        rate.sample()
        times: dict[str, list[float]] = {side.name: [] for side in sides}
        for i in range(steps):
            for side in (sides if (r + i) % 2 == 0 else sides[::-1]):
                side.step(*batch, autocast)  # untimed: brings its own weights and buffers back into the caches
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                times[side.name].append(side.step(*batch, autocast))
                faults[side.name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        for side in sides:
            side.round_medians.append(statistics.median(times[side.name]))
        pair_ratios.append(statistics.median(a / b for a, b in zip(times[sides[0].name], times[sides[1].name])))
    for side in sides:
        side.faults = faults[side.name] / (rounds * steps)
    return steps, pair_ratios


def measure(nanogpt_dir: Path, threads: int, key: str, dtypes: list[str], args) -> list[dict]:
    """One config at one thread count, every dtype (the work of one child process)."""
    torch.set_num_threads(threads)
    set_cpu_matmul(args.cpu_matmul)
    cfg = CONFIGS[key]
    torch.manual_seed(0)
    sides = [nanogpt_side(load_nanogpt(nanogpt_dir), cfg), modulm_side(cfg)]
    rows = []
    for dtype in dtypes:
        rate = MatmulRate(torch.bfloat16 if dtype == "bf16" else torch.float32)
        steps, round_ratios = run_row(sides, cfg, dtype == "bf16", rate, args.rounds, args.steps, args.warmup, args.round_seconds)
        n_tok = cfg.batch_size * cfg.context_length
        row = {"config": cfg.name, "threads": threads, "dtype": dtype, "steps": steps, "peak": rate.peak,
               "peaks": rate.peaks}
        for side in sides:
            seconds = statistics.median(side.round_medians)
            row[side.name] = {"tok_s": n_tok / seconds, "mfu": side.flops_per_step / seconds / rate.peak,
                              "faults": side.faults}
        row["round_ratios"] = round_ratios
        rows.append(row)
    return rows


# glibc's allocator hands big blocks back to the kernel when they are freed (and takes its
# mmap threshold from the biggest block freed so far), so a step that frees and reallocates
# tens of MB pays a page fault per 4 KiB touched; these keep freed memory in the process
NO_TRIM_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 32),
               "MALLOC_TOP_PAD_": str(64 << 20)}


def run_child(args, threads: int, key: str, dtypes: list[str]) -> list[dict]:
    command = [sys.executable, __file__, "--nanogpt", str(args.nanogpt), "--child", f"{threads}:{key}",
               "--dtypes", ",".join(dtypes), "--rounds", str(args.rounds), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--round-seconds", str(args.round_seconds), "--cpu-matmul", args.cpu_matmul]
    env = dict(os.environ, **(NO_TRIM_ENV if args.allocator == "no-trim" else {}))
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench_vs_nanogpt: the {threads}-thread {key} child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout (its model.py is imported unmodified)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--configs", default="tiny,small", help="comma-separated: tiny, small")
    parser.add_argument("--dtypes", default="fp32,bf16", help="fp32, bf16 (bf16 autocast only where native)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per row (medians over them)")
    parser.add_argument("--steps", type=int, default=3, help="timed pairs of steps (one per side) per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side before each row")
    parser.add_argument("--round-seconds", type=float, default=1.0,
                        help="more pairs per round where --steps pairs would take a side less than this")
    parser.add_argument("--allocator", choices=("default", "no-trim"), default="default",
                        help="no-trim: run the children with glibc's MALLOC_*_ settings that keep freed memory "
                             "(neither side then pays page faults for memory it frees and allocates again)")
    parser.add_argument("--cpu-matmul", choices=CPU_MATMULS, default="auto",
                        help="the library of modulm's float32 products (system.cpu_matmul); nanoGPT's are torch's default")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # THREADS:CONFIG, run by the parent
    args = parser.parse_args()
    if args.nanogpt is None or not (args.nanogpt / "model.py").is_file():
        print("skipped: pass --nanogpt DIR, a checkout of https://github.com/karpathy/nanoGPT (DIR/model.py)")
        return 0
    dtypes = args.dtypes.split(",")
    if unknown := sorted(set(dtypes) - {"fp32", "bf16"}):
        parser.error(f"--dtypes: unknown {', '.join(unknown)} (fp32, bf16)")
    if unknown := sorted(set(args.configs.split(",")) - set(CONFIGS)):
        parser.error(f"--configs: unknown {', '.join(unknown)} ({', '.join(CONFIGS)})")
    if args.child:
        threads, key = args.child.split(":")
        print(json.dumps(measure(args.nanogpt, int(threads), key, dtypes, args)))
        return 0
    if "bf16" in dtypes and not bf16_native():
        print("bf16 rows skipped: this CPU has no native bf16 matmul (it would be emulated)")
        dtypes.remove("bf16")
        if not dtypes:
            return 0
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16 {bf16_native()}, {args.rounds} rounds x at least {args.steps} pairs of steps "
          f"(and {args.round_seconds:g} s a side), one process per config and thread count, "
          f"allocator {args.allocator}")
    print(f"modulm's float32 CPU matmuls: {resolve_cpu_matmul(args.cpu_matmul).reason}; nanoGPT's: torch's default "
          "(its BLAS). MFU is against the faster library's peak.")
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        for key in args.configs.split(","):
            rows += run_child(args, threads, key, dtypes)
            print(f"  done: {threads} thread(s) {key}", file=sys.stderr, flush=True)
    print("\n| config | threads | dtype | nanoGPT tok/s | modulm tok/s | modulm / nanoGPT (paired) | per round | tok/s ratio | nanoGPT MFU "
          "| modulm MFU | matmul peak GFLOP/s | per library | page faults per step (nanoGPT / modulm) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for row in rows:
        nano, ours, per_round = row["nanoGPT"], row["modulm"], row["round_ratios"]
        libraries = ", ".join(f"{name} {peak / 1e9:.0f}" for name, peak in row["peaks"].items())
        print(f"| {row['config']} | {row['threads']} | {row['dtype']} | {nano['tok_s']:.0f} | {ours['tok_s']:.0f} | "
              f"{statistics.median(per_round):.2f} | {min(per_round):.2f}–{max(per_round):.2f} | "
              f"{ours['tok_s'] / nano['tok_s']:.2f} | "
              f"{100 * nano['mfu']:.0f}% | {100 * ours['mfu']:.0f}% | "
              f"{row['peak'] / 1e9:.0f} | {libraries} | {nano['faults']:.0f} / {ours['faults']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
