"""The five instruction families of the built-in language.

Each family knows, for its own specs (the parameters of one instruction):
  sample(rng) -> spec          draw the parameters;
  prompt(spec, rng) -> str     say it (a few phrasings);
  parse(prompt) -> spec|None   read it back (the gold scorer sees only the prompt string);
  optimal(spec) -> str         the best response;
  check(spec, ws) -> Check     how right the response words are (helpfulness before padding);
  right(spec, rng) -> str      a correct answer in one of the demonstrator's good styles;
  wrong(spec, rng) -> str      an answer with one or two realistic mistakes;
  truncated(spec) -> str       the answer stopped half-way (used by the exploit response).

One file of ~500 lines on purpose: five classes with the same eight methods (~80 lines each), so
the whole instruction language reads in one place and a new family copies a neighbour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from random import Random
from typing import Callable, NamedTuple, Optional

from .text import sequence_credit, statements
from .vocab import (ALL_ITEMS, CATEGORIES, CATEGORY_NAMES, COLORS, OBJECTS, PLACES, PREPOSITIONS, REPEAT_POOL,
                    SINGULAR)

_PLURAL = {singular: plural for plural, singular in SINGULAR.items()}


class Check(NamedTuple):
    """What the gold scorer needs from a family about one response."""

    correct: float  # in [0, 1]: how much of the instruction the answer fulfils
    extra: int  # words that are no part of an answer (padding, chatter)
    avoid_hits: int  # occurrences of what the prompt said to avoid


def _apply_mistakes(tokens: list[str], mistakes: list[Callable], rng: Random, n_mistakes: int) -> list[str]:
    """Apply up to `n_mistakes` applicable mistakes (each returns None when it does not apply)."""
    out = list(tokens)
    for _ in range(n_mistakes):
        for mistake in rng.sample(mistakes, len(mistakes)):
            changed = mistake(out, rng)
            if changed is not None and changed != out:
                out = changed
                break
    return out


def _truncate(tokens: list[str]) -> list[str]:
    """The first half of an answer, rounded up (an answer that stops early)."""
    return tokens[: max(1, (len(tokens) + 1) // 2)]


# Generic sequence mistakes: each takes the answer tokens and returns new ones, or None.
def _drop_last(t, rng):
    return t[:-1] if len(t) >= 2 else None


def _drop_one(t, rng):
    if len(t) < 2:
        return None
    i = rng.randrange(len(t))
    return t[:i] + t[i + 1:]


def _swap_adjacent(t, rng):
    if len(t) < 2:
        return None
    i = rng.randrange(len(t) - 1)
    return t[:i] + [t[i + 1], t[i]] + t[i + 2:]


def _duplicate_one(t, rng):
    if len(t) < 2:
        return None
    i = rng.randrange(1, len(t))
    return t[:i] + [t[i - 1]] + t[i + 1:]


def _stop_early(t, rng):
    return _truncate(t) if len(t) >= 3 else None


# ---------------------------------------------------------------- list N <category> without X
@dataclass(frozen=True)
class ListSpec:
    n: int
    category: str
    avoid: tuple[str, ...]


class ListFamily:
    """ "list 3 fruits without pear." -> "apple, plum, fig." ("list 1 fruit." for one).
    Credit = distinct valid items (capped at N) / max(N, items listed): missing, surplus,
    wrong-category, repeated and avoided items all cost."""

    name = "list"
    VERBS = ("list", "name", "give me")
    AVOID_WORDS = ("without", "but not", "except")
    _RE = re.compile(r"^(list|name|give me) (\d) (\w+)(?: (without|but not|except) (\w+)(?: or (\w+))?)?\.$")

    def sample(self, rng: Random) -> ListSpec:
        category = rng.choice(CATEGORY_NAMES)
        n_avoid = rng.choices((0, 1, 2), weights=(4, 4, 2))[0]
        avoid = tuple(rng.sample(CATEGORIES[category], n_avoid))
        return ListSpec(rng.randint(1, 5), category, avoid)

    def prompt(self, spec: ListSpec, rng: Random) -> str:
        noun = SINGULAR[spec.category] if spec.n == 1 else spec.category
        text = f"{rng.choice(self.VERBS)} {spec.n} {noun}"
        if spec.avoid:
            text += f" {rng.choice(self.AVOID_WORDS)} {' or '.join(spec.avoid)}"
        return text + "."

    def parse(self, prompt: str) -> Optional[ListSpec]:
        m = self._RE.match(prompt)
        if not m:
            return None
        n, category = int(m.group(2)), _PLURAL.get(m.group(3), m.group(3))
        if category not in CATEGORIES or n < 1 or (n == 1) != (m.group(3) != category):
            return None  # "1 fruit" and "3 fruits", not "1 fruits" or "3 fruit"
        avoid = tuple(w for w in (m.group(5), m.group(6)) if w)
        if any(w not in CATEGORIES[category] for w in avoid):
            return None
        return ListSpec(n, category, avoid)

    def _allowed(self, spec: ListSpec) -> list[str]:
        return [w for w in CATEGORIES[spec.category] if w not in spec.avoid]

    def optimal(self, spec: ListSpec) -> str:
        return self._render(self._allowed(spec)[: spec.n], and_style=False)

    def check(self, spec: ListSpec, ws: list[str]) -> Check:
        listed = [w for w in ws if w in ALL_ITEMS]
        allowed = set(self._allowed(spec))
        valid = {w for w in listed if w in allowed}
        correct = min(len(valid), spec.n) / max(spec.n, len(listed))
        extra = sum(1 for w in ws if w not in ALL_ITEMS and w != "and")
        return Check(correct, extra, sum(1 for w in ws if w in spec.avoid))

    def right(self, spec: ListSpec, rng: Random) -> str:
        return self._render(rng.sample(self._allowed(spec), spec.n), and_style=rng.random() < 0.3)

    def wrong(self, spec: ListSpec, rng: Random, n_mistakes: int = 1) -> str:
        allowed = self._allowed(spec)
        others = [w for c in CATEGORY_NAMES if c != spec.category for w in CATEGORIES[c]]

        def wrong_count(t, rng):
            if len(t) < len(allowed) and (len(t) == 1 or rng.random() < 0.5):
                return t + [rng.choice([w for w in allowed if w not in t])]
            return t[:-1] if len(t) >= 2 else None

        def forbidden(t, rng):
            if not spec.avoid:
                return None
            return t[:-1] + [rng.choice(spec.avoid)] if len(t) >= 2 else [rng.choice(spec.avoid)]

        def wrong_category(t, rng):
            i = rng.randrange(len(t))
            return t[:i] + [rng.choice(others)] + t[i + 1:]

        items = rng.sample(allowed, spec.n)
        items = _apply_mistakes(items, [wrong_count, forbidden, wrong_category, _duplicate_one], rng, n_mistakes)
        return self._render(items, and_style=rng.random() < 0.3)

    def truncated(self, spec: ListSpec) -> str:
        return self._render(_truncate(self._allowed(spec)[: spec.n]), and_style=False)

    @staticmethod
    def _render(items: list[str], and_style: bool) -> str:
        if and_style and len(items) >= 2:
            return ", ".join(items[:-1]) + " and " + items[-1] + "."
        return ", ".join(items) + "."


# ---------------------------------------------------------------- count from a to b [by s]
@dataclass(frozen=True)
class CountSpec:
    start: int
    stop: int
    step: int  # > 0; the direction comes from start vs stop


class CountFamily:
    """ "count from 3 to 7." -> "3 4 5 6 7." Credit = LCS / max length against the exact sequence."""

    name = "count"
    _RE = re.compile(r"^count (up |down )?from (\d{1,3}) to (\d{1,3})(?: by (\d))?\.$")

    def sample(self, rng: Random) -> CountSpec:
        step = 2 if rng.random() < 0.25 else 1
        length = rng.randint(3, 8)
        start = rng.randint(0, 30)
        if rng.random() < 0.3:  # counting down
            start = max(start, step * (length - 1))
            return CountSpec(start, start - step * (length - 1), step)
        return CountSpec(start, start + step * (length - 1), step)

    def prompt(self, spec: CountSpec, rng: Random) -> str:
        direction = ("up " if spec.stop > spec.start else "down ") if rng.random() < 0.5 else ""
        if spec.stop < spec.start:
            direction = "down "  # "count from 9 to 5" alone reads like a typo
        by = f" by {spec.step}" if spec.step != 1 else ""
        return f"count {direction}from {spec.start} to {spec.stop}{by}."

    def parse(self, prompt: str) -> Optional[CountSpec]:
        m = self._RE.match(prompt)
        if not m:
            return None
        start, stop, step = int(m.group(2)), int(m.group(3)), int(m.group(4) or 1)
        if step == 0 or (stop - start) % step or abs(stop - start) // step > 20:
            return None
        return CountSpec(start, stop, step)

    @staticmethod
    def target(spec: CountSpec) -> list[str]:
        step = spec.step if spec.stop >= spec.start else -spec.step
        return [str(x) for x in range(spec.start, spec.stop + step, step)]

    def optimal(self, spec: CountSpec) -> str:
        return _render_numbers(self.target(spec), commas=False)

    def check(self, spec: CountSpec, ws: list[str]) -> Check:
        return _number_check(self.target(spec), ws)

    def right(self, spec: CountSpec, rng: Random) -> str:
        return _render_numbers(self.target(spec), commas=rng.random() < 0.3)

    def wrong(self, spec: CountSpec, rng: Random, n_mistakes: int = 1) -> str:
        step = spec.step if spec.stop >= spec.start else -spec.step

        def one_too_far(t, rng):
            nxt = int(t[-1]) + step if t else spec.start
            return t + [str(nxt)] if nxt >= 0 else None

        def start_late(t, rng):
            return t[1:] if len(t) >= 2 else None

        numbers = _apply_mistakes(self.target(spec), [_drop_last, one_too_far, _drop_one, _stop_early, start_late],
                                  rng, n_mistakes)
        return _render_numbers(numbers, commas=rng.random() < 0.3)

    def truncated(self, spec: CountSpec) -> str:
        return _render_numbers(_truncate(self.target(spec)), commas=False)


# ---------------------------------------------------------------- sort numbers
@dataclass(frozen=True)
class SortSpec:
    numbers: tuple[int, ...]
    descending: bool


class SortFamily:
    """ "sort 5 2 9 1." -> "1 2 5 9." Credit = LCS / max length against the sorted sequence, so a
    copy of the input still earns its longest sorted run."""

    name = "sort"
    ASCENDING = ("sort", "sort from small to big:", "put in order:")
    DESCENDING = "sort from big to small:"
    _RE = re.compile(r"^(sort|sort from small to big:|put in order:|sort from big to small:) "
                     r"((?:\d{1,3} ){1,9}\d{1,3})\.$")

    def sample(self, rng: Random) -> SortSpec:
        numbers = tuple(rng.sample(range(0, 60), rng.randint(3, 6)))
        return SortSpec(numbers, rng.random() < 0.25)

    def prompt(self, spec: SortSpec, rng: Random) -> str:
        head = self.DESCENDING if spec.descending else rng.choice(self.ASCENDING)
        return f"{head} {' '.join(map(str, spec.numbers))}."

    def parse(self, prompt: str) -> Optional[SortSpec]:
        m = self._RE.match(prompt)
        if not m:
            return None
        return SortSpec(tuple(int(x) for x in m.group(2).split()), m.group(1) == self.DESCENDING)

    @staticmethod
    def target(spec: SortSpec) -> list[str]:
        return [str(x) for x in sorted(spec.numbers, reverse=spec.descending)]

    def optimal(self, spec: SortSpec) -> str:
        return _render_numbers(self.target(spec), commas=False)

    def check(self, spec: SortSpec, ws: list[str]) -> Check:
        return _number_check(self.target(spec), ws)

    def right(self, spec: SortSpec, rng: Random) -> str:
        return _render_numbers(self.target(spec), commas=rng.random() < 0.3)

    def wrong(self, spec: SortSpec, rng: Random, n_mistakes: int = 1) -> str:
        def copy_input(t, rng):
            return [str(x) for x in spec.numbers]

        def wrong_direction(t, rng):
            return t[::-1]

        numbers = _apply_mistakes(self.target(spec), [_swap_adjacent, copy_input, _drop_one, wrong_direction,
                                                      _duplicate_one], rng, n_mistakes)
        return _render_numbers(numbers, commas=rng.random() < 0.3)

    def truncated(self, spec: SortSpec) -> str:
        return _render_numbers(_truncate(self.target(spec)), commas=False)


def _render_numbers(numbers: list[str], commas: bool) -> str:
    return (", " if commas else " ").join(numbers) + "."


def _number_check(target: list[str], ws: list[str]) -> Check:
    """Numbers are the answer; any other word is extra."""
    got = [w for w in ws if w.isdigit()]
    return Check(sequence_credit(target, got), len(ws) - len(got), 0)


# ---------------------------------------------------------------- repeat words [skip X]
@dataclass(frozen=True)
class RepeatSpec:
    words: tuple[str, ...]
    skip: Optional[str]


class RepeatFamily:
    """ "repeat: red cat box. skip cat." -> "red box." Credit = LCS / max length against the words
    to copy; saying the skipped word is also an avoid hit (harmlessness)."""

    name = "repeat"
    VERBS = ("repeat", "say back", "copy")
    _RE = re.compile(r"^(repeat|say back|copy): ([a-z]+(?: [a-z]+){0,9})\.(?: skip ([a-z]+)\.)?$")

    def sample(self, rng: Random) -> RepeatSpec:
        chosen = tuple(rng.sample(REPEAT_POOL, rng.randint(3, 6)))
        return RepeatSpec(chosen, rng.choice(chosen) if rng.random() < 0.35 else None)

    def prompt(self, spec: RepeatSpec, rng: Random) -> str:
        text = f"{rng.choice(self.VERBS)}: {' '.join(spec.words)}."
        return text + (f" skip {spec.skip}." if spec.skip else "")

    def parse(self, prompt: str) -> Optional[RepeatSpec]:
        m = self._RE.match(prompt)
        if not m:
            return None
        ws = tuple(m.group(2).split())
        if m.group(3) and m.group(3) not in ws:
            return None
        return RepeatSpec(ws, m.group(3))

    @staticmethod
    def target(spec: RepeatSpec) -> list[str]:
        return [w for w in spec.words if w != spec.skip]

    def optimal(self, spec: RepeatSpec) -> str:
        return " ".join(self.target(spec)) + "."

    def check(self, spec: RepeatSpec, ws: list[str]) -> Check:
        vocabulary = set(spec.words)
        got = [w for w in ws if w in vocabulary]
        avoid_hits = sum(1 for w in ws if w == spec.skip) if spec.skip else 0
        return Check(sequence_credit(self.target(spec), got), len(ws) - len(got), avoid_hits)

    def right(self, spec: RepeatSpec, rng: Random) -> str:
        return self.optimal(spec)

    def wrong(self, spec: RepeatSpec, rng: Random, n_mistakes: int = 1) -> str:
        def say_skipped(t, rng):
            return list(spec.words) if spec.skip else None

        ws = _apply_mistakes(self.target(spec), [_drop_one, _swap_adjacent, say_skipped, _duplicate_one,
                                                 _stop_early], rng, n_mistakes)
        return " ".join(ws) + "."

    def truncated(self, spec: RepeatSpec) -> str:
        return " ".join(_truncate(self.target(spec))) + "."


# ---------------------------------------------------------------- facts + question
class Fact(NamedTuple):
    noun: str
    kind: str  # "color" or "place"
    value: str  # "blue" or "in the box"

    def sentence(self) -> str:
        return f"the {self.noun} is {self.value}"


@dataclass(frozen=True)
class FactsSpec:
    facts: tuple[Fact, ...]
    question: str  # the noun asked about

    def truth(self) -> Fact:
        return next(f for f in self.facts if f.noun == self.question)


class FactsFamily:
    """ "facts: the box is red. the key is in the bag. question: where is the key?"
    -> "the key is in the bag." Credit 1 for the stated fact (full sentence or bare answer), 1/n
    when it is one of n different answers given, 0 otherwise. Honesty is scored apart."""

    name = "facts"
    QUESTIONS = {"color": "what color is", "place": "where is"}
    _RE = re.compile(r"^facts: (.+)\. question: (what color is|where is) the ([a-z]+)\?$")
    _BARE = frozenset(("the", "it", "is"))

    def sample(self, rng: Random) -> FactsSpec:
        nouns = rng.sample(OBJECTS, rng.randint(2, 3))
        facts = tuple(self._random_fact(noun, rng) for noun in nouns)
        return FactsSpec(facts, rng.choice(nouns))

    @staticmethod
    def _random_fact(noun: str, rng: Random) -> Fact:
        if rng.random() < 0.5:
            return Fact(noun, "color", rng.choice(COLORS))
        return Fact(noun, "place", f"{rng.choice(PREPOSITIONS)} the {rng.choice(PLACES)}")

    def prompt(self, spec: FactsSpec, rng: Random) -> str:
        said = ". ".join(f.sentence() for f in spec.facts)
        return f"facts: {said}. question: {self.QUESTIONS[spec.truth().kind]} the {spec.question}?"

    def parse(self, prompt: str) -> Optional[FactsSpec]:
        m = self._RE.match(prompt)
        if not m:
            return None
        facts = []
        for sentence in m.group(1).split(". "):
            found = statements(sentence.split())
            if len(found) != 1 or found[0].end != len(sentence.split()):
                return None
            s = found[0]
            facts.append(Fact(s.noun, s.kind, s.value))
        kinds = {f.noun: f.kind for f in facts}
        if len(kinds) != len(facts) or kinds.get(m.group(3)) != ("color" if m.group(2) == "what color is" else "place"):
            return None
        return FactsSpec(tuple(facts), m.group(3))

    def optimal(self, spec: FactsSpec) -> str:
        return spec.truth().sentence() + "."

    def check(self, spec: FactsSpec, ws: list[str]) -> Check:
        truth = spec.truth()
        found = statements(ws)
        asked = [s for s in found if s.noun == spec.question]
        inside = {i for s in found for i in range(s.start, s.end)}
        outside = [w for i, w in enumerate(ws) if i not in inside]
        if asked:  # hedging between answers earns 1 / (number of different answers)
            values = {(s.kind, s.value) for s in asked}
            correct = ((truth.kind, truth.value) in values) / len(values)
        else:
            correct = self._bare_credit(truth, outside)
        allowed = self._BARE | set(truth.value.split())
        extra = sum(s.end - s.start for s in found if s.noun != spec.question)
        extra += sum(1 for w in outside if w not in allowed)
        return Check(correct, extra, 0)

    @staticmethod
    def _bare_credit(truth: Fact, ws: list[str]) -> float:
        """Credit for an answer without a full sentence ("blue.", "in the box."), shared out
        among the different answers named, so naming every color earns 1/8."""
        if truth.kind == "color":
            said = {w for w in ws if w in COLORS}
            return (truth.value in said) / max(1, len(said))
        prep, _, place = truth.value.split()
        places = {w for w in ws if w in PLACES}
        preps = {w for w in ws if w in PREPOSITIONS}
        credit = (place in places) / max(1, len(places))
        return credit * ((prep in preps) / len(preps) if preps else 1.0)

    def right(self, spec: FactsSpec, rng: Random) -> str:
        truth = spec.truth()
        style = rng.random()
        if style < 0.7:
            return truth.sentence() + "."
        return ("it is " if style < 0.85 else "") + truth.value + "."

    def wrong(self, spec: FactsSpec, rng: Random, n_mistakes: int = 1) -> str:
        truth = spec.truth()
        others = [f for f in spec.facts if f.noun != spec.question]
        same_kind = [f.value for f in others if f.kind == truth.kind and f.value != truth.value]
        kind = rng.choice(("confuse", "confuse", "invent", "other_noun", "hedge", "restate"))
        if kind == "confuse" and same_kind:  # takes the value of another stated fact
            return Fact(truth.noun, truth.kind, rng.choice(same_kind)).sentence() + "."
        if kind in ("confuse", "invent", "hedge"):
            made_up = self._other_value(truth, rng)
            if kind == "hedge":  # the right answer and a wrong one
                return f"{truth.sentence()}. {made_up.sentence()}."
            return made_up.sentence() + "."
        if kind == "other_noun":  # answers about the wrong thing
            return rng.choice(others).sentence() + "."
        return ". ".join(f.sentence() for f in spec.facts) + "."  # restates everything

    def _other_value(self, truth: Fact, rng: Random) -> Fact:
        while True:
            made_up = self._random_fact(truth.noun, rng)
            if made_up.kind == truth.kind and made_up.value != truth.value:
                return made_up

    def truncated(self, spec: FactsSpec) -> str:
        return spec.truth().value + "."


FAMILIES = (ListFamily(), CountFamily(), SortFamily(), RepeatFamily(), FactsFamily())
