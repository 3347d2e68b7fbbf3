"""GPT-2's pre-tokenization pattern for the standard library's ``re``, equal to ``regex``'s.

``regex`` spells the pattern with Unicode properties (``\\p{L}``, ``\\p{N}``), which ``re`` lacks.
This module asks ``regex`` itself which code points those properties (and ``\\s``) hold, and
writes them out as explicit classes. ``re`` matches a class of Basic Multilingual Plane code
points with one table lookup, about twice as fast as ``regex`` here, but scans classes of
astral code points range by range; so each run is spelt as BMP-class runs plus a cheap
"any astral code point" test followed by a one-character look-behind into the astral class.
The result splits every text exactly as ``regex`` with :data:`GPT2_PATTERN` does, on the
Unicode version of the installed ``regex`` (tests compare the two over every code point).

Possessive quantifiers need Python 3.11; on older Pythons ``regex`` is used as it is.
"""

from __future__ import annotations

import array
import functools
import re
import sys

import regex

#: GPT-2's pre-tokenization pattern (contractions, letter runs, number runs, other runs, spaces).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

_FIRST_ASTRAL = 0x10000
_ASTRAL = r"[\U00010000-\U0010FFFF]"


def _every_code_point() -> str:
    codec = "utf-32-le" if sys.byteorder == "little" else "utf-32-be"
    return array.array("I", range(sys.maxunicode + 1)).tobytes().decode(codec, "surrogatepass")


def _ranges(prop: str, text: str) -> list[tuple[int, int]]:
    """Inclusive code-point ranges that ``regex`` matches with the class ``prop``."""
    return [(m.start(), m.end() - 1) for m in regex.finditer(prop + "+", text)]


def _class_body(ranges: list[tuple[int, int]]) -> str:
    parts = []
    for low, high in ranges:
        parts.append(re.escape(chr(low)) if low == high else f"{re.escape(chr(low))}-{re.escape(chr(high))}")
    return "".join(parts)


def _split_planes(ranges: list[tuple[int, int]]) -> tuple[str, str]:
    bmp = [(low, min(high, _FIRST_ASTRAL - 1)) for low, high in ranges if low < _FIRST_ASTRAL]
    astral = [(max(low, _FIRST_ASTRAL), high) for low, high in ranges if high >= _FIRST_ASTRAL]
    return _class_body(bmp), _class_body(astral)


def _run(bmp_body: str, astral_test: str) -> str:
    """A maximal run of code points in (BMP class ∪ astral class), with GPT-2's optional space."""
    return rf" ?(?:[{bmp_body}]|{astral_test})[{bmp_body}]*+(?:{astral_test}[{bmp_body}]*+)*+"


def re_source() -> str:
    """The ``re`` spelling of :data:`GPT2_PATTERN`."""
    every = _every_code_point()
    letters_bmp, letters_astral = _split_planes(_ranges(r"\p{L}", every))
    numbers_bmp, numbers_astral = _split_planes(_ranges(r"\p{N}", every))
    space_bmp, space_astral = _split_planes(_ranges(r"\s", every))
    if space_astral:  # pragma: no cover - no Unicode version has astral white space
        raise RuntimeError("astral white space is not supported by the re spelling")
    letters = _run(letters_bmp, rf"{_ASTRAL}(?<=[{letters_astral}])")
    numbers = _run(numbers_bmp, rf"{_ASTRAL}(?<=[{numbers_astral}])")
    others = _run(rf"^{space_bmp}{letters_bmp}{numbers_bmp}\U00010000-\U0010FFFF",
                  rf"{_ASTRAL}(?<![{letters_astral}{numbers_astral}])")
    return rf"'(?:[sdmt]|ll|ve|re)|{letters}|{numbers}|{others}|[{space_bmp}]+(?![^{space_bmp}])|[{space_bmp}]+"


@functools.cache
def pretoken_pattern():
    """The compiled pre-tokenization pattern: ``re`` where it can be spelt, else ``regex``.

    Built on first use (about 50 ms) and shared by the process; forked workers inherit it.
    """
    if sys.version_info < (3, 11):  # pragma: no cover - possessive quantifiers arrived in 3.11
        return regex.compile(GPT2_PATTERN)
    return re.compile(re_source())
