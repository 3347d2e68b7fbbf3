"""Pre-tokenization: special tokens split out first, then GPT-2's regex over the text between them.

:class:`PretokenStream` takes text in arbitrary pieces (file blocks, lines) and gives exactly the
pre-tokens and special tokens that one pass over the whole text would give, holding back only the
few characters whose pre-tokens could still change. Training and ``encode_iterable`` both use it.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator, Sequence

from modulm.errors import ModulmError
from modulm_bpe.fastpattern import GPT2_PATTERN, pretoken_pattern  # noqa: F401 (re-exported)

# Which pre-tokens of a text prefix are final? The GPT-2 pattern decides a match [start, end)
# from the characters before max(end + 1, start + 3): greedy runs look one character past their
# end, ``\s+(?!\S)`` looks one past, and the contraction alternative reads up to start + 2. So a
# match with end < len and start + 3 <= len is the same in any longer text.
_LOOKAHEAD = 3


def check_special_tokens(special_tokens: Iterable[str] | None) -> list[str]:
    """Validate a list of special tokens: strings, non-empty, no duplicates. Returns a new list."""
    if special_tokens is None:
        return []
    if isinstance(special_tokens, (str, bytes)):
        raise ModulmError(f"special tokens must be a list of strings, got the single value {special_tokens!r}")
    tokens = list(special_tokens)
    seen: set[str] = set()
    for token in tokens:
        if not isinstance(token, str):
            raise ModulmError(f"special token {token!r} is not a string")
        if not token:
            raise ModulmError("special tokens must be non-empty strings, got ''")
        if token in seen:
            raise ModulmError(f"special token {token!r} is given twice")
        seen.add(token)
    return tokens


def special_pattern(special_tokens: Sequence[str]) -> re.Pattern | None:
    """A pattern matching any special token, longest first where two start at the same place."""
    if not special_tokens:
        return None
    ordered = sorted(special_tokens, key=len, reverse=True)
    return re.compile("|".join(re.escape(t) for t in ordered))


def final_prefix_length(pretokens: list[str], text_length: int) -> tuple[int, int]:
    """Split the pre-tokens of an unfinished text into a final head and a tail that may change.

    Returns ``(count, tail_chars)``: the first ``count`` pre-tokens are final; the last
    ``tail_chars`` characters of the text must be re-read together with what follows.
    """
    position = text_length
    count = len(pretokens)
    limit = text_length - _LOOKAHEAD
    while count:
        start = position - len(pretokens[count - 1])
        if position == text_length or start > limit:
            position = start
            count -= 1
        else:
            break
    return count, text_length - position


class PretokenStream:
    """Turn text arriving in pieces into ``(pretokens, special)`` pairs, as if it came whole.

    ``feed(text)`` and ``finish()`` yield pairs: ``pretokens`` is the list of GPT-2 pre-tokens of
    ordinary text, ``special`` the special token that follows it, or ``None``. Held-back text is a
    few characters (or one unfinished pre-token), so memory stays bounded by the piece size.
    """

    def __init__(self, special_tokens: Sequence[str] = ()) -> None:
        self._special_re = special_pattern(special_tokens)
        self._max_special = max((len(t) for t in special_tokens), default=0)
        self._carry = ""

    def feed(self, text: str) -> Iterator[tuple[list[str], str | None]]:
        buffer = self._carry + text if self._carry else text
        self._carry = ""
        yield from self._split(buffer, final=False)

    def finish(self) -> Iterator[tuple[list[str], str | None]]:
        buffer, self._carry = self._carry, ""
        if buffer:
            yield from self._split(buffer, final=True)

    def _split(self, buffer: str, final: bool) -> Iterator[tuple[list[str], str | None]]:
        findall = pretoken_pattern().findall
        length = len(buffer)
        start = 0
        if self._special_re is not None:
            # A special-token match at s is final once s + longest special <= length: every
            # alternative that could start at s is fully visible, and none can start earlier.
            decided = length if final else length - self._max_special
            for match in self._special_re.finditer(buffer):
                if match.start() > decided:
                    break
                yield (findall(buffer, start, match.start()) if match.start() > start else []), match.group()
                start = match.end()
            open_end = length if final else max(start, length - self._max_special + 1)
        else:
            open_end = length
        if final:
            if start < length:
                yield findall(buffer, start, length), None
            return
        pretokens = findall(buffer, start, open_end) if open_end > start else []
        count, tail = final_prefix_length(pretokens, open_end - start)
        del pretokens[count:]
        self._carry = buffer[open_end - tail:]
        if pretokens:
            yield pretokens, None


def iter_pretokens(text: str, special_tokens: Sequence[str] = ()) -> Iterator[tuple[list[str], str | None]]:
    """The ``(pretokens, special)`` pairs of one whole text."""
    return PretokenStream(special_tokens)._split(text, final=True)
