"""Decoding speed with and without the KV cache: 256 new tokens from the bench-small model.

bench-small: vocab 10000, context 512 (room for prompt + 256 new tokens), d_model 512, 4 layers,
16 heads, d_ff 1344; random weights, greedy decoding from a 16-token prompt. Without the cache each
new token recomputes the whole sequence; with it each new token costs one position.
Target: cached >= 5x faster.

    flock /tmp/modulm-bench.lock python benchmarks/bench_generate.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from modulm.sampling import generate_ids
from modulm_transformer import TransformerLM


def tokens_per_second(model, prompt, new_tokens: int, use_cache: bool) -> float:
    start = time.perf_counter()
    produced = list(generate_ids(model, prompt, new_tokens, temperature=0, use_cache=use_cache))
    assert len(produced) == new_tokens
    return new_tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = TransformerLM(10000, 512, 512, 4, 16, 1344).eval()
    prompt = torch.randint(0, 10000, (16,)).tolist()
    same = list(generate_ids(model, prompt, 32, temperature=0, use_cache=True)) == \
        list(generate_ids(model, prompt, 32, temperature=0, use_cache=False))
    cached, full = [], []
    for _ in range(args.repeats):
        cached.append(tokens_per_second(model, prompt, args.new_tokens, True))
        full.append(tokens_per_second(model, prompt, args.new_tokens, False))
    c, f = statistics.median(cached), statistics.median(full)
    print(f"greedy outputs identical with and without cache (32 tokens): {same}")
    print(f"with KV cache    {c:8.1f} tok/s")
    print(f"without cache    {f:8.1f} tok/s")
    print(f"speed-up         {c / f:8.2f}x  (target >= 5x)")


if __name__ == "__main__":
    main()
