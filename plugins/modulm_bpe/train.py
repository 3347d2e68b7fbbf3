"""Byte-level BPE training as CS336 §2.4 defines it.

1. Pre-token counts: each input file is cut at safe points into byte ranges that worker processes
   pre-tokenize (special tokens split out first, GPT-2 pattern) and count; the counts are summed.
2. Merges: every pair of adjacent tokens inside a pre-token is counted once, weighted by the
   pre-token's frequency. Each step merges the most frequent pair (ties: the lexicographically
   greater pair of byte strings) and updates only the counts of pairs next to its occurrences,
   found through an index pair -> pre-tokens that hold it. A heap with lazy deletion yields the
   best pair: an entry whose count is out of date is re-pushed with the current count when it
   surfaces (counts of existing pairs only fall, so a stale entry is never too low).
3. Vocabulary: special tokens first, then the 256 single bytes, then the merges in creation order.
"""

from __future__ import annotations

import heapq
import multiprocessing
import os
from collections import Counter
from typing import Iterable, Mapping, Sequence

from modulm.errors import ModulmError
from modulm.machine import cpu_budget

from modulm_bpe.corpus import byte_ranges, check_inputs, count_job
from modulm_bpe.pretokenize import check_special_tokens

#: Ranges per worker process, so a slow range does not leave the other workers idle.
_RANGES_PER_WORKER = 4
#: Below this many input bytes an automatic worker count (``num_workers=None``) stays in-process.
_MIN_PARALLEL_BYTES = 1 << 20
_MAX_AUTO_WORKERS = 8

# Reversing a byte string's order for the min-heap: bytes b -> chr(255 - b), and a terminator
# that sorts after every such character, so a longer string with the same prefix comes first.
_REVERSE = {b: chr(255 - b) for b in range(256)}
_TERMINATOR = "\u0100"


def _descending_key(token: bytes) -> str:
    """A string whose ascending order is the descending order of the byte strings."""
    return token.decode("latin-1").translate(_REVERSE) + _TERMINATOR


def check_vocab_size(vocab_size, special_tokens: Sequence[str]) -> int:
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        raise ModulmError(f"vocab_size must be an integer, got {vocab_size!r}")
    smallest = 256 + len(special_tokens)
    if vocab_size < smallest:
        raise ModulmError(
            f"vocab_size {vocab_size} is too small: it must be at least 256 bytes + "
            f"{len(special_tokens)} special token(s) = {smallest}"
        )
    return vocab_size


def _check_training_specials(special_tokens) -> list[str]:
    tokens = check_special_tokens(special_tokens)
    for token in tokens:
        if len(token.encode("utf-8")) == 1:
            raise ModulmError(
                f"special token {token!r} is a single byte: it would duplicate that byte's token"
            )
    return tokens


