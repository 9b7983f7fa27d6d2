"""Reading data files (JSON Lines, JSON arrays, Parquet) and normalising their documented schemas.

Every error is a one-line `DataError` naming the file and the line (JSON Lines), the element
(JSON array) or the row and column (Parquet), fit for a CLI error:

    data/sft.jsonl:17: missing field 'response'
    data/sft.parquet: missing column 'response' (columns: prompt, text)
    data/sft.parquet: row 16 (0-based), column 'response': expected a string, got int

Schemas (extra fields are ignored; see docs/tasks.md):
    SFT            {prompt, response}  or  {messages: [{role, content}, ...]} ending in an assistant turn
                   or  {prompt, turns: [policy, environment, ..., policy]} (a multi-turn episode)
    comparisons    {prompt, chosen, rejected}  or  {prompt, responses: [K], ranking: [indices, best first]}
    RL prompts     {prompt}  or  {messages} not ending in an assistant turn
    pretraining    {text}
A prompt is a string or a list of chat messages (`{role, content}` dicts); `format_prompt`
(rlhf_dist.data.encode) turns either into token ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

Message = dict  # {"role": str, "content": str}
Prompt = Union[str, list]  # a string, or a list of Message


class DataError(ValueError):
    """A data file that cannot be used; the message is one line naming the file and where."""


@dataclass(frozen=True)
class SFTExample:
    """One demonstration: `prompt` is a string or a list of chat messages; `response` is the target text.

    A multi-turn episode also has `turns`: (policy, environment, ..., policy), an odd number of
    strings; its `response` is then the turns joined by spaces (the episode as text), and the
    targets are the policy turns only (`rlhf_dist.data.encode.tokenize_sft`).
    """

    prompt: Prompt
    response: str
    turns: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Comparison:
    """One ranked prompt: K >= 2 responses and `ranking`, their indices best first (a permutation of range(K))."""

    prompt: Prompt
    responses: list
    ranking: list


# ---------------------------------------------------------------------------------------------
# Raw records


class _Loc:
    """Where a record came from, to prefix error messages: 'file:line', 'file: element i' or a Parquet row."""

    def __init__(self, path: Path, kind: str, index: int) -> None:
        self.path, self.kind, self.index = path, kind, index

    def field(self, name: str) -> str:
        """Prefix for a problem with one field of this record."""
        if self.kind == "parquet":
            return f"{self.path}: row {self.index} (0-based), column '{name}'"
        return f"{self}: field '{name}'"

    def missing(self, name: str) -> str:
        if self.kind == "parquet":  # a missing column is caught on the schema: here the value is null
            return f"{self.path}: row {self.index} (0-based), column '{name}': is null"
        return f"{self}: missing field '{name}'"

    def __str__(self) -> str:
        if self.kind == "jsonl":
            return f"{self.path}:{self.index}"
        if self.kind == "json":
            return f"{self.path}: element {self.index}"
        return f"{self.path}: row {self.index} (0-based)"


def _read_located(path: str | Path) -> tuple[list[tuple[_Loc, dict]], list[str] | None]:
    """Records with their locations, and the Parquet column names (None for JSON)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path)
    if suffix in (".jsonl", ".json"):
        return _read_json(path), None
    raise DataError(f"{path}: unknown data format '{suffix}' (expected .jsonl, .json or .parquet)")


