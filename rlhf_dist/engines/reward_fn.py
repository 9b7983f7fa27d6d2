"""Reward functions: Python code as PPO's reward, evaluated in the reward actors.

    rlhf-dist ppo ... reward_source=fn reward_fn=rlhf_dist.tasks.instruct:correctness
    rlhf-dist ppo ... reward_source=rm+fn reward_fn=path/to/my_reward.py:reward

A reward function scores a batch of decoded rows at once:

    fn(prompts: list[str], responses: list[str]) -> Sequence[float]   # one finite number per row

`prompts` are the plain prompt texts, the text the task's gold scorer reads: PPO's driver passes
each training row's prompt as written in the prompts file (whole, even where `truncation=middle`
cut its tokens); rows scored without texts (held-out evaluation) get the prompt's token ids
decoded without special tokens, the trailing response separator removed. `responses` are the
sampled responses decoded without special tokens. `reward_source=gold` is one
such function: the configured task's `gold_score`, row by row (`gold_reward_fn`).

`RewardFunction` is the engine a reward actor holds: it decodes an Arrow trajectory slice, calls
the function once for the whole slice and checks what comes back; any fault (an exception, a
wrong length, a non-number, NaN or infinity) is a `RewardFunctionError` naming the function, the
prompt id, the sample index and the prompt of the first bad row, in one line.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa

from rlhf_dist.tasks.base import RESPONSE_SEPARATOR, SpecError, load_task, resolve_spec

BatchFn = Callable[[list[str], list[str]], Sequence[float]]


class RewardFnSpecError(SpecError):
    """A `reward_fn=` spec that does not name a callable."""


class RewardFunctionError(ValueError):
    """A reward function that raised or returned something other than one finite number per row."""


def load_reward_fn(spec: str) -> BatchFn:
    """The callable named by "module:attr" or "path/to/file.py:attr"; RewardFnSpecError otherwise."""
    fn = resolve_spec(spec, "reward_fn", RewardFnSpecError)
    if not callable(fn):
        raise RewardFnSpecError(f"bad reward_fn spec {spec!r}: {type(fn).__name__} object is not callable")
    return fn


def gold_reward_fn(task_spec: str) -> BatchFn:
    """The task's hidden gold scorer as a batch reward function (reward_source=gold)."""
    task = load_task(task_spec)

    def gold(prompts: list[str], responses: list[str]) -> list[float]:
        return [float(task.gold_score(p, r)) for p, r in zip(prompts, responses, strict=True)]

    return gold


def decode_prompts(tokenizer, table: pa.Table) -> list[str]:
    """The rows' prompt token ids as text, special tokens skipped, without the separator the
    formatting appends before the response."""
    prompts = tokenizer.batch_decode(table.column("prompt_ids").to_pylist(), skip_special_tokens=True)
    return [p.removesuffix(RESPONSE_SEPARATOR) for p in prompts]


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class RewardFunction:
    """`fn` applied to trajectory rows decoded with `tokenizer` (the SFT model's); `label` names the
    function in errors, e.g. "reward_fn=my_module:reward"."""

    def __init__(self, fn: BatchFn, label: str, tokenizer) -> None:
        self.fn, self.label, self.tokenizer = fn, label, tokenizer

    @classmethod
    def from_spec(cls, spec: str, tokenizer) -> "RewardFunction":
        return cls(load_reward_fn(spec), f"reward_fn={spec}", tokenizer)

    @classmethod
    def gold(cls, task_spec: str, tokenizer) -> "RewardFunction":
        return cls(gold_reward_fn(task_spec), f"reward_source=gold (task={task_spec})", tokenizer)

    def score(self, table: pa.Table, prompts: list[str] | None = None) -> np.ndarray:
        """(B,) float32 scores of the table's rows: one call of the function for all of them.
        `prompts`: the rows' prompt texts (default: their token ids decoded)."""
        n = table.num_rows
        if n == 0:
            return np.zeros(0, np.float32)
        if prompts is None:
            prompts = decode_prompts(self.tokenizer, table)
        elif len(prompts) != n:
            raise ValueError(f"{self.label}: {len(prompts)} prompt texts for {n} rows")
        prompts = list(prompts)
        responses = self.tokenizer.batch_decode(table.column("response_ids").to_pylist(), skip_special_tokens=True)
        try:
            out = self.fn(prompts, responses)
        except Exception as exc:  # the user's code: report it in one line, with the batch's first row
            message = _one_line(f"{type(exc).__name__}: {exc}")
            raise RewardFunctionError(f"{self.label} raised {message} on a batch of {n} rows starting at "
                                      f"{self._row(table, prompts, 0)}") from None
        if hasattr(out, "tolist") and not isinstance(out, (str, bytes)):
            out = out.tolist()  # numpy arrays and tensors, as plain numbers
        if isinstance(out, (str, bytes)) or not isinstance(out, Sequence):
            raise RewardFunctionError(f"{self.label} returned {type(out).__name__}, not a sequence of {n} scores, "
                                      f"on a batch starting at {self._row(table, prompts, 0)}")
        if len(out) != n:
            raise RewardFunctionError(f"{self.label} returned {len(out)} scores for a batch of {n} rows starting at "
                                      f"{self._row(table, prompts, 0)}")
        scores = np.empty(n, np.float64)
        for i, value in enumerate(out):
            if not isinstance(value, numbers.Real):  # a string, None, a list... (bool and numpy scalars are Real)
                raise RewardFunctionError(f"{self.label}: score {_one_line(repr(value), 60)} is not a number, "
                                          f"for {self._row(table, prompts, i)}")
            scores[i] = float(value)
        bad = np.flatnonzero(~np.isfinite(scores))
        if bad.size:
            i = int(bad[0])
            raise RewardFunctionError(f"{self.label}: score {scores[i]} for {self._row(table, prompts, i)}; "
                                      f"{bad.size} of {n} rows of this batch are not finite")
        big = np.flatnonzero(np.abs(scores) > np.finfo(np.float32).max)
        if big.size:  # finite here, infinite once stored as float32
            i = int(big[0])
            raise RewardFunctionError(f"{self.label}: score {scores[i]} for {self._row(table, prompts, i)} "
                                      "overflows float32")
        return scores.astype(np.float32)

    @staticmethod
    def _row(table: pa.Table, prompts: list[str], i: int) -> str:
        pid, sample = table.column("prompt_id")[i].as_py(), table.column("sample_index")[i].as_py()
        return f"prompt {pid} ({prompts[i][:60]!r}), sample {sample}"
