"""BPE training: the CS336 worked example, a naive reference, vocabulary invariants, parallel runs, errors."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modulm.errors import ModulmError
from modulm_bpe import train_bpe
from modulm_bpe.pretokenize import pretoken_pattern
from modulm_bpe.train import learn_merges
from tests.bpe_support import corpus_slice

EOT = "<|endoftext|>"


def naive_merges(word_counts: dict[bytes, int], num_merges: int) -> list[tuple[bytes, bytes]]:
    """The textbook algorithm: recount every pair before each merge (slow, obviously right)."""
    words = {tuple(bytes([b]) for b in word): count for word, count in word_counts.items()}
    merges = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(best)
        merged: Counter = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


# -- the handout's example ----------------------------------------------------------------------

def test_cs336_worked_example_gives_the_handout_merges():
    # CS336 assignment 1, section 2.4: whitespace pre-tokens {low: 5, lower: 2, widest: 3, newest: 6}.
    counts = {b"low": 5, b"lower": 2, b"widest": 3, b"newest": 6}
    merges = learn_merges(counts, 12)
    expected = ["s t", "e st", "o w", "l ow", "w est", "n e", "ne west", "w i", "wi d", "wid est", "low e", "lowe r"]
    assert [f"{a.decode()} {b.decode()}" for a, b in merges] == expected
    assert learn_merges(counts, 6) == merges[:6]


def test_tie_break_prefers_the_lexicographically_greater_pair():
    # ("A","B"), ("A","C"), ("B","ZZ"), ("BA","A") tie in the handout; here each pair occurs once.
    counts = {b"AB": 1, b"AC": 1, b"BZ": 1}
    assert learn_merges(counts, 1) == [(b"B", b"Z")]
    # A longer byte string with the same prefix is the greater one.
    assert learn_merges({b"ab": 1, b"a": 5}, 1) == [(b"a", b"b")]


def test_train_bpe_vocab_layout_on_a_file(tmp_path):
    path = write(tmp_path, "c.txt", ("low low lower newest widest " * 20 + EOT) * 3)
    vocab, merges = train_bpe(path, 270, [EOT])
    assert vocab[0] == EOT.encode()
    assert [vocab[1 + b] for b in range(256)] == [bytes([b]) for b in range(256)]
    assert [vocab[257 + j] for j in range(len(merges))] == [a + b for a, b in merges]
    assert len(vocab) == 270 and len(merges) == 13


def test_special_tokens_block_merges_across_them(tmp_path):
    # "ab" occurs only across a special token, so no merge may produce it; "cd" is ordinary.
    path = write(tmp_path, "c.txt", ("a<|x|>b cd " * 50))
    _, merges = train_bpe(path, 300, ["<|x|>"])
    products = {a + b for a, b in merges}
    assert b"ab" not in products and b"cd" in products
    assert not any(b"<|x|>" in p for p in products)


def test_stops_when_no_pairs_are_left(tmp_path):
    path = write(tmp_path, "c.txt", "ab ab ab")
    vocab, merges = train_bpe(path, 1000, [])
    assert merges == [(b"a", b"b"), (b" ", b"ab")]
    assert len(vocab) == 256 + 2


def test_matches_the_naive_reference_on_real_text():
    text = corpus_slice("tinyshakespeare.txt", 60_000)
    counts = Counter(pretoken_pattern().findall(text))
    word_counts = {w.encode(): c for w, c in counts.items()}
    assert learn_merges(word_counts, 120) == naive_merges(word_counts, 120)


words = st.dictionaries(st.binary(min_size=1, max_size=8), st.integers(1, 20), max_size=12)


@given(words, st.integers(0, 40))
def test_incremental_merges_equal_the_naive_reference(word_counts, num_merges):
    assert learn_merges(word_counts, num_merges) == naive_merges(word_counts, num_merges)


@given(words.map(lambda d: {k.replace(b"\x00", b"a") or b"a": v for k, v in d.items()}), st.integers(0, 60))
def test_incremental_merges_on_small_alphabets(word_counts, num_merges):
    # Few distinct bytes: many overlapping occurrences (aaa, abab) and many ties.
    reduced = {bytes(b % 3 + 97 for b in w): c for w, c in word_counts.items()}
    assert learn_merges(reduced, num_merges) == naive_merges(reduced, num_merges)


corpus_text = st.text(st.sampled_from(list("ab c\n\n'sé1!<|x>")) | st.characters(blacklist_categories=("Cs",)),
                      max_size=300)
special_lists = st.lists(st.sampled_from([EOT, "<|x|>", "<|x|><|x|>", "\n\n"]), unique=True, max_size=3)


@given(corpus_text, special_lists, st.integers(256 + 3, 400))
def test_vocab_invariants(tmp_path_factory, text, specials, vocab_size):
    path = write(tmp_path_factory.mktemp("c"), "c.txt", text)
    vocab, merges = train_bpe(path, vocab_size, specials, num_workers=1)
    assert len(vocab) <= vocab_size
    assert sorted(vocab) == list(range(len(vocab)))
    values = list(vocab.values())
    assert len(set(values)) == len(values), "byte strings must be unique"
    known = {bytes([b]) for b in range(256)}
    for left, right in merges:
        assert left in known and right in known, "merge parts must be earlier tokens"
        known.add(left + right)
    for token in specials:
        assert token.encode() in values


@given(corpus_text, special_lists)
def test_parallel_training_equals_single_process(tmp_path_factory, text, specials):
    folder = tmp_path_factory.mktemp("c")
    first = write(folder, "a.txt", text * 3)
    second = write(folder, "b.txt", text[::-1] + "x\ny" * 5)
    single = train_bpe([first, second], 330, specials, num_workers=1)
    parallel = train_bpe([first, second], 330, specials, num_workers=2)
    assert parallel == single


def test_parallel_equals_single_on_a_corpus_slice(tmp_path):
    path = write(tmp_path, "ts.txt", corpus_slice("tinystories_v2_train_head2M.txt", 300_000))
    assert train_bpe(path, 600, [EOT], num_workers=3) == train_bpe(path, 600, [EOT], num_workers=1)


# -- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("vocab_size, specials, message", [
    (256, [EOT], "too small"),
    (100, [], "too small"),
    ("300", [], "must be an integer"),
    (300, ["", EOT], "non-empty"),
    (300, [EOT, EOT], "given twice"),
    (300, ["a"], "single byte"),
    (300, EOT, "list of strings"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, vocab_size, specials, message):
    path = write(tmp_path, "c.txt", "hello")
    with pytest.raises(ModulmError, match=message) as info:
        train_bpe(path, vocab_size, specials)
    assert "\n" not in str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ModulmError, match="input file not found: .*nope.txt"):
        train_bpe([write(tmp_path, "ok.txt", "x"), tmp_path / "nope.txt"], 300, [])


@pytest.mark.parametrize("workers", [1, 2])
def test_invalid_utf8_reports_the_byte_offset(tmp_path, workers):
    path = tmp_path / "bad.txt"
    good = ("word\n" * 50_000).encode()
    path.write_bytes(good + b"\xc3\x28 tail\n" + good)
    with pytest.raises(ModulmError, match=f"byte offset {len(good)}"):
        train_bpe(path, 300, [], num_workers=workers)


def test_truncated_utf8_at_the_end_is_reported(tmp_path):
    path = tmp_path / "cut.txt"
    path.write_bytes("abc é".encode()[:-1])
    with pytest.raises(ModulmError, match="byte offset 4"):
        train_bpe(path, 300, [])


def test_bad_num_workers(tmp_path):
    with pytest.raises(ModulmError, match="num_workers"):
        train_bpe(write(tmp_path, "c.txt", "x"), 300, [], num_workers=0)
