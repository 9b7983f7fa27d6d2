"""The task's tool: one call computes the answer of any instruction of the language.

A tiny model cannot sort, count or look facts up reliably; it can copy. With the tool it copies
the instruction's arguments into a call and the result into its answer:

    sort 41 19 37              -> 19 37 41            sort down 41 19 37     -> 41 37 19
    count 3 to 7               -> 3 4 5 6 7           count 9 to 5           -> 9 8 7 6 5
    count 3 to 11 by 2         -> 3 5 7 9 11          (the direction comes from the two ends)
    list 3 fruits without pear or lime -> apple, plum, fig       list 1 fruit -> apple
    repeat red cat box skip cat -> red box
    fact key                   -> the key is in the bag           (from the prompt's facts)

In a response a call is `<tool>sort 41 19 37</tool>` and the environment answers
`<result>19 37 41</result>`; the answer is the result plus a full stop (`optimal` of every
family). Anything else (unknown command, bad or missing arguments, a noun the prompt states no
fact about) is answered `<result>error</result>`, never an exception: the policy writes garbage.

`ToolEnv` is the environment of the multi-turn protocol (`reset(prompt) -> state`,
`step(state, text) -> (observation, reward, done)`, `stop`); its reward is always 0, the run's
reward comes from its reward source (gold, RM or `correctness`), which grade the answer with the
tool traffic removed (`strip_tool_markup`). Imports only the task's own modules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from .families import FAMILIES, Fact, FactsSpec
from .vocab import CATEGORIES, SINGULAR

CALL_OPEN, CALL_CLOSE = "<tool>", "</tool>"
RESULT_OPEN, RESULT_CLOSE = "<result>", "</result>"
ERROR = "error"
MAX_CALLS = 3  # calls answered per episode; one suffices for every instruction, two allow a retry

_PLURAL = {singular: plural for plural, singular in SINGULAR.items()}
_CALL = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.DOTALL)
_MARKUP = re.compile(f"{re.escape(CALL_OPEN)}.*?{re.escape(CALL_CLOSE)}|{re.escape(RESULT_OPEN)}.*?"
                     f"{re.escape(RESULT_CLOSE)}", re.DOTALL)
_DANGLING_CALL = re.compile(re.escape(CALL_OPEN) + r".*\Z", re.DOTALL)
_CALL_AND_RESULT = re.compile(f"{re.escape(CALL_OPEN)}(.*?){re.escape(CALL_CLOSE)}"
                              rf"(?:\s*{re.escape(RESULT_OPEN)}(.*?){re.escape(RESULT_CLOSE)})?", re.DOTALL)
# Numbers stay short (the language's numbers have at most 3 digits), so int() never sees a huge one.
_NUMBER = re.compile(r"\d{1,3}")
_WORD = re.compile(r"[a-z]+")
MAX_ARGS = 20  # numbers to sort, words to repeat, numbers counted


# ---------------------------------------------------------------------------------- the commands
def run_tool(command: str, facts: tuple[Fact, ...] = ()) -> str:
    """The result of one call's text (what stands between <tool> and </tool>), or "error".

    `facts` are the prompt's stated facts, which `fact <noun>` looks up. Commas and a final full
    stop are ignored, so a call copied with the prompt's punctuation still works.
    """
    if not isinstance(command, str) or len(command) > 500:
        return ERROR
    args = command.replace(",", " ").strip().rstrip(".").split()
    if not args:
        return ERROR
    name, rest = args[0], args[1:]
    handler = _COMMANDS.get(name)
    if handler is None:
        return ERROR
    result = handler(rest, facts)
    return ERROR if result is None else result


def _numbers(args: list[str]) -> Optional[list[int]]:
    if not args or len(args) > MAX_ARGS or not all(_NUMBER.fullmatch(a) for a in args):
        return None
    return [int(a) for a in args]


def _sort(args: list[str], facts) -> Optional[str]:
    descending = bool(args) and args[0] == "down"
    if args and args[0] in ("up", "down"):
        args = args[1:]
    numbers = _numbers(args)
    return None if numbers is None else " ".join(map(str, sorted(numbers, reverse=descending)))


def _count(args: list[str], facts) -> Optional[str]:
    if len(args) not in (3, 5) or args[1] != "to" or (len(args) == 5 and args[3] != "by"):
        return None
    numbers = _numbers(args[0::2])
    if numbers is None:
        return None
    start, stop, step = numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else 1
    if step < 1 or (stop - start) % step or abs(stop - start) // step >= MAX_ARGS:
        return None
    step = step if stop >= start else -step
    return " ".join(str(x) for x in range(start, stop + step, step))


def _list(args: list[str], facts) -> Optional[str]:
    if len(args) < 2 or not _NUMBER.fullmatch(args[0]):
        return None
    n, category = int(args[0]), _PLURAL.get(args[1], args[1])
    if category not in CATEGORIES:
        return None
    avoid = args[3::2]
    if len(args) > 2 and (args[2] != "without" or len(args) % 2 or any(w != "or" for w in args[4::2])):
        return None  # "without X", "without X or Y", ...
    if any(w not in CATEGORIES[category] for w in avoid):
        return None
    allowed = [w for w in CATEGORIES[category] if w not in avoid]
    if not 1 <= n <= len(allowed):
        return None
    return ", ".join(allowed[:n])


def _repeat(args: list[str], facts) -> Optional[str]:
    skip = None
    if len(args) >= 2 and args[-2] == "skip":
        args, skip = args[:-2], args[-1]
    if not args or len(args) > MAX_ARGS or not all(_WORD.fullmatch(w) for w in args):
        return None
    if skip is not None and skip not in args:
        return None
    return " ".join(w for w in args if w != skip)


def _fact(args: list[str], facts) -> Optional[str]:
    if len(args) != 1:
        return None
    found = [f for f in facts if f.noun == args[0]]
    return found[0].sentence() if len(found) == 1 else None


_COMMANDS = {"sort": _sort, "count": _count, "list": _list, "repeat": _repeat, "fact": _fact}


def prompt_facts(prompt: str) -> tuple[Fact, ...]:
    """The facts a prompt states (empty unless it is a facts prompt of this language)."""
    if not isinstance(prompt, str):
        return ()
    for family in FAMILIES:
        spec = family.parse(prompt.strip())
        if spec is not None:
            return spec.facts if isinstance(spec, FactsSpec) else ()
    return ()


# ---------------------------------------------------------------------------------- the environment
@dataclass
class ToolState:
    """One episode: the prompt's facts and the calls answered so far (step updates it)."""

    prompt: str
    facts: tuple[Fact, ...]
    calls: int = 0


