"""The ``re`` spelling of GPT-2's pattern splits every text exactly as ``regex`` does."""

from __future__ import annotations

import re
import sys

import pytest
import regex
from hypothesis import given
from hypothesis import strategies as st

from modulm_bpe.fastpattern import GPT2_PATTERN, _every_code_point, pretoken_pattern

REFERENCE = regex.compile(GPT2_PATTERN)
needs_311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="the re spelling needs Python 3.11")


def same_split(text: str) -> None:
    assert pretoken_pattern().findall(text) == REFERENCE.findall(text)


@needs_311
def test_the_fast_pattern_is_re():
    assert isinstance(pretoken_pattern(), re.Pattern)


def test_every_code_point_is_listed_once_in_order():
    every = _every_code_point()
    assert len(every) == sys.maxunicode + 1
    assert [ord(every[i]) for i in (0, 0xD800, 0x10000, sys.maxunicode)] == [0, 0xD800, 0x10000, sys.maxunicode]


@pytest.mark.parametrize("separator", ["", " "])
def test_every_code_point_splits_alike(separator):
    """Each code point next to its neighbours, and each after a space (GPT-2's prefix)."""
    same_split(separator.join(_every_code_point()))


@pytest.mark.slow
@pytest.mark.parametrize("separator", ["a", "1", "\n", "'s", "  ", "\U0001F600", " \U00010400", "\U0001D7CE"])
def test_every_code_point_splits_alike_in_more_contexts(separator):
    same_split(separator.join(_every_code_point()))


astral = st.characters(min_codepoint=0x10000, blacklist_categories=("Cs",))
pieces = st.sampled_from(list("ab \n\t'sltvrdm1é_") + ["'ll", "  ", "\u00a0", "\U0001F600", "\U00010400", "\U0001D7CE"])


@given(st.lists(pieces | astral | st.characters(), max_size=60).map("".join))
def test_any_text_splits_alike(text):
    same_split(text)


def test_real_text_splits_alike():
    same_split("Once upon a time, 𝒜 cat's 123 dogs 😀😀 said: «héllo» — I'll   go.\n\n  x  \t\n")
