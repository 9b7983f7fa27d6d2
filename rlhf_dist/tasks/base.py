"""The task protocol: what a "labeler world" must provide, and `load_task` to find one.

A task stands in for InstructGPT's people (Ouyang et al. 2022, arXiv 2203.02155): it writes
prompts, imperfect demonstrations and pretraining text, and it holds a hidden gold scorer from
which the generic labeler (`rlhf_dist.tasks.labeler`) samples rankings, as the gold RM does in
Gao et al. 2022 (arXiv 2210.10760). Everything else (data files, labeler, judge, statistics) is
generic and lives outside the task, so a new task is one object:

    task=my_module:my_task            # an importable module
    task=path/to/my_task.py:my_task   # or a file, loaded by path

`attr` may be an instance, a class (instantiated with no arguments) or a zero-argument factory.
This module imports only the standard library (and the config layer's defaults).
"""

from __future__ import annotations

import importlib
import importlib.util
import random
import sys
from pathlib import Path
from typing import Protocol, runtime_checkable

from rlhf_dist.config.fields import DEFAULT_TASK  # noqa: F401  (the built-in task, re-exported)

# Prompts and responses are single-line strings; a pretraining text of a pair is joined with this
# separator, and later stages must join them the same way so the base model sees one format.
RESPONSE_SEPARATOR = "\n"

REQUIRED = ("name", "sample_prompt", "demonstrate", "optimal_response", "gold_score", "pretrain_text")


class SpecError(ValueError):
    """A "module:attr" / "path/to/file.py:attr" spec that cannot be resolved; the message is one
    line naming the setting, fit for a CLI error."""


class TaskSpecError(SpecError):
    """A `task=` spec that cannot be resolved."""


@runtime_checkable
class Task(Protocol):
    """What a task provides. Gold scores should lie in [0, 1] so that the labeler's temperature
    means the same thing for every task (a gap of `temperature` in gold = odds of e : 1).

    Optional methods, used when present (see the module-level helpers below):
      candidates(prompt, rng, k) -> list[str]   K responses to rank (default: K distinct-if-possible
                                                demonstrations);
      gold_parts(prompt, response) -> dict      the parts of the gold score, for diagnostics;
      exploit_response(prompt) -> str           a response a proxy RM is likely to over-score while
                                                gold scores it low (reported as a hackability check);
      prompt_key(prompt) -> str                 the instruction behind a wording, for the eval split
                                                (default: the prompt itself);
      demonstrate_turns(prompt, rng, p_tool)    a demonstration as turns alternating policy and
        -> list[str]                            environment, policy first and last ([response] when
                                                no tool is used): `task-data tool_share=p_tool`
                                                writes the multi-turn ones as SFT rows {prompt, turns}.
    """

    name: str

    def sample_prompt(self, rng: random.Random) -> str:
        """One prompt (single line), drawn only from `rng` so that files are reproducible."""
        ...

    def demonstrate(self, prompt: str, rng: random.Random) -> str:
        """An imperfect demonstrator's response: right only part of the time, with the kinds of
        mistakes people make. Its mean gold must sit clearly below the optimum (RL headroom)."""
        ...

    def optimal_response(self, prompt: str) -> str:
        """A response with the highest gold score for `prompt` (the ceiling that is reported)."""
        ...

    def gold_score(self, prompt: str, response: str) -> float:
        """The hidden labeler's score, higher is better, ideally in [0, 1]. Must never raise,
        whatever the response (a policy writes garbage)."""
        ...

    def pretrain_text(self, rng: random.Random) -> str:
        """One text of the task's language for the base model and the ptx loss: it should teach
        the language, not the good behaviour (pairs of all quality levels, free sentences)."""
        ...


def join_prompt_response(prompt: str, response: str) -> str:
    """The one text format of a (prompt, response) pair, shared by pretraining text and later stages."""
    return prompt + RESPONSE_SEPARATOR + response


