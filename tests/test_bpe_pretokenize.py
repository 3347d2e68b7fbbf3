"""Pre-tokenization: streaming equals one pass, safe cuts, UTF-8 decoding in blocks."""

from __future__ import annotations

from collections import Counter

import pytest
import regex
from hypothesis import given
from hypothesis import strategies as st

from modulm.errors import ModulmError
from modulm_bpe.corpus import byte_ranges, count_range, cut_pattern, iter_decoded, overlap_free
from modulm_bpe.pretokenize import GPT2_PATTERN, PretokenStream, iter_pretokens, special_pattern

EOT = "<|endoftext|>"
SPECIALS = [EOT, "<|x|>", "<|x|><|x|>", "x|>", "\n\n"]


def flatten(pairs) -> list:
    out: list = []
    for pretokens, special in pairs:
        out.extend(pretokens)
        if special is not None:
            out.append(("special", special))
    return out


def whole(text: str, specials) -> list:
    return flatten(iter_pretokens(text, specials))


def reference(text: str, specials) -> list:
    """Split on specials (longest first), then findall on each piece: the definition."""
    out: list = []
    if specials:
        pattern = regex.compile("(" + "|".join(regex.escape(t) for t in sorted(specials, key=len, reverse=True)) + ")")
        pieces = pattern.split(text)
    else:
        pieces = [text]
    for i, piece in enumerate(pieces):
        if i % 2:
            out.append(("special", piece))
        else:
            out.extend(regex.findall(GPT2_PATTERN, piece))
    return out


text_alphabet = st.sampled_from(list("ab \n\t'sltvrdm1é<|x>") + [EOT, "\u00a0", "  ", "'ll"])
texts = st.lists(text_alphabet | st.characters(blacklist_categories=("Cs",)), max_size=40).map("".join)
special_sets = st.lists(st.sampled_from(SPECIALS), unique=True, max_size=4)


def test_handout_example():
    assert whole("some text that i'll pre-tokenize", []) == [
        "some", " text", " that", " i", "'ll", " pre", "-", "tokenize"]


def test_longest_special_token_wins():
    assert whole("a<|x|><|x|>b<|x|>", ["<|x|>", "<|x|><|x|>"]) == [
        "a", ("special", "<|x|><|x|>"), "b", ("special", "<|x|>")]


@given(texts, special_sets)
def test_one_pass_matches_the_definition(text, specials):
    assert whole(text, specials) == reference(text, specials)


@given(texts, special_sets, st.lists(st.integers(1, 7), min_size=1, max_size=20))
def test_streaming_in_any_pieces_equals_one_pass(text, specials, sizes):
    stream = PretokenStream(specials)
    got, i, k = [], 0, 0
    while i < len(text):
        step = sizes[k % len(sizes)]
        got += flatten(stream.feed(text[i:i + step]))
        i, k = i + step, k + 1
    got += flatten(stream.finish())
    assert got == whole(text, specials)


def test_stream_holds_back_only_a_few_characters():
    stream = PretokenStream([EOT])
    emitted = flatten(stream.feed("hello world " * 1000))
    assert len(stream._carry) <= len(EOT) + 8
    assert emitted + flatten(stream.finish()) == whole("hello world " * 1000, [EOT])


def test_overlap_detection():
    assert overlap_free([EOT])
    assert overlap_free([EOT, "<pad>"])
    assert not overlap_free(["<|x|>", "<|x|><|x|>"])  # one contains the other
    assert not overlap_free(["ab", "bc"])  # suffix of one is a prefix of the other
    assert not overlap_free(["aa"])  # overlaps itself
    assert cut_pattern(["a\nb", "ab", "b"]) is None  # no safe cut of either kind


def test_files_are_cut_into_several_ranges(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("word.\n" * 10_000)
    assert len(byte_ranges(lines, 4, [])) == 4
    docs = tmp_path / "docs.txt"
    docs.write_text(("story " * 50 + EOT) * 200)  # one line: cuts only at the special token
    ranges = byte_ranges(docs, 4, [EOT])
    assert len(ranges) == 4
    data = docs.read_bytes()
    assert all(data[begin:].startswith(EOT.encode()) for begin, _ in ranges[1:])


@given(texts, st.lists(st.sampled_from([EOT, "<pad>", "\n\n", "<|x|>", "<|x|><|x|>"]), unique=True, max_size=3),
       st.integers(2, 9))
def test_counts_over_cut_ranges_equal_counts_of_the_whole(tmp_path_factory, text, specials, pieces):
    path = tmp_path_factory.mktemp("r") / "t.txt"
    body = (text + "a\nb" + text + EOT) * 3
    path.write_bytes(body.encode("utf-8"))
    ranges = byte_ranges(path, pieces, specials)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(body.encode("utf-8"))
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    total: Counter = Counter()
    for begin, end in ranges:
        total.update(count_range(str(path), begin, end, specials))
    expected = Counter(t for t in whole(body, specials) if isinstance(t, str))
    assert total == expected


@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=60), st.integers(1, 5))
def test_decoding_in_tiny_blocks_splits_no_character(tmp_path_factory, text, block):
    path = tmp_path_factory.mktemp("d") / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    size = len(text.encode("utf-8"))
    assert "".join(iter_decoded(path, 0, size, block=block)) == text


def test_bad_utf8_offset_is_exact_even_across_blocks(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("éé".encode() + b"\xe2\x28\xa1")
    with pytest.raises(ModulmError, match="byte offset 4 "):
        list(iter_decoded(path, 0, 7, block=3))


def test_special_pattern_is_none_without_specials():
    assert special_pattern([]) is None
    assert special_pattern(["a", "abc"]).match("abcd").group() == "abc"