def _read_json(path: Path) -> list[tuple[_Loc, dict]]:
    """JSON Lines (one object per line, blank lines skipped); a .json file holding one array also works."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        located = [(_Loc(path, "json", i), row) for i, row in enumerate(rows)]
    else:
        located = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            located.append((_Loc(path, "jsonl", lineno), row))
    for loc, row in located:
        if not isinstance(row, dict):
            raise DataError(f"{loc}: expected a JSON object, got {_type_name(row)}")
    if not located:
        raise DataError(f"{path}: no records (empty file)")
    return located


def _read_parquet(path: Path) -> tuple[list[tuple[_Loc, dict]], list[str]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # ArrowInvalid, OSError: a corrupt or non-Parquet file
        raise DataError(f"{path}: cannot read Parquet ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if table.num_rows == 0:
        raise DataError(f"{path}: no records (empty table)")
    # Nulls count as absent, so a table that mixes two forms (nulls in the other form's columns) reads.
    rows = [{k: v for k, v in row.items() if v is not None} for row in table.to_pylist()]
    return [(_Loc(path, "parquet", i), row) for i, row in enumerate(rows)], list(table.column_names)


def load_records(path: str | Path) -> list[dict]:
    """Every record of a data file as a dict, in file order.

    `.jsonl` / `.json`: JSON Lines, one object per line, blank lines skipped (a `.json` file that
    holds one JSON array of objects is read too); `.parquet`: one dict per row (pyarrow).
    Raises DataError for a missing file, an unknown suffix, invalid JSON, a non-object line or an
    empty file, naming the file and line.
    """
    return [row for _, row in _read_located(path)[0]]


# ---------------------------------------------------------------------------------------------
# Field checks


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _require_columns(path: Path, columns: list[str] | None, forms: list[tuple[str, ...]]) -> None:
    """For Parquet: some documented form's columns must all be present, else name the first missing one."""
    if columns is None:
        return
    for form in forms:
        if all(c in columns for c in form):
            return
    best = max(forms, key=lambda form: sum(c in columns for c in form))
    missing = next(c for c in best if c not in columns)
    shown = ", ".join(columns) or "none"
    alternatives = " or ".join("{" + ", ".join(f) + "}" for f in forms)
    raise DataError(f"{path}: missing column '{missing}' (columns: {shown}; expected {alternatives})")


def _get(row: dict, loc: _Loc, name: str) -> Any:
    if name not in row:
        raise DataError(loc.missing(name))
    return row[name]


def _string(row: dict, loc: _Loc, name: str) -> str:
    value = _get(row, loc, name)
    if not isinstance(value, str):
        raise DataError(f"{loc.field(name)}: expected a string, got {_type_name(value)}")
    return value


def _messages(row: dict, loc: _Loc) -> list[dict]:
    value = _get(row, loc, "messages")
    if not isinstance(value, list) or not value:
        what = "an empty list" if value == [] else _type_name(value)
        raise DataError(f"{loc.field('messages')}: expected a non-empty list of {{role, content}}, got {what}")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise DataError(f"{loc.field('messages')}: message {i} is {_type_name(message)}, expected an object")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                got = "missing" if key not in message else _type_name(message[key])
                raise DataError(f"{loc.field('messages')}: message {i} '{key}' must be a string, got {got}")
        out.append({"role": message["role"], "content": message["content"]})
    return out


# ---------------------------------------------------------------------------------------------
# Schema-aware loaders


def load_sft(path: str | Path) -> list[SFTExample]:
    """Demonstrations: `{prompt, response}`, `{messages}` whose last message is the assistant's
    response (the messages before it are the prompt, a list of at least one message), or
    `{prompt, turns}`: a multi-turn episode, turns alternating policy and environment, policy
    first and last (the prompt may also be `{messages}` not ending in an assistant turn)."""
    located, columns = _read_located(path)
    _require_columns(Path(path), columns, [("prompt", "response"), ("messages",), ("prompt", "turns")])
    return [_sft_example(row, loc) for loc, row in located]


def _turns(row: dict, loc: _Loc) -> tuple[str, ...]:
    """`turns`: an odd number of strings, policy turns (even indices) not empty."""
    value = _get(row, loc, "turns")
    if not isinstance(value, list) or not value:
        what = "an empty list" if value == [] else _type_name(value)
        raise DataError(f"{loc.field('turns')}: expected a non-empty list of strings "
                        f"(policy, environment, ..., policy), got {what}")
    for i, turn in enumerate(value):
        if not isinstance(turn, str):
            raise DataError(f"{loc.field('turns')}: turn {i} is {_type_name(turn)}, expected a string")
    if len(value) % 2 == 0:
        raise DataError(f"{loc.field('turns')}: {len(value)} turns; expected an odd number "
                        f"(policy, environment, ..., policy: the policy speaks first and last)")
    for i in range(0, len(value), 2):
        if not value[i].strip():
            raise DataError(f"{loc.field('turns')}: turn {i} (policy) is empty")
    return tuple(value)


def _sft_example(row: dict, loc: _Loc) -> SFTExample:
    if "turns" in row:
        turns = _turns(row, loc)
        return SFTExample(prompt=_prompt(row, loc), response=" ".join(turns), turns=turns)
    if "messages" in row:
        messages = _messages(row, loc)
        if messages[-1]["role"] != "assistant":
            raise DataError(
                f"{loc.field('messages')}: the last message must be the assistant's response, "
                f"got role '{messages[-1]['role']}'"
            )
        if len(messages) < 2:
            raise DataError(f"{loc.field('messages')}: no prompt message before the assistant's response")
        return SFTExample(prompt=messages[:-1], response=messages[-1]["content"])
    return SFTExample(prompt=_nonempty(row, loc, "prompt"), response=_nonempty(row, loc, "response"))


