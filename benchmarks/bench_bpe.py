"""BPE training and encoding speed against Hugging Face ``tokenizers`` and ``tiktoken``, same run.

    flock /tmp/modulm-bench.lock python benchmarks/bench_bpe.py [--repeats 3] [--json out.json]

Training: ``train_bpe`` with 2 worker processes against ``tokenizers``' BpeTrainer (ByteLevel
pre-tokenizer with GPT-2's pattern, the same special token, ``RAYON_NUM_THREADS=2``), vocab 10,000
on TinyStories (2 MB) and pydocs (11 MB), and 32,000 on pydocs. Target: at most 3x its time.
Encoding: the GPT-2 vocabulary from ``shared/data``; one process ``Tokenizer.encode`` against
tiktoken's single-thread ``encode`` on an encoding built offline from the same files (target: at
least 0.33x its MB/s), and ``modulm data prepare``'s encoder with two worker processes against
tiktoken's ``encode_ordinary_batch`` with 2 threads (target on pydocs: 0.5x its MB/s; the rows
"with loading" also time reading the GPT-2 files on both sides).

Every measurement runs in a fresh child process (one warm-up, then ``--repeats`` timed runs,
median reported), so peak RSS (``ru_maxrss`` of the child; for our trainer also its largest
worker) belongs to that measurement alone. Corpora are decompressed into a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EOT = "<|endoftext|>"
CORPORA = {"tinystories": "tinystories_v2_train_head2M.txt", "pydocs": "pydocs_3.11.txt"}
TRAIN_CASES = [("tinystories", 10_000), ("pydocs", 10_000), ("pydocs", 32_000)]
TRAIN_TARGET = 3.0
ENCODE_TARGET = 0.33
PARALLEL_ENCODE_TARGET = 0.5


# -- children: each measures one thing and prints one JSON line --------------------------------

def _peak_rss_mb() -> tuple[float, float]:
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, workers


def _timed(run, repeats: int) -> list[float]:
    run()  # warm-up: imports, page cache, first-touch allocations
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return times


def child_train_ours(path: str, vocab_size: int, repeats: int) -> dict:
    from modulm_bpe.train import count_pretokens, learn_merges, train_bpe

    times = _timed(lambda: train_bpe(path, vocab_size, [EOT], num_workers=2), repeats)
    # Where the time goes: the two phases of one more run, timed apart.
    started = time.perf_counter()
    counts = count_pretokens([path], [EOT], num_workers=2)
    counted = time.perf_counter()
    learn_merges({w.encode("utf-8"): c for w, c in counts.items()}, vocab_size - 257)
    merged = time.perf_counter()
    own, workers = _peak_rss_mb()
    return {"times": times, "rss_mb": own, "worker_rss_mb": workers, "unique_pretokens": len(counts),
            "pretokenize_s": counted - started, "merge_s": merged - counted}


def child_train_hf(path: str, vocab_size: int, repeats: int) -> dict:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    def run():
        tokenizer = Tokenizer(models.BPE())
        # ByteLevel's own regex is GPT-2's pattern.
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tokenizer.train([path], trainer)

    times = _timed(run, repeats)
    own, _ = _peak_rss_mb()
    return {"times": times, "rss_mb": own}


def _gpt2_paths(folder: str) -> tuple[str, str]:
    return os.path.join(folder, "gpt2_vocab.json"), os.path.join(folder, "gpt2_merges.txt")


def child_encode_ours(path: str, folder: str, repeats: int) -> dict:
    from modulm_bpe import Tokenizer

    text = Path(path).read_text(encoding="utf-8")
    vocab, merges = _gpt2_paths(folder)
    fresh = []  # a new tokenizer per run: the pre-token cache starts empty

    def cold():
        fresh.append(Tokenizer.from_files(vocab, merges, [EOT]))
        started = time.perf_counter()
        ids = fresh[-1].encode(text)
        return time.perf_counter() - started, len(ids)

    cold()
    cold_runs = [cold() for _ in range(repeats)]
    warm_tokenizer = fresh[-1]
    warm = _timed(lambda: warm_tokenizer.encode(text), repeats)
    own, _ = _peak_rss_mb()
    return {"times": [t for t, _ in cold_runs], "warm_times": warm, "tokens": cold_runs[0][1], "rss_mb": own}


def tiktoken_gpt2(folder: str):
    import tiktoken

    from modulm_bpe.files import read_vocab
    from modulm_bpe.pretokenize import GPT2_PATTERN

    vocab_path, _ = _gpt2_paths(folder)
    ranks = {token: i for i, token in read_vocab(vocab_path).items() if i != 50256}
    return tiktoken.Encoding("gpt2-offline", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: 50256})


def child_encode_tiktoken(path: str, folder: str, repeats: int) -> dict:
    encoding = tiktoken_gpt2(folder)
    text = Path(path).read_text(encoding="utf-8")
    times = _timed(lambda: encoding.encode(text, allowed_special="all"), repeats)
    own, _ = _peak_rss_mb()
    return {"times": times, "rss_mb": own}


def documents(text: str) -> list[str]:
    return [doc for doc in text.split(EOT) if doc]


def child_encode_parallel_ours(path: str, folder: str, repeats: int, with_loading: bool) -> dict:
    """``modulm data prepare``'s encoder (``encode_files``) with 2 worker processes, cold cache each run.

    Timed from pool start-up to the finished ``.npy`` file; ``with_loading`` also times reading
    the GPT-2 files into a tokenizer.
    """
    from modulm_bpe import Tokenizer
    from modulm_data.prepare import encode_files

    out = os.path.join(folder, "parallel.npy")

    def once() -> float:
        started = time.perf_counter()
        tokenizer = Tokenizer.from_files(*_gpt2_paths(folder), [EOT])
        loaded = time.perf_counter()
        encode_files([path], tokenizer, out, "uint16", workers=2, separator=EOT)
        return time.perf_counter() - (started if with_loading else loaded)

    once()
    times = [once() for _ in range(repeats)]
    own, workers = _peak_rss_mb()
    return {"times": times, "rss_mb": own, "worker_rss_mb": workers}


def child_encode_parallel_tiktoken(path: str, folder: str, repeats: int, with_loading: bool) -> dict:
    """tiktoken's ``encode_ordinary_batch`` over the documents with 2 threads (``with_loading``:
    building the encoding from the same files is timed too)."""
    docs = documents(Path(path).read_text(encoding="utf-8"))
    shared = tiktoken_gpt2(folder)  # reused unless loading is timed: a used encoding is fastest

    def once() -> float:
        started = time.perf_counter()
        encoding = tiktoken_gpt2(folder) if with_loading else shared
        encoding.encode_ordinary_batch(docs, num_threads=2)
        return time.perf_counter() - started

    once()
    times = [once() for _ in range(repeats)]
    own, _ = _peak_rss_mb()
    return {"times": times, "rss_mb": own}


CHILDREN = {f.__name__: f for f in (child_train_ours, child_train_hf, child_encode_ours, child_encode_tiktoken,
                                    child_encode_parallel_ours, child_encode_parallel_tiktoken)}


# -- the parent: prepare data, run children, print the table -------------------------------------

def run_child(name: str, *args) -> dict:
    env = dict(os.environ, RAYON_NUM_THREADS="2", TOKENIZERS_PARALLELISM="true")
    command = [sys.executable, __file__, "--child", name, json.dumps(list(args))]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def decompress(folder: str) -> dict[str, str]:
    paths = {}
    for name in [*CORPORA.values(), "gpt2_vocab.json", "gpt2_merges.txt"]:
        target = os.path.join(folder, name)
        with lzma.open(SHARED_DATA / f"{name}.xz", "rb") as source, open(target, "wb") as out:
            out.write(source.read())
        paths[name] = target
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--only", choices=("train", "encode"), help="run one half")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[args.child](*json.loads(args.args))))
        return 0

    rows = []
    with tempfile.TemporaryDirectory(prefix="modulm-bench-bpe-") as folder:
        paths = decompress(folder)
        if args.only in (None, "train"):
            for corpus, vocab_size in TRAIN_CASES:
                path = paths[CORPORA[corpus]]
                size = os.path.getsize(path)
                ours = run_child("child_train_ours", path, vocab_size, args.repeats)
                ref = run_child("child_train_hf", path, vocab_size, args.repeats)
                t_ours, t_ref = statistics.median(ours["times"]), statistics.median(ref["times"])
                rows.append({
                    "task": f"train {corpus} vocab {vocab_size}", "bytes": size,
                    "ours_s": t_ours, "ref_s": t_ref, "ours_rss_mb": ours["rss_mb"],
                    "ours_worker_rss_mb": ours["worker_rss_mb"], "ref_rss_mb": ref["rss_mb"],
                    "ratio": t_ours / t_ref, "target": f"<= {TRAIN_TARGET}x", "ok": t_ours <= TRAIN_TARGET * t_ref,
                    "note": f"pre-tokenize {ours['pretokenize_s']:.2f} s + merges {ours['merge_s']:.2f} s, "
                            f"{ours['unique_pretokens']} unique pre-tokens",
                })
        if args.only in (None, "encode"):
            for corpus, file in CORPORA.items():
                path, size = paths[file], os.path.getsize(paths[file])
                ours = run_child("child_encode_ours", path, folder, args.repeats)
                ref = run_child("child_encode_tiktoken", path, folder, args.repeats)
                t_ours, t_ref = statistics.median(ours["times"]), statistics.median(ref["times"])
                t_warm = statistics.median(ours["warm_times"])
                rows.append({
                    "task": f"encode {corpus} (1 process)", "bytes": size, "ours_s": t_ours, "ref_s": t_ref,
                    "ours_rss_mb": ours["rss_mb"], "ref_rss_mb": ref["rss_mb"],
                    "ratio": t_ref / t_ours, "target": f">= {ENCODE_TARGET}x MB/s", "ok": t_ref / t_ours >= ENCODE_TARGET,
                    "note": f"cold cache; warm {size / 1e6 / t_warm:.1f} MB/s ({t_ref / t_warm:.2f}x)",
                })
                for with_loading in (False, True):
                    ref = run_child("child_encode_parallel_tiktoken", path, folder, args.repeats, with_loading)
                    ours = run_child("child_encode_parallel_ours", path, folder, args.repeats, with_loading)
                    t_ours, t_ref = statistics.median(ours["times"]), statistics.median(ref["times"])
                    targeted = corpus == "pydocs" and not with_loading
                    rows.append({
                        "task": f"encode {corpus} (2 workers{', with loading' if with_loading else ''})",
                        "bytes": size, "ours_s": t_ours, "ref_s": t_ref,
                        "ours_rss_mb": ours["rss_mb"], "ours_worker_rss_mb": ours["worker_rss_mb"],
                        "ref_rss_mb": ref["rss_mb"], "ratio": t_ref / t_ours,
                        "target": f">= {PARALLEL_ENCODE_TARGET}x MB/s" if targeted else None,
                        "ok": t_ref / t_ours >= PARALLEL_ENCODE_TARGET if targeted else None,
                        "note": ("prepare's encode_files to .npy vs encode_ordinary_batch, 2 threads"
                                 + ("; both also read the GPT-2 files" if with_loading else "")),
                    })
    print_table(rows, args.repeats)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0 if all(row["ok"] is not False for row in rows) else 1


def print_table(rows: list[dict], repeats: int) -> None:
    print(f"median of {repeats} runs after one warm-up; reference = tokenizers (train) / tiktoken (encode)")
    print("| task | ours s | ours MB/s | ours peak RSS MB | ref s | ref MB/s | ref peak RSS MB | ratio | target | ok | note |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        mb = row["bytes"] / 1e6
        rss = f"{row['ours_rss_mb']:.0f}"
        if "ours_worker_rss_mb" in row:
            rss += f" (+ workers {row['ours_worker_rss_mb']:.0f} each)"
        print(f"| {row['task']} | {row['ours_s']:.3f} | {mb / row['ours_s']:.1f} | {rss} | {row['ref_s']:.3f} | "
              f"{mb / row['ref_s']:.1f} | {row['ref_rss_mb']:.0f} | {row['ratio']:.2f}x | {row['target'] or '-'} | "
              f"{ {True: 'yes', False: 'NO', None: '-'}[row['ok']]} | {row['note']} |")


if __name__ == "__main__":
    sys.exit(main())
