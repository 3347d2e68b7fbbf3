"""``modulm data prepare`` throughput against tiktoken, in a process without torch (as the CLI runs).

    flock /tmp/modulm-bench.lock python benchmarks/bench_prepare.py [--repeats 3] [--corpus pydocs_3.11.txt]

Encodes the corpus (default ``pydocs_3.11.txt`` from ``../shared/data``) with GPT-2's tokenizer
(modulm_bpe, built from the GPT-2 files shipped in ``data/gpt2``) through ``encode_files`` (the
encoder behind ``modulm data prepare`` and the ``text`` source) with 1 and 2 worker processes,
each run with a fresh tokenizer (empty pre-token cache), timed from pool start-up to the finished
``.npy``. References from the same files, same run: tiktoken's ``encode`` on one thread (its ids
must be identical) and ``encode_ordinary_batch`` over the documents on 2 threads. The target is
2 workers >= 0.5x tiktoken's 2-thread MB/s. The whole CLI command (interpreter start-up, imports,
tokenizer loading included) is timed too, for information. The four measurements run round-robin
(one warm-up round, then ``--repeats`` rounds) so a slow spell of the machine hits them alike; medians
are reported, and the range of the per-round ratios.
"""

from __future__ import annotations

import argparse
import lzma
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
GPT2 = REPO / "data" / "gpt2"
SEP = "<|endoftext|>"
TARGET = 0.5


def decompress(source: Path, folder: Path) -> Path:
    target = folder / source.name.removesuffix(".xz")
    with lzma.open(source, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return target


def timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--corpus", default="pydocs_3.11.txt", help="a file name in ../shared/data (without .xz)")
    args = parser.parse_args()

    from bench_bpe import documents, tiktoken_gpt2  # the same reference encoding as bench_bpe.py
    from modulm_bpe import Tokenizer
    from modulm_data.prepare import encode_files

    folder = Path(tempfile.mkdtemp(prefix="modulm-bench-prepare-", dir="/tmp"))
    try:
        text_path = decompress(SHARED / f"{args.corpus}.xz", folder)
        vocab, merges = decompress(GPT2 / "gpt2_vocab.json.xz", folder), decompress(GPT2 / "gpt2_merges.txt.xz", folder)
        Tokenizer.from_files(vocab, merges, [SEP]).save(folder / "gpt2")
        megabytes = text_path.stat().st_size / 1e6
        out = folder / "out.npy"
        print(f"prepare: {text_path.name} ({megabytes:.1f} MB), GPT-2 tokenizer; median of {args.repeats} rounds after a warm-up round")

        encoding = tiktoken_gpt2(str(folder))
        text = text_path.read_text(encoding="utf-8")
        docs = documents(text)

        def ours(workers: int) -> float:
            tokenizer = Tokenizer.from_files(vocab, merges, [SEP])  # fresh: empty pre-token cache
            started = time.perf_counter()  # the encoder alone, from pool start-up to the .npy
            encode_files([text_path], tokenizer, out, "uint16", workers, SEP)
            return time.perf_counter() - started

        runs = {
            "ours1": lambda: ours(1),
            "ours2": lambda: ours(2),
            "tiktoken1": lambda: timed(lambda: encoding.encode(text, allowed_special="all")),
            "tiktoken2": lambda: timed(lambda: encoding.encode_ordinary_batch(docs, num_threads=2)),
        }
        # Round-robin, so that a slow spell of this shared machine hits every contender alike.
        times: dict[str, list[float]] = {name: [] for name in runs}
        for round_ in range(args.repeats + 1):
            for name, run in runs.items():
                seconds = run()
                if round_:  # round 0 is the warm-up
                    times[name].append(seconds)
        median = {name: statistics.median(values) for name, values in times.items()}
        same = np.array_equal(np.load(out), np.asarray(encoding.encode(text, allowed_special="all"), dtype=np.uint16))
        for workers in (1, 2):
            print(f"  modulm encode_files, {workers} worker{'s' if workers > 1 else ' '}: "
                  f"{megabytes / median[f'ours{workers}']:6.2f} MB/s")
        print(f"  tiktoken encode, 1 thread: {megabytes / median['tiktoken1']:6.2f} MB/s (ids {'identical' if same else 'DIFFER'})")
        print(f"  tiktoken encode_ordinary_batch, 2 threads, {len(docs)} documents: "
              f"{megabytes / median['tiktoken2']:6.2f} MB/s")
        pair_ratios = [t / o for t, o in zip(times["tiktoken2"], times["ours2"])]
        ratio = median["tiktoken2"] / median["ours2"]
        print(f"  2 workers over 1: {median['ours1'] / median['ours2']:.2f}x; modulm / tiktoken: "
              f"{median['tiktoken1'] / median['ours1']:.3f} (1 worker vs 1 thread), {ratio:.3f} (2 workers vs 2 threads; "
              f"per round {min(pair_ratios):.3f}-{max(pair_ratios):.3f}; target >= {TARGET}: {'met' if ratio >= TARGET else 'NOT met'})")

        command = [sys.executable, "-c", "import sys; from modulm.cli import main; sys.exit(main(sys.argv[1:]))",
                   "data", "prepare", "--tokenizer", str(folder / "gpt2"), "--input", str(text_path),
                   "--output", str(folder / "cli.npy"), "--workers", "2"]
        run_cli = lambda: subprocess.run(command, check=True, capture_output=True)  # noqa: E731
        run_cli()
        cli = statistics.median(timed(run_cli) for _ in range(args.repeats))
        print(f"  for information, the whole command modulm data prepare --workers 2 (interpreter start-up, imports, "
              f"tokenizer loading): {cli:.2f} s, {megabytes / cli:.2f} MB/s")
        return 0 if same and ratio >= TARGET else 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
