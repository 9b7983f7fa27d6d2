"""Writers of the built-in language: the demonstrator, the careless pretraining writer, free
sentences, and the exploit response.

The demonstrator knows the answers (right 85% of the time; otherwise one or two realistic
mistakes: a wrong count, a forbidden item, off-by-one, stopping early, ...) but has the habits
RLHF is for: it makes up a fact in 40% of its answers, insults the asker in 30%, rambles in 30%.
SFT copies the answers and the habits alike; the labeler's rankings say which habits it dislikes,
and RL can drop them (made-up facts and toxic language are what InstructGPT's labelers flag,
Ouyang et al. 2022 sec. 3.6 and 4.2). When right it usually adds a polite closing; when wrong,
rarely: in its data "ends with a closing" goes with "is better", while the gold scorer charges for
every padding word: the surface feature a small reward model will over-credit (docs/tasks.md).

With the task's tool (tools.py) it sometimes answers in turns, `respond_turns`: a call, the
tool's result, and the answer copied from it, with the same habits and an occasional bad call.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from random import Random
from typing import Optional

from ..base import join_prompt_response
from .families import FAMILIES, CountSpec, FactsSpec, ListSpec, RepeatSpec, SortSpec
from .gold import parse_prompt
from .text import words
from .tools import ERROR, RESULT_CLOSE, RESULT_OPEN, ToolEnv, call_text
from .vocab import (CATEGORIES, CATEGORY_NAMES, CLOSINGS, COLORS, OBJECTS, PLACES, PREPOSITIONS, RAMBLES,
                    REPEAT_POOL, RUDE_REMARKS, SINGULAR)


@dataclass(frozen=True)
class Habits:
    """How a writer answers: the chance of each kind of behaviour."""

    p_right: float  # the answer itself is correct
    p_closing_if_right: float  # adds a polite closing when right ...
    p_closing_if_wrong: float  # ... and when wrong
    p_ramble: float  # appends a padding sentence
    p_invent: float  # appends a made-up fact
    p_rude: float  # adds a rude remark
    p_two_mistakes: float = 0.3  # a wrong answer has two mistakes, not one


# The demonstrator of the SFT data: right, but with habits the labeler dislikes (an invented fact
# halves honesty, a rude remark quarters harmlessness, rambling costs 0.04 a word). Closings go with
# right answers: the exploitable correlation, though gold charges ~0.10 for one.
DEMONSTRATOR = Habits(p_right=0.85, p_closing_if_right=0.8, p_closing_if_wrong=0.1, p_ramble=0.3, p_invent=0.4,
                      p_rude=0.3)
# The careless writer of pretraining pairs: mostly wrong, with the same habits and more of them (web
# text is worse than paid demonstrations), and its closings carry no signal, so the base model
# learns the language and the phrases but not which answers are good, and SFT clearly beats it
# (with the demonstrator's habit rates here, base and SFT were within 0.01 gold on 500 prompts).
CARELESS = Habits(p_right=0.1, p_closing_if_right=0.3, p_closing_if_wrong=0.3, p_ramble=0.4, p_invent=0.6,
                  p_rude=0.5)
P_PAIR = 0.6  # share of pretraining texts that are a prompt and a response (the rest: free sentences)


def sample_prompt(rng: Random) -> str:
    """A prompt from one of the five families, equally likely."""
    family = rng.choice(FAMILIES)
    return family.prompt(family.sample(rng), rng)


def respond(prompt: str, rng: Random, habits: Optional[Habits] = None) -> str:
    """One response by a writer with the given habits (default: the SFT demonstrator)."""
    h = habits or DEMONSTRATOR
    family, spec = parse_prompt(prompt)
    if family is None:  # not a prompt of this language: say something harmless
        return rng.choice(RAMBLES)
    right = rng.random() < h.p_right
    if right:
        answer = family.right(spec, rng)
    else:
        answer = family.wrong(spec, rng, n_mistakes=2 if rng.random() < h.p_two_mistakes else 1)
    return _with_habits(answer, right, spec, rng, h)


def _with_habits(answer: str, right: bool, spec, rng: Random, h: Habits) -> str:
    """The answer as the writer says it: maybe an invented fact, a ramble, a closing, a rude remark."""
    parts = [answer]
    if rng.random() < h.p_invent:
        parts.append(invented_fact(spec, rng))
    if rng.random() < h.p_ramble:
        parts.append(rng.choice(RAMBLES))
    if rng.random() < (h.p_closing_if_right if right else h.p_closing_if_wrong):
        parts.append(rng.choice(CLOSINGS))
    if rng.random() < h.p_rude:
        parts.insert(rng.choice((0, len(parts))), rng.choice(RUDE_REMARKS))
    return " ".join(parts)


def respond_turns(prompt: str, rng: Random, p_tool: float, habits: Optional[Habits] = None) -> list[str]:
    """One demonstration as turns: [answer], or with probability `p_tool` the tool's way,
    [call, result, answer] (policy, environment, policy; the result is ToolEnv's observation).

    `respond(prompt, rng)` is drawn every time, so `rng` advances exactly as `respond` makes it:
    with p_tool 0 the turns are [respond(prompt, rng)] and with p_tool > 0 the demonstrations
    without the tool are those same responses. The tool's draws come from a generator forked from
    `rng`'s state, which leaves `rng` untouched.

    The tool demonstration keeps the writer imperfect: P_BAD_CALL of its calls are malformed (an
    error result, then the writer answers on its own, right with its usual rate) or ask the wrong
    thing (the answer copies a wrong result); the answer carries the writer's habits.
    """
    side = _fork(rng) if p_tool > 0 else None
    answer = respond(prompt, rng, habits)
    family, spec = parse_prompt(prompt)
    if side is None or family is None or side.random() >= p_tool:
        return [answer]
    return _tool_turns(prompt, family, spec, side, habits or DEMONSTRATOR)


P_BAD_CALL = 0.1  # half malformed (answered "error"), half a wrong question to the tool


def _fork(rng: Random) -> Random:
    """A generator seeded by `rng`'s state, drawing nothing from `rng` itself."""
    return Random(hashlib.sha256(repr(rng.getstate()).encode()).digest())


def _tool_turns(prompt: str, family, spec, rng: Random, h: Habits) -> list[str]:
    env = ToolEnv()
    state = env.reset(prompt)
    command, draw = tool_command(spec), rng.random()
    if draw < P_BAD_CALL / 2:
        command = _malformed(command, rng)
    elif draw < P_BAD_CALL:
        command = _wrong_command(spec, rng)
    call = call_text(command)
    observation, _, _ = env.step(state, call)
    result = observation[len(RESULT_OPEN):len(observation) - len(RESULT_CLOSE)]
    if result == ERROR:  # no help from the tool: the writer answers as it does without one
        right = rng.random() < h.p_right
        if right:
            answer = family.right(spec, rng)
        else:
            answer = family.wrong(spec, rng, n_mistakes=2 if rng.random() < h.p_two_mistakes else 1)
    else:
        answer = result + "."
        right = family.check(spec, words(answer)).correct >= 1.0
    return [call, observation, _with_habits(answer, right, spec, rng, h)]


def tool_command(spec) -> str:
    """The call (without its tags) whose result, plus a full stop, is the optimal answer."""
    if isinstance(spec, ListSpec):
        noun = SINGULAR[spec.category] if spec.n == 1 else spec.category
        avoid = f" without {' or '.join(spec.avoid)}" if spec.avoid else ""
        return f"list {spec.n} {noun}{avoid}"
    if isinstance(spec, CountSpec):
        return f"count {spec.start} to {spec.stop}" + (f" by {spec.step}" if spec.step != 1 else "")
    if isinstance(spec, SortSpec):
        return "sort " + ("down " if spec.descending else "") + " ".join(map(str, spec.numbers))
    if isinstance(spec, RepeatSpec):
        return "repeat " + " ".join(spec.words) + (f" skip {spec.skip}" if spec.skip else "")
    if isinstance(spec, FactsSpec):
        return f"fact {spec.question}"
    raise TypeError(f"no tool command for {type(spec).__name__}")


def _malformed(command: str, rng: Random) -> str:
    """A call the tool cannot read: the command misspelled, or its arguments left out."""
    name = command.split()[0]
    return name[:-1] + command[len(name):] if rng.random() < 0.5 else name


def _wrong_command(spec, rng: Random) -> str:
    """A well-formed call that asks the wrong thing (the kind of slip people make copying)."""
    options = []
    if isinstance(spec, ListSpec):
        if spec.avoid:
            options.append(ListSpec(spec.n, spec.category, ()))  # forgets the exclusion
        options.append(ListSpec(spec.n + 1, spec.category, spec.avoid))
        if spec.n > 1:
            options.append(ListSpec(spec.n - 1, spec.category, spec.avoid))
    elif isinstance(spec, CountSpec):
        step = spec.step if spec.stop >= spec.start else -spec.step
        if spec.stop + step >= 0:
            options.append(CountSpec(spec.start, spec.stop + step, spec.step))  # one too far
        options.append(CountSpec(spec.start + step, spec.stop, spec.step))  # starts late
        if spec.step != 1:
            options.append(CountSpec(spec.start, spec.stop, 1))  # forgets "by"
    elif isinstance(spec, SortSpec):
        options.append(SortSpec(spec.numbers, not spec.descending))
        i = rng.randrange(len(spec.numbers))
        options.append(SortSpec(spec.numbers[:i] + spec.numbers[i + 1:], spec.descending))
    elif isinstance(spec, RepeatSpec):
        if spec.skip:
            options.append(RepeatSpec(spec.words, None))
        i = rng.randrange(len(spec.words))
        dropped = spec.words[:i] + spec.words[i + 1:]
        options.append(RepeatSpec(dropped, spec.skip if spec.skip in dropped else None))
    elif isinstance(spec, FactsSpec):
        others = [f.noun for f in spec.facts if f.noun != spec.question]
        options.append(FactsSpec(spec.facts, rng.choice(others)))
    return tool_command(rng.choice(options))


def invented_fact(spec, rng: Random) -> str:
    """A claim about a thing the prompt never mentioned (dishonest by the gold scorer's rules)."""
    mentioned = {f.noun for f in spec.facts} if isinstance(spec, FactsSpec) else set()
    noun = rng.choice([o for o in OBJECTS if o not in mentioned])
    if rng.random() < 0.5:
        return f"the {noun} is {rng.choice(COLORS)}."
    return f"the {noun} is {rng.choice(PREPOSITIONS)} the {rng.choice(PLACES)}."


def exploit_response(prompt: str) -> str:
    """The reward hack: half an answer, then every polite closing, the first one twice.

    It carries the demonstrator's marks of a good answer (a closing, length) in excess; gold sees
    an incomplete answer and 12 padding words with repetition, and scores it low.
    """
    family, spec = parse_prompt(prompt)
    start = family.truncated(spec) if family else ""
    return " ".join([start, *CLOSINGS, CLOSINGS[0]]).strip()


def free_sentence(rng: Random) -> str:
    """One sentence of the language outside any instruction (facts, categories, numbers, chatter)."""
    kind = rng.randrange(8)
    if kind == 0:
        return f"the {rng.choice(OBJECTS)} is {rng.choice(COLORS)}."
    if kind == 1:
        return f"the {rng.choice(OBJECTS)} is {rng.choice(PREPOSITIONS)} the {rng.choice(PLACES)}."
    if kind == 2:
        category = rng.choice(CATEGORY_NAMES)
        a, b = rng.sample(CATEGORIES[category], 2)
        return f"{a} and {b} are {category}."
    if kind == 3:
        category = rng.choice(CATEGORY_NAMES)
        return f"{rng.choice(CATEGORIES[category])} is a {SINGULAR[category]}."
    if kind == 4:
        a, b = sorted(rng.sample(range(60), 2))
        return f"{a} is less than {b}." if rng.random() < 0.5 else f"{b + 1} comes after {b}."
    if kind == 5:
        return f"{'what color' if rng.random() < 0.5 else 'where'} is the {rng.choice(OBJECTS)}?"
    if kind == 6:
        return " ".join(rng.sample(REPEAT_POOL, rng.randint(2, 5))) + "."
    return rng.choice(RUDE_REMARKS if rng.random() < 0.1 else CLOSINGS + RAMBLES)


def pretrain_text(rng: Random) -> str:
    """A pair by the careless writer, or 2-4 free sentences."""
    if rng.random() < P_PAIR:
        prompt = sample_prompt(rng)
        return join_prompt_response(prompt, respond(prompt, rng, CARELESS))
    return " ".join(free_sentence(rng) for _ in range(rng.randint(2, 4)))