class ToolEnv:
    """The tool as a multi-turn environment: `env=rlhf_dist.tasks.instruct:ToolEnv`.

    A turn that holds a complete call (the last one counts; the rollout ends a turn right after
    `</tool>`) is answered with its `<result>...</result>`; a turn without one is the final
    answer and ends the episode, as does a call beyond `max_calls`. Reward always 0.0. One
    object serves every episode: all per-episode data lives in the state.
    """

    stop = [CALL_CLOSE]

    def __init__(self, max_calls: int = MAX_CALLS) -> None:
        self.max_calls = max_calls

    def reset(self, prompt: str) -> ToolState:
        return ToolState(prompt if isinstance(prompt, str) else "", prompt_facts(prompt))

    def step(self, state: ToolState, text: str) -> tuple[Optional[str], float, bool]:
        calls = _CALL.findall(text) if isinstance(text, str) else []
        if not calls or state.calls >= self.max_calls:
            return None, 0.0, True
        state.calls += 1
        return RESULT_OPEN + run_tool(calls[-1], state.facts) + RESULT_CLOSE, 0.0, False


def call_text(command: str) -> str:
    """A call as the policy writes it."""
    return CALL_OPEN + command + CALL_CLOSE


# ---------------------------------------------------------------------------------- reading responses
def strip_tool_markup(response: str) -> str:
    """The response without its tool traffic: every `<tool>...</tool>` and `<result>...</result>`
    span, and an unfinished `<tool>...` at the end, removed; whitespace runs become one space.
    What the labeler grades: the answer, not the calls. Never raises."""
    if not isinstance(response, str):
        return ""
    text = _DANGLING_CALL.sub(" ", _MARKUP.sub(" ", response))
    return " ".join(text.split())


def tool_stats(response: str, prompt: Optional[str] = None) -> dict[str, int]:
    """{"calls": complete calls in `response`, "malformed": those answered with an error}.

    A call's answer is the `<result>` that follows it in the response (a rollout's response holds
    the observations); a call without one is run here, with `prompt`'s facts when given.
    """
    if not isinstance(response, str):
        return {"calls": 0, "malformed": 0}
    facts = prompt_facts(prompt) if prompt is not None else ()
    calls = malformed = 0
    for command, result in _CALL_AND_RESULT.findall(response):
        calls += 1
        answered = result if result else run_tool(command, facts)
        malformed += answered.strip() == ERROR
    return {"calls": calls, "malformed": malformed}
