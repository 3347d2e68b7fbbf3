"""Decoding speed with and without the KV cache: 256 new tokens from the bench-small model.

bench-small: vocab 10000, context 512 (room for prompt + 256 new tokens), d_model 512, 4 layers,
16 heads, d_ff 1344; random weights, greedy decoding from a 16-token prompt. Without the cache each
new token recomputes the whole sequence; with it each new token costs one position.
Target: cached >= 5x faster.

    flock /tmp/modulm-bench.lock python benchmarks/bench_generate.py [--repeats 3] [--device cuda]
        [--context-length 1040 --new-tokens 1024]   # the GPU check: 1024 new tokens
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
    parser.add_argument("--context-length", type=int, default=512, help="the model's context (prompt + new tokens must fit)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    if 16 + args.new_tokens > args.context_length:
        parser.error(f"16 prompt tokens + --new-tokens {args.new_tokens} exceed --context-length {args.context_length}")
    torch.manual_seed(0)
    model = TransformerLM(10000, args.context_length, 512, 4, 16, 1344).to(args.device).eval()
    where = torch.cuda.get_device_name() if model.lm_head.weight.is_cuda else torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, {args.device} ({where}), {args.new_tokens} new tokens, context {args.context_length}")
    prompt = torch.randint(0, 10000, (16,)).tolist()
    check = min(32, args.new_tokens)
    same = list(generate_ids(model, prompt, check, temperature=0, use_cache=True)) == \
        list(generate_ids(model, prompt, check, temperature=0, use_cache=False))
    cached, full = [], []
    for _ in range(args.repeats):
        cached.append(tokens_per_second(model, prompt, args.new_tokens, True))
        full.append(tokens_per_second(model, prompt, args.new_tokens, False))
    c, f = statistics.median(cached), statistics.median(full)
    print(f"greedy outputs identical with and without cache ({check} tokens): {same}")
    print(f"with KV cache    {c:8.1f} tok/s")
    print(f"without cache    {f:8.1f} tok/s")
    print(f"speed-up         {c / f:8.2f}x  (target >= 5x on the CPU at 256 tokens, >= 10x on a GPU at 1024)")


if __name__ == "__main__":
    main()