def load_comparisons(path: str | Path) -> list[Comparison]:
    """Rankings: `{prompt, responses: [K], ranking: [indices best first]}` or the pairwise
    `{prompt, chosen, rejected}` (-> responses [chosen, rejected], ranking [0, 1]).

    The prompt may also be given as `{messages}` (a chat prompt). The ranking must be a
    permutation of range(K) with K >= 2.
    """
    located, columns = _read_located(path)
    forms = [("prompt", "responses", "ranking"), ("prompt", "chosen", "rejected")]
    if columns is not None and "messages" in columns:
        forms = [("messages",) + f[1:] for f in forms] + forms
    _require_columns(Path(path), columns, forms)
    out = []
    for loc, row in located:
        prompt = _prompt(row, loc)
        if "responses" in row or "ranking" in row or "chosen" not in row:
            responses = _get(row, loc, "responses")
            if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
                raise DataError(f"{loc.field('responses')}: expected a list of strings, got {_describe_list(responses)}")
            if len(responses) < 2:
                raise DataError(f"{loc.field('responses')}: a comparison needs K >= 2 responses, got {len(responses)}")
            ranking = _get(row, loc, "ranking")
            if not isinstance(ranking, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ranking):
                raise DataError(f"{loc.field('ranking')}: expected a list of integers, got {_describe_list(ranking)}")
            if sorted(ranking) != list(range(len(responses))):
                raise DataError(
                    f"{loc.field('ranking')}: {ranking} is not a permutation of 0..{len(responses) - 1} "
                    f"(indices of the {len(responses)} responses, best first)"
                )
            out.append(Comparison(prompt=prompt, responses=list(responses), ranking=list(ranking)))
        else:
            chosen, rejected = _string(row, loc, "chosen"), _string(row, loc, "rejected")
            out.append(Comparison(prompt=prompt, responses=[chosen, rejected], ranking=[0, 1]))
    return out


def load_prompts(path: str | Path) -> list[Prompt]:
    """RL / eval prompts: `{prompt}` -> the string, or `{messages}` (not ending in an assistant
    turn) -> the list of messages."""
    located, columns = _read_located(path)
    _require_columns(Path(path), columns, [("prompt",), ("messages",)])
    return [_prompt(row, loc) for loc, row in located]


def load_texts(path: str | Path) -> list[str]:
    """Pretraining texts: `{text}` -> the strings."""
    located, columns = _read_located(path)
    _require_columns(Path(path), columns, [("text",)])
    return [_string(row, loc, "text") for loc, row in located]


def load_lm_data(path: str | Path) -> list[str] | list[SFTExample]:
    """Language-model data for the ptx mix: pretraining texts `{text}` -> strings, or
    demonstrations (`{prompt, response}` / `{messages}` / `{prompt, turns}`, as `load_sft`) ->
    SFTExamples. The first record decides which; every record must then have that form."""
    located, columns = _read_located(path)
    _require_columns(Path(path), columns, [("text",), ("prompt", "response"), ("messages",), ("prompt", "turns")])
    first = located[0][1]
    if "text" in first and not ({"prompt", "response", "messages", "turns"} & first.keys()):
        return [_string(row, loc, "text") for loc, row in located]
    return [_sft_example(row, loc) for loc, row in located]


def _prompt(row: dict, loc: _Loc) -> Prompt:
    """`prompt` (a string) or `messages` (a chat prompt that does not end with the assistant)."""
    if "prompt" not in row and "messages" in row:
        messages = _messages(row, loc)
        if messages[-1]["role"] == "assistant":
            raise DataError(f"{loc.field('messages')}: a prompt must not end with an assistant message")
        return messages
    return _nonempty(row, loc, "prompt")


def _nonempty(row: dict, loc: _Loc, name: str) -> str:
    """A string field that must hold text: an empty prompt or demonstration would train or score
    nothing but the template, silently."""
    value = _string(row, loc, name)
    if not value.strip():
        raise DataError(f"{loc.field(name)}: empty {name}")
    return value


def _describe_list(value: Any) -> str:
    if not isinstance(value, list):
        return _type_name(value)
    kinds = sorted({_type_name(v) for v in value})
    return f"a list of {'/'.join(kinds) or 'nothing'}"