def candidates(task: Task, prompt: str, rng: random.Random, k: int) -> list[str]:
    """K responses to rank for `prompt`: the task's own `candidates` if it has one, otherwise K
    demonstrations, distinct where the demonstrator allows it (identical responses are forced
    ties, which carry no preference signal for the RM)."""
    own = getattr(task, "candidates", None)
    if callable(own):
        out = list(own(prompt, rng, k))
        if len(out) != k:
            raise ValueError(f"task {task.name!r}: candidates() returned {len(out)} responses, expected {k}")
        return out
    out: list[str] = []
    for _ in range(20 * k):
        response = task.demonstrate(prompt, rng)
        if response not in out:
            out.append(response)
        if len(out) == k:
            return out
    while len(out) < k:  # the demonstrator has fewer than k distinct answers: allow duplicates
        out.append(task.demonstrate(prompt, rng))
    return out


def gold_parts(task: Task, prompt: str, response: str) -> dict[str, float]:
    """The task's gold parts if it exposes them, else just the total."""
    own = getattr(task, "gold_parts", None)
    if callable(own):
        return dict(own(prompt, response))
    return {"total": float(task.gold_score(prompt, response))}


def missing_parts(obj: object) -> list[str]:
    """Names from the protocol that `obj` lacks (empty: it is a task)."""
    return [name for name in REQUIRED if not hasattr(obj, name)]


def load_task(spec: str) -> Task:
    """Resolve "module:attr" or "path/to/file.py:attr" to a task object.

    `attr` may be a task instance, a class (called with no arguments) or a zero-argument factory.
    Raises TaskSpecError with a one-line message when anything is wrong.
    """
    obj = resolve_spec(spec, "task", TaskSpecError)
    attr = spec.rpartition(":")[2]
    if isinstance(obj, type) or (missing_parts(obj) and callable(obj)):
        try:
            obj = obj()
        except Exception as exc:  # a factory that fails is a bad spec, reported in one line
            raise TaskSpecError(f"bad task spec {spec!r}: calling {attr!r} failed: {exc!r}") from None
    missing = missing_parts(obj)
    if missing:
        raise TaskSpecError(f"bad task spec {spec!r}: the object lacks {', '.join(missing)}")
    return obj


def resolve_spec(spec: str, what: str, error: type[SpecError] = SpecError) -> object:
    """The object named by "module:attr" or "path/to/file.py:attr" (a file is loaded by path).
    `what` names the setting in the one-line `error` raised when anything is wrong."""
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        raise error(f"bad {what} spec {spec!r}: expected 'module:attr' or 'path/to/file.py:attr'")
    module = _import(module_part, spec, what, error)
    if not hasattr(module, attr):
        raise error(f"bad {what} spec {spec!r}: {module_part!r} has no attribute {attr!r}")
    return getattr(module, attr)


def absolute_spec(spec: str) -> str:
    """`spec` with a file path made absolute, so that processes started elsewhere (Ray actors,
    environment workers) load the same file; a module spec is returned as it is."""
    module_part, sep, attr = spec.rpartition(":")
    if sep and (module_part.endswith(".py") or "/" in module_part or "\\" in module_part):
        return f"{Path(module_part).expanduser().resolve()}:{attr}"
    return spec


def _import(module_part: str, spec: str, what: str, error: type[SpecError]):
    """Import a dotted module name, or load a .py file by path (registered in sys.modules)."""
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        path = Path(module_part).expanduser().resolve()
        if not path.is_file():
            raise error(f"bad {what} spec {spec!r}: no file {str(path)!r}")
        name = f"rlhf_dist_{what}_file_" + "".join(c if c.isalnum() else "_" for c in str(path))
        if name in sys.modules:
            return sys.modules[name]
        file_spec = importlib.util.spec_from_file_location(name, path)
        if file_spec is None or file_spec.loader is None:
            raise error(f"bad {what} spec {spec!r}: cannot load {str(path)!r}")
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[name] = module  # dataclasses and pickling look the module up by name
        try:
            file_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise error(f"bad {what} spec {spec!r}: loading the file failed: {exc!r}") from None
        return module
    try:
        return importlib.import_module(module_part)
    except Exception as exc:  # ImportError, or an error raised while the module runs
        raise error(f"bad {what} spec {spec!r}: cannot import {module_part!r}: {exc!r}") from None
