"""Float32 matrix products on this CPU: torch's BLAS against oneDNN, for a config's training shapes.

For every linear layer of a config's training step (bench-tiny, bench-small, ...: the fused q/k/v
projection, attention output, SwiGLU's w1/w3 and w2, the LM head) it times the three products of
forward and backward, ``x @ W.T``, ``grad @ W`` and ``grad.T @ x``, both ways, interleaved, as
:mod:`modulm.functional.linear` forms them; and a 1024³ product. Each figure is the median of
``--repeats`` timings after a warm-up. The ratio oneDNN / BLAS (higher: oneDNN faster) is what
``system.cpu_matmul = "auto"`` judges from a shorter timing of its own
(:func:`modulm.functional.cpu_matmul.measure`); this script shows it product by product.

    flock /tmp/modulm-bench.lock python benchmarks/bench_gemm.py [--configs tiny,small] [--threads 1,2]
        [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from modulm.functional.cpu_matmul import cpu_vendor, layer_products, onednn_available, resolve_cpu_matmul

from bench_train_step import CONFIGS, Config


def products(rows: int, k: int, n: int) -> dict[str, tuple]:
    """``name -> (flops, blas, onednn)`` for one linear layer's forward and backward products."""
    pairs = layer_products(rows, k, n, torch.Generator().manual_seed(rows + k + n))
    return {name: (2 * rows * k * n, blas, dnn) for name, (blas, dnn) in pairs.items()}


def layer_shapes(cfg: Config) -> dict[str, tuple[int, int, int]]:
    rows, d = cfg.batch_size * cfg.context_length, cfg.d_model
    return {"q/k/v": (rows, d, 3 * d), "attention out": (rows, d, d), "w1/w3": (rows, d, 2 * cfg.d_ff),
            "w2": (rows, cfg.d_ff, d), "LM head": (rows, d, cfg.vocab_size)}


def median_seconds(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,small", help=f"comma-separated: {', '.join(CONFIGS)}")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--repeats", type=int, default=15, help="timings per product and library (median)")
    args = parser.parse_args()
    if unknown := sorted(set(args.configs.split(",")) - set(CONFIGS)):
        parser.error(f"--configs: unknown {', '.join(unknown)} ({', '.join(CONFIGS)})")
    if not onednn_available():
        print("skipped: this torch build has no usable oneDNN linear kernel (cpu_matmul is 'blas' here)")
        return 0
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"vendor {cpu_vendor() or 'unknown'}; system.cpu_matmul = \"auto\": {resolve_cpu_matmul('auto').reason}")
    print("\n| threads | config | layer | product | BLAS GFLOP/s | oneDNN GFLOP/s | oneDNN / BLAS |")
    print("|---:|---|---|---|---:|---:|---:|")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        square = next(iter(products(1024, 1024, 1024).values()))  # the forward product
        cases = [("", "square", {"1024³": square})]
        for key in args.configs.split(","):
            cases += [(CONFIGS[key].name, layer, products(*shape)) for layer, shape in layer_shapes(CONFIGS[key]).items()]
        ratios = []
        for config, layer, prods in cases:
            for name, (flops, blas, dnn) in prods.items():
                t_blas, t_dnn = median_seconds(blas, args.repeats), median_seconds(dnn, args.repeats)
                ratios.append(t_blas / t_dnn)
                print(f"| {threads} | {config} | {layer} | {name} | {flops / t_blas / 1e9:.0f} | "
                      f"{flops / t_dnn / 1e9:.0f} | {t_blas / t_dnn:.2f} |")
        print(f"| {threads} | | | median over the products | | | {statistics.median(ratios):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
