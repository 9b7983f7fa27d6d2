"""Reading data files (JSON Lines, JSON arrays, Parquet, Arrow, dataset folders) and normalising
their documented schemas, including the common Hugging Face ones.

Every error is a one-line `DataError` naming the file and the line (JSON Lines), the element
(JSON array) or the row and column (Parquet, Arrow; in a folder, the shard), fit for a CLI error:

    data/sft.jsonl:17: missing field 'response'
    data/sft.parquet: missing column 'response' (columns: prompt, text; accepted schemas: ...)
    data/hh/train-00001-of-00002.parquet: row 16 (0-based), column 'response': expected a string, got int

Sources: a `.jsonl` / `.json` / `.parquet` / `.arrow` file, or a folder: Parquet shards (read in
sorted order; a folder of hub-named shards `SPLIT-00000-of-00002.parquet` reads the `train` split),
a `datasets` `save_to_disk` folder (`state.json`, `data-*.arrow` Arrow streams; `datasets` itself
is not needed) or a `DatasetDict` folder (`dataset_dict.json` + one folder per split: `train`).
`FOLDER#SPLIT` picks another split.

Schemas (extra fields are ignored; see docs/tasks.md and the README):
    SFT            {prompt, response}  or  {messages: [{role, content}, ...]} ending in an assistant turn
                   or  {prompt, turns: [policy, environment, ..., policy]} (a multi-turn episode)
                   or  TRL {prompt, completion} (strings or message lists)
    comparisons    {prompt, chosen, rejected} (strings: TRL standard; message lists: TRL conversational,
                   UltraFeedback binarized)  or  {chosen, rejected} alone (HH-RLHF transcripts, or TRL
                   implicit-prompt message lists)  or  {prompt, responses: [K], ranking: [indices, best first]}
    RL prompts     {prompt} (a string or messages)  or  {messages} not ending in an assistant turn
    pretraining    {text}
A prompt is a string or a list of chat messages (`{role, content}` dicts); `format_prompt`
(rlhf_dist.data.encode) turns either into token ids. Every loader takes `columns`, a mapping
{standard name: the file's column} (or a `DataColumnsConfig`), applied before the schema is read.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Union

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


_TABLE_KINDS = ("parquet", "arrow")


class _Loc:
    """Where a record came from, to prefix error messages: 'file:line', 'file: element i' or a Parquet row."""

    def __init__(self, path: Path, kind: str, index: int) -> None:
        self.path, self.kind, self.index = path, kind, index

    def field(self, name: str) -> str:
        """Prefix for a problem with one field of this record."""
        if self.kind in _TABLE_KINDS:
            return f"{self.path}: row {self.index} (0-based), column '{name}'"
        return f"{self}: field '{name}'"

    def missing(self, name: str) -> str:
        if self.kind in _TABLE_KINDS:  # a missing column is caught on the schema: here the value is null
            return f"{self.path}: row {self.index} (0-based), column '{name}': is null"
        return f"{self}: missing field '{name}'"

    def __str__(self) -> str:
        if self.kind == "jsonl":
            return f"{self.path}:{self.index}"
        if self.kind == "json":
            return f"{self.path}: element {self.index}"
        return f"{self.path}: row {self.index} (0-based)"


def _read_located(path: str | Path) -> tuple[list[tuple[_Loc, dict]], list[str] | None]:
    """Records with their locations, and the table's column names (None for JSON)."""
    path, split = _split_suffix(path)
    if path.is_dir():
        return _read_folder(path, split)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    if split is not None:
        raise DataError(f"{path}#{split}: '#{split}' picks a split of a dataset folder, but {path} is a file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _rows_of_tables([path], _read_parquet_table, path)
    if suffix == ".arrow":
        return _rows_of_tables([path], _read_arrow_table, path)
    if suffix in (".jsonl", ".json"):
        return _read_json(path), None
    raise DataError(f"{path}: unknown data format '{suffix}' (expected .jsonl, .json, .parquet, .arrow or a folder)")


def _split_suffix(path: str | Path) -> tuple[Path, str | None]:
    """`FOLDER#SPLIT` -> (FOLDER, SPLIT); a path that exists as written is never split (a '#' in a name)."""
    text = str(path)
    if "#" in text and not Path(text).exists():
        base, split = text.rsplit("#", 1)
        return Path(base), split
    return Path(text), None


def source_exists(path: str | Path) -> bool:
    """True when `path` names a data file or folder that exists (`FOLDER#SPLIT`: the folder; the
    split itself is checked when the data is read)."""
    return _split_suffix(path)[0].exists()


_SHARD_NAME = re.compile(r"^(?P<split>.+?)-\d+-of-\d+$")  # the hub's train-00000-of-00002


def _read_folder(folder: Path, split: str | None) -> tuple[list[tuple[_Loc, dict]], list[str]]:
    """A DatasetDict, a save_to_disk dataset or a folder of Parquet shards."""
    if (folder / "dataset_dict.json").is_file():
        try:
            splits = list(json.loads((folder / "dataset_dict.json").read_text())["splits"])
        except (ValueError, KeyError, TypeError):
            splits = sorted(p.name for p in folder.iterdir() if p.is_dir())
        name = split or "train"
        if name not in splits or not (folder / name).is_dir():
            raise DataError(f"{folder}: no split '{name}' in this DatasetDict (splits: {', '.join(splits) or 'none'}; "
                            f"pick one as {folder}#SPLIT)")
        return _read_folder(folder / name, None)
    arrow = sorted(folder.glob("data-*.arrow"))
    if (folder / "state.json").is_file() or arrow:
        if split is not None:
            raise DataError(f"{folder}#{split}: a save_to_disk folder holds one split; name the folder alone")
        try:  # save_to_disk records its shards, in order, in state.json
            names = [f["filename"] for f in json.loads((folder / "state.json").read_text())["_data_files"]]
            arrow = [folder / n for n in names]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if not arrow:
            raise DataError(f"{folder}: a save_to_disk folder with no data-*.arrow files")
        return _rows_of_tables(arrow, _read_arrow_table, folder)
    shards = sorted(folder.glob("*.parquet"))
    if not shards and (folder / "data").is_dir():  # a dataset repository as downloaded from the hub
        shards = sorted((folder / "data").glob("*.parquet"))
    if not shards:
        raise DataError(f"{folder}: no data in this folder (expected Parquet shards *.parquet, a save_to_disk "
                        f"folder with state.json and data-*.arrow, or a DatasetDict with dataset_dict.json)")

    def split_of(shard: Path) -> str:
        match = _SHARD_NAME.match(shard.stem)
        return match["split"] if match else shard.stem

    splits = sorted({split_of(s) for s in shards})
    if split is not None or (len(splits) > 1 and all(_SHARD_NAME.match(s.stem) for s in shards)):
        name = split or "train"
        shards = [s for s in shards if split_of(s) == name]
        if not shards:
            raise DataError(f"{folder}: no shards of split '{name}' (splits: {', '.join(splits)}; pick one as "
                            f"{folder}#SPLIT)")
    return _rows_of_tables(shards, _read_parquet_table, folder)


def _rows_of_tables(files: list[Path], read, where: Path) -> tuple[list[tuple[_Loc, dict]], list[str]]:
    """Rows of one or more tables (the shards of one dataset, in order), each located in its own file."""
    located: list[tuple[_Loc, dict]] = []
    columns: list[str] = []
    for file in files:
        kind, table = read(file)
        columns += [c for c in table.column_names if c not in columns]
        # Nulls count as absent, so a table that mixes two forms (nulls in the other form's columns) reads.
        located += [(_Loc(file, kind, i), {k: v for k, v in row.items() if v is not None})
                    for i, row in enumerate(table.to_pylist())]
    if not located:
        raise DataError(f"{where}: no records (empty table)")
    return located, columns


def _read_parquet_table(path: Path):
    import pyarrow.parquet as pq

    try:
        return "parquet", pq.read_table(path)
    except Exception as e:  # ArrowInvalid, OSError: a corrupt or non-Parquet file
        raise DataError(f"{path}: cannot read Parquet ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def _read_arrow_table(path: Path):
    """An Arrow IPC stream (what `datasets` writes) or an Arrow IPC file."""
    import pyarrow as pa

    if not path.is_file():
        raise DataError(f"{path}: no such data file (listed in {path.parent / 'state.json'})")
    data = path.read_bytes()
    try:
        try:
            return "arrow", pa.ipc.open_stream(data).read_all()
        except pa.ArrowInvalid:
            return "arrow", pa.ipc.open_file(data).read_all()
    except Exception as e:
        raise DataError(f"{path}: cannot read Arrow ({type(e).__name__}: {str(e).splitlines()[0]})") from None


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


def load_records(path: str | Path) -> list[dict]:
    """Every record of a data file as a dict, in file order.

    `.jsonl` / `.json`: JSON Lines, one object per line, blank lines skipped (a `.json` file that
    holds one JSON array of objects is read too); `.parquet`, `.arrow` and dataset folders: one
    dict per row (pyarrow), nulls left out.
    Raises DataError for a missing file, an unknown suffix, invalid JSON, a non-object line or an
    empty file, naming the file and line.
    """
    return [row for _, row in _read_located(path)[0]]


# ---------------------------------------------------------------------------------------------
# Field checks


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# Accepted schemas per loader: (what to call it, its columns). A file whose columns hold none of
# them is refused up front, naming its columns and these.
_SFT_FORMS = [("prompt/response", ("prompt", "response")), ("messages", ("messages",)),
              ("multi-turn episode", ("prompt", "turns")), ("TRL prompt-completion", ("prompt", "completion"))]
_COMPARISON_FORMS = [
    ("ranked", ("prompt", "responses", "ranking")),
    ("pairwise: TRL standard/conversational, UltraFeedback binarized", ("prompt", "chosen", "rejected")),
    ("implicit prompt: HH-RLHF transcripts, TRL message lists", ("chosen", "rejected")),
]
_PROMPT_FORMS = [("prompt", ("prompt",)), ("messages", ("messages",))]
_TEXT_FORMS = [("text", ("text",))]


def _check_schema(path: Path, located: list[tuple[_Loc, dict]], columns: list[str] | None,
                  forms: list[tuple[str, tuple[str, ...]]]) -> None:
    """Some form's columns must all be in the file (for JSON: in some record), else one line naming
    the first missing one, the columns found and the accepted schemas."""
    present = columns if columns is not None else list(dict.fromkeys(k for _, row in located for k in row))

    def has(column: str) -> bool:  # a chat prompt may come as `messages`
        return column in present or (column == "prompt" and "messages" in present)

    for _, form in forms:
        if all(has(c) for c in form):
            return
    best = max((form for _, form in forms), key=lambda form: sum(has(c) for c in form))
    missing = next(c for c in best if not has(c))
    accepted = "; ".join(f"{name} {{{', '.join(form)}}}" for name, form in forms)
    if columns is None:  # JSON: name the first record that lacks it
        where = next(str(loc) for loc, row in located if missing not in row)
        raise DataError(f"{where}: missing field '{missing}' (fields: {', '.join(present) or 'none'}; accepted "
                        f"schemas: {accepted}; columns.* maps other names)")
    raise DataError(f"{path}: missing column '{missing}' (columns: {', '.join(present) or 'none'}; accepted "
                    f"schemas: {accepted}; columns.* maps other names)")


def _mapping(columns: Any) -> dict[str, str]:
    """{standard name: the file's column} from a mapping or a DataColumnsConfig-like dataclass."""
    if columns is None:
        return {}
    if dataclasses.is_dataclass(columns):
        columns = dataclasses.asdict(columns)
    return {name: column for name, column in dict(columns).items() if column and column != name}


def _load(path: str | Path, columns: Any, forms) -> tuple[list[tuple[_Loc, dict]], list[str] | None]:
    """Read, rename the mapped columns to the standard names, check the schema."""
    located, names = _read_located(path)
    mapping = _mapping(columns)
    if mapping:
        present = names if names is not None else list(dict.fromkeys(k for _, row in located for k in row))
        for name, column in mapping.items():
            if column not in present:
                raise DataError(f"{path}: columns.{name}={column}: no column '{column}' "
                                f"(columns: {', '.join(present) or 'none'})")
        for _, row in located:
            # the mapped column replaces a same-named one, wholly (a null leaves the field absent)
            values = {name: row[column] for name, column in mapping.items() if column in row}
            for name, column in mapping.items():
                row.pop(name, None)
                row.pop(column, None)
            row.update(values)
        if names is not None:
            renamed = {column: name for name, column in mapping.items()}
            names = list(dict.fromkeys(renamed.get(c, c) for c in names if c not in mapping or c in renamed))
    _check_schema(Path(path), located, names, forms)
    return located, names


def _get(row: dict, loc: _Loc, name: str) -> Any:
    if name not in row:
        raise DataError(loc.missing(name))
    return row[name]


def _string(row: dict, loc: _Loc, name: str) -> str:
    value = _get(row, loc, name)
    if not isinstance(value, str):
        raise DataError(f"{loc.field(name)}: expected a string, got {_type_name(value)}")
    return value


def _messages(row: dict, loc: _Loc, name: str = "messages") -> list[dict]:
    """A non-empty list of {role, content} strings (other keys of a message are dropped)."""
    value = _get(row, loc, name)
    if not isinstance(value, list) or not value:
        what = "an empty list" if value == [] else _type_name(value)
        raise DataError(f"{loc.field(name)}: expected a non-empty list of {{role, content}}, got {what}")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise DataError(f"{loc.field(name)}: message {i} is {_type_name(message)}, expected an object")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                got = "missing" if key not in message else _type_name(message[key])
                raise DataError(f"{loc.field(name)}: message {i} '{key}' must be a string, got {got}")
        out.append({"role": message["role"], "content": message["content"]})
    return out


def _ending_with_reply(row: dict, loc: _Loc, name: str) -> list[dict]:
    """Messages whose last one is the assistant's reply."""
    messages = _messages(row, loc, name)
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{loc.field(name)}: the last message must be the assistant's response, "
                        f"got role '{messages[-1]['role']}'")
    return messages


# ---------------------------------------------------------------------------------------------
# Schema-aware loaders


def load_sft(path: str | Path, columns: Any = None) -> list[SFTExample]:
    """Demonstrations: `{prompt, response}`, `{messages}` whose last message is the assistant's
    response (the messages before it are the prompt, a list of at least one message),
    `{prompt, turns}`: a multi-turn episode, turns alternating policy and environment, policy
    first and last (the prompt may also be `{messages}` not ending in an assistant turn), or
    TRL's `{prompt, completion}` (strings, or message lists: the completion's last message is the
    response, any before it continue the prompt). `columns`: see the module docstring."""
    located, _ = _load(path, columns, _SFT_FORMS)
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
    if "completion" in row and "response" not in row:
        prompt = _prompt(row, loc)
        if not isinstance(row["completion"], list):
            return SFTExample(prompt=prompt, response=_nonempty(row, loc, "completion"))
        completion = _ending_with_reply(row, loc, "completion")
        if len(completion) > 1:  # the completion's earlier turns (tool calls, ...) are context, not target
            prompt = _as_messages(prompt) + completion[:-1]
        return SFTExample(prompt=prompt, response=completion[-1]["content"])
    if "messages" in row:
        messages = _ending_with_reply(row, loc, "messages")
        if len(messages) < 2:
            raise DataError(f"{loc.field('messages')}: no prompt message before the assistant's response")
        return SFTExample(prompt=messages[:-1], response=messages[-1]["content"])
    return SFTExample(prompt=_nonempty(row, loc, "prompt"), response=_nonempty(row, loc, "response"))


def load_comparisons(path: str | Path, columns: Any = None) -> list[Comparison]:
    """Rankings: `{prompt, responses: [K], ranking: [indices best first]}` or a pair, read as
    responses [chosen, rejected], ranking [0, 1]:

    - `{prompt, chosen, rejected}` strings (TRL standard);
    - `{prompt, chosen, rejected}` message lists (TRL conversational: chosen/rejected hold the
      reply; UltraFeedback binarized: they hold the whole conversation, and the messages before
      the reply are the prompt, `prompt` being its text);
    - `{chosen, rejected}` alone: HH-RLHF transcripts ("\\n\\nHuman: ... \\n\\nAssistant: ...") or
      TRL implicit-prompt message lists; the shared part before the last assistant turn is the prompt.

    The prompt may also be given as `{messages}` (a chat prompt). The ranking must be a
    permutation of range(K) with K >= 2. `columns`: see the module docstring.
    """
    located, _ = _load(path, columns, _COMPARISON_FORMS)
    out = []
    for loc, row in located:
        if "responses" in row or "ranking" in row or "chosen" not in row:
            prompt = _prompt(row, loc)
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
            prompt, chosen, rejected = _pair(row, loc)
            out.append(Comparison(prompt=prompt, responses=[chosen, rejected], ranking=[0, 1]))
    return out


def _pair(row: dict, loc: _Loc) -> tuple[Prompt, str, str]:
    """(prompt, chosen reply, rejected reply) of a pairwise row in any of the accepted forms."""
    chosen, rejected = _get(row, loc, "chosen"), _get(row, loc, "rejected")
    has_prompt = "prompt" in row or "messages" in row
    if isinstance(chosen, str) and isinstance(rejected, str):
        if has_prompt:
            return _prompt(row, loc), chosen, rejected
        return _hh_pair(chosen, rejected, loc)
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise DataError(f"{loc.field('chosen')}: 'chosen' and 'rejected' must both be strings or both lists of "
                        f"messages, got {_type_name(chosen)} and {_type_name(rejected)}")
    chosen_messages = _ending_with_reply(row, loc, "chosen")
    rejected_messages = _ending_with_reply(row, loc, "rejected")
    context = chosen_messages[:-1]
    if context != rejected_messages[:-1]:
        raise DataError(f"{loc}: 'chosen' and 'rejected' differ before their last (assistant) message; a pair "
                        f"compares two replies to one conversation")
    if not has_prompt:  # TRL implicit prompt
        if not context:
            raise DataError(f"{loc}: no prompt: give a 'prompt' field, or 'chosen'/'rejected' conversations "
                            f"holding the messages before the reply")
        prompt: Prompt = context
    else:
        given = _prompt(row, loc)
        if not context:  # TRL conversational: chosen/rejected are the reply alone
            prompt = given
        elif isinstance(given, str) or context[: len(given)] == given:
            prompt = context  # UltraFeedback binarized: the conversation holds the prompt already
        else:
            prompt = given + context
    return prompt, chosen_messages[-1]["content"], rejected_messages[-1]["content"]


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _hh_pair(chosen: str, rejected: str, loc: _Loc) -> tuple[list[dict], str, str]:
    """HH-RLHF: two transcripts sharing everything up to the last "\\n\\nAssistant:"; that shared
    prefix, as user/assistant messages, is the prompt; what follows in each is its reply."""
    cut = "\n\nAssistant:"
    parts = []
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        at = text.rfind(cut)
        if at < 0:
            raise DataError(f"{loc.field(name)}: no prompt: a {{chosen, rejected}} row without 'prompt' must hold "
                            f"HH-RLHF transcripts ('\\n\\nHuman: ... \\n\\nAssistant: ...')")
        parts.append((text[:at], text[at + len(cut):].strip()))
    (prefix, chosen_reply), (other_prefix, rejected_reply) = parts
    if prefix != other_prefix:
        raise DataError(f"{loc}: HH-RLHF 'chosen' and 'rejected' differ before their last '\\n\\nAssistant:' turn "
                        f"(the shared part is the prompt)")
    pieces = _HH_TURN.split(prefix)
    if pieces[0].strip() or len(pieces) < 3:
        raise DataError(f"{loc.field('chosen')}: not an HH-RLHF transcript: it must open with '\\n\\nHuman:'")
    messages = [{"role": _HH_ROLES[role], "content": content.strip()}
                for role, content in zip(pieces[1::2], pieces[2::2])]
    return messages, chosen_reply, rejected_reply


def load_prompts(path: str | Path, columns: Any = None) -> list[Prompt]:
    """RL / eval prompts: `{prompt}` -> the string (or its messages, TRL prompt-only
    conversational), or `{messages}` (not ending in an assistant turn) -> the list of messages."""
    located, _ = _load(path, columns, _PROMPT_FORMS)
    return [_prompt(row, loc) for loc, row in located]


def load_texts(path: str | Path, columns: Any = None) -> list[str]:
    """Pretraining texts: `{text}` -> the strings."""
    located, _ = _load(path, columns, _TEXT_FORMS)
    return [_string(row, loc, "text") for loc, row in located]


def load_lm_data(path: str | Path, columns: Any = None) -> list[str] | list[SFTExample]:
    """Language-model data for the ptx mix: pretraining texts `{text}` -> strings, or
    demonstrations (any `load_sft` form) -> SFTExamples. The first record decides which; every
    record must then have that form."""
    located, _ = _load(path, columns, _TEXT_FORMS + _SFT_FORMS)
    first = located[0][1]
    if "text" in first and not ({"prompt", "response", "messages", "turns", "completion"} & first.keys()):
        return [_string(row, loc, "text") for loc, row in located]
    return [_sft_example(row, loc) for loc, row in located]


def _prompt(row: dict, loc: _Loc) -> Prompt:
    """`prompt` (a string, or a list of messages) or `messages` (a chat prompt); a chat prompt
    must not end with the assistant."""
    name = "prompt" if "prompt" in row or "messages" not in row else "messages"
    if name == "prompt" and not isinstance(row.get("prompt"), list):
        return _nonempty(row, loc, "prompt")
    messages = _messages(row, loc, name)
    if messages[-1]["role"] == "assistant":
        raise DataError(f"{loc.field(name)}: a prompt must not end with an assistant message")
    return messages


def _as_messages(prompt: Prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


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
