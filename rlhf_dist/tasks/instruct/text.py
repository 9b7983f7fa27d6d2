"""Reading a response the way the gold labeler does: words, statements, repetition, overlap.

All functions accept any string (the policy writes garbage) and never raise: they only use
regular expressions, membership tests and integer arithmetic (numbers stay strings, so a
10,000-digit "number" cannot hit int()'s digit limit).
"""

from __future__ import annotations

import re
from typing import NamedTuple, Sequence

from .vocab import COLORS, OBJECTS, PLACES, PREPOSITIONS

_WORD = re.compile(r"[a-z]+|\d+")
_NOUNS = frozenset(OBJECTS + PLACES)
_COLORS = frozenset(COLORS)
_PLACES = frozenset(PLACES)
_PREPS = frozenset(PREPOSITIONS)


def words(text: str) -> list[str]:
    """Lower-case words and digit runs; punctuation, case and spacing are ignored."""
    return _WORD.findall(text.lower())


class Statement(NamedTuple):
    """A claim "the <noun> is <color>" or "the <noun> is <prep> the <place>" at words[start:end]."""

    noun: str
    kind: str  # "color" or "place"
    value: str  # "blue" or "in the box"
    start: int
    end: int


def statements(ws: Sequence[str]) -> list[Statement]:
    """Every factual claim about a known noun in a word list, left to right.

    Claims about other subjects ("the answer is ...") are not facts of this world and are ignored.
    """
    found, i, n = [], 0, len(ws)
    while i + 3 < n:
        if ws[i] == "the" and ws[i + 1] in _NOUNS and ws[i + 2] == "is":
            if ws[i + 3] in _COLORS:
                found.append(Statement(ws[i + 1], "color", ws[i + 3], i, i + 4))
                i += 4
                continue
            if i + 5 < n and ws[i + 3] in _PREPS and ws[i + 4] == "the" and ws[i + 5] in _PLACES:
                found.append(Statement(ws[i + 1], "place", " ".join(ws[i + 3:i + 6]), i, i + 6))
                i += 6
                continue
        i += 1
    return found


def repeated_trigrams(ws: Sequence[str]) -> int:
    """How many word 3-grams repeat an earlier one: the signature of padding by repetition."""
    seen, repeats = set(), 0
    for i in range(len(ws) - 2):
        gram = (ws[i], ws[i + 1], ws[i + 2])
        if gram in seen:
            repeats += 1
        seen.add(gram)
    return repeats


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (the classic O(len(a) * len(b)) table, one row kept)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def sequence_credit(target: Sequence[str], got: Sequence[str]) -> float:
    """Partial credit for a sequence answer: LCS / max(len(target), len(got)).

    1 only for the exact sequence; an off-by-one or early stop loses one element's worth; extra
    or out-of-order elements lose in proportion. Symmetric in missing and surplus elements.
    """
    if not target:
        return 1.0 if not got else 0.0
    return lcs_length(target, got) / max(len(target), len(got))