def learn_merges(word_counts: Mapping[bytes, int], num_merges: int, progress: bool = False) -> list[tuple[bytes, bytes]]:
    """At most ``num_merges`` BPE merges over pre-tokens (as bytes) with their counts."""
    tokens: list[bytes] = [bytes([b]) for b in range(256)]
    keys: list[str] = [_descending_key(t) for t in tokens]
    words: list[list[int]] = []
    freqs: list[int] = []
    for word, count in word_counts.items():
        if len(word) > 1 and count > 0:
            words.append(list(word))
            freqs.append(count)

    # A pair (a, b) is the int a * stride + b: cheaper to hash than a tuple.
    stride = 256 + num_merges
    pair_count: dict[int, int] = {}
    pair_words: dict[int, set[int]] = {}
    for index, ids in enumerate(words):
        freq = freqs[index]
        left = ids[0]
        for right in ids[1:]:
            pair = left * stride + right
            pair_count[pair] = pair_count.get(pair, 0) + freq
            holders = pair_words.get(pair)
            if holders is None:
                pair_words[pair] = {index}
            else:
                holders.add(index)
            left = right
    heap = [(-count, keys[pair // stride], keys[pair % stride], pair) for pair, count in pair_count.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    bar = _progress_bar(num_merges, progress)
    while len(merges) < num_merges and heap:
        neg_count, _, _, pair = heap[0]
        count = pair_count.get(pair, 0)
        if count != -neg_count:  # stale entry: counts only fall, so re-queue at the current count
            if count > 0:
                heapq.heapreplace(heap, (-count, keys[pair // stride], keys[pair % stride], pair))
            else:
                heapq.heappop(heap)
            continue
        heapq.heappop(heap)
        a, b = divmod(pair, stride)
        new = len(tokens)
        tokens.append(tokens[a] + tokens[b])
        keys.append(_descending_key(tokens[new]))
        merges.append((a, b))
        del pair_count[pair]
        created = _merge_pair(words, freqs, pair_words.pop(pair), a, b, new, stride, pair_count, pair_words)
        for new_pair in created:
            heapq.heappush(heap, (-pair_count[new_pair], keys[new_pair // stride], keys[new_pair % stride], new_pair))
        if bar is not None and len(merges) % 64 == 0:
            bar.update(64)
    if bar is not None:
        bar.update(len(merges) - bar.n)
        bar.close()
    return [(tokens[a], tokens[b]) for a, b in merges]


def _merge_pair(words, freqs, holders: Iterable[int], a: int, b: int, new: int, stride: int,
                pair_count: dict[int, int], pair_words: dict[int, set[int]]) -> set[int]:
    """Replace (a, b) by ``new`` in the words that hold it; update neighbouring pair counts.

    Returns the pairs that contain ``new`` (their counts only grew during this step).
    """
    merged = a * stride + b
    created: set[int] = set()
    for index in holders:
        ids = words[index]
        try:
            i = ids.index(a)
        except ValueError:
            continue  # the word lost the pair to an earlier merge; the index is lazily pruned
        n = len(ids)
        freq = freqs[index]
        out = ids[:i]
        merged_before = False  # was out[-1] produced by this merge?
        changed = False
        while i < n:
            x = ids[i]
            if x == a and i + 1 < n and ids[i + 1] == b:
                if i:
                    if not merged_before:  # the old pair (previous, a) is gone
                        old = ids[i - 1] * stride + a
                        if old != merged:
                            pair_count[old] -= freq
                    fresh = out[-1] * stride + new
                    pair_count[fresh] = pair_count.get(fresh, 0) + freq
                    created.add(fresh)
                    pair_words.setdefault(fresh, set()).add(index)
                if i + 2 < n:  # the old pair (b, next) is gone
                    old = b * stride + ids[i + 2]
                    if old != merged:
                        pair_count[old] -= freq
                out.append(new)
                i += 2
                merged_before = changed = True
            else:
                if merged_before:
                    fresh = new * stride + x
                    pair_count[fresh] = pair_count.get(fresh, 0) + freq
                    created.add(fresh)
                    pair_words.setdefault(fresh, set()).add(index)
                out.append(x)
                i += 1
                merged_before = False
        if changed:
            words[index] = out
    return created


def count_pretokens(paths, special_tokens: Sequence[str], num_workers: int | None = None,
                    progress: bool = False) -> Counter:
    """Pre-token (str) counts over all files, in worker processes when it pays."""
    paths = check_inputs(paths)
    total_bytes = sum(os.path.getsize(p) for p in paths)
    if num_workers is None:
        workers = 1 if total_bytes < _MIN_PARALLEL_BYTES else min(cpu_budget(), _MAX_AUTO_WORKERS)
    elif isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ModulmError(f"num_workers must be a positive integer or None, got {num_workers!r}")
    else:
        workers = num_workers
    specials = tuple(special_tokens)
    jobs = []
    for path in paths:
        pieces = 1 if workers == 1 else workers * _RANGES_PER_WORKER
        jobs += [(str(path), begin, end, specials) for begin, end in byte_ranges(path, pieces, specials)]
    bar = _progress_bar(total_bytes, progress, unit="B", desc="pre-tokenize")
    counts: Counter = Counter()
    if workers == 1 or len(jobs) == 1:
        results = map(count_job, jobs)
        pool = None
    else:
        pool = _context().Pool(min(workers, len(jobs)))
        results = pool.imap_unordered(count_job, jobs)
    try:
        for partial, size in results:
            counts.update(partial)
            if bar is not None:
                bar.update(size)
    finally:
        if pool is not None:
            pool.terminate()
        if bar is not None:
            bar.close()
    return counts


def _context():
    # fork starts workers in milliseconds and needs no importable __main__; elsewhere the default.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def _progress_bar(total: int, enabled: bool, unit: str = "merge", desc: str = "merges"):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, unit_scale=unit == "B", desc=desc, leave=False)


def train_bpe(input_path, vocab_size: int, special_tokens: list[str], *, num_workers: int | None = None,
              progress: bool = False) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE tokenizer on one or more UTF-8 text files.

    input_path: a path or a list of paths to plain-text files
    vocab_size: the largest vocabulary size, counting special tokens, the 256 bytes and merges
    special_tokens: strings split out of the text before pre-tokenization, each given its own id
    num_workers: pre-tokenization processes; None picks by input size and CPU count
    progress: show progress bars (tqdm) on stderr

    Returns ``(vocab, merges)``: ids 0.. are the special tokens in order, then the 256 bytes, then
    one token per merge in creation order. Fewer merges are made if the corpus runs out of pairs.
    """
    specials = _check_training_specials(special_tokens)
    check_vocab_size(vocab_size, specials)
    paths = check_inputs(input_path)
    counts = count_pretokens(paths, specials, num_workers=num_workers, progress=progress)
    word_counts = {word.encode("utf-8"): count for word, count in counts.items()}
    del counts
    merges = learn_merges(word_counts, vocab_size - 256 - len(specials), progress=progress)
    vocab: dict[int, bytes] = {i: token.encode("utf-8") for i, token in enumerate(specials)}
    offset = len(vocab)
    vocab.update({offset + b: bytes([b]) for b in range(256)})
    offset += 256
    vocab.update({offset + j: left + right for j, (left, right) in enumerate(merges)})
    return vocab, merges
