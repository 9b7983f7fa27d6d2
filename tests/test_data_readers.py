"""Data readers: both documented forms of each schema, Parquet round trips, one-line errors."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf_dist.data import (
    Comparison,
    DataError,
    SFTExample,
    load_comparisons,
    load_lm_data,
    load_prompts,
    load_records,
    load_sft,
    load_texts,
)


def write_jsonl(path, rows, blank_after: int | None = None):
    """Write rows (dicts or raw strings) one per line; optionally a blank line after row `blank_after`."""
    lines = []
    for i, row in enumerate(rows):
        lines.append(row if isinstance(row, str) else json.dumps(row))
        if blank_after is not None and i == blank_after:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


# --- SFT -------------------------------------------------------------------------------------


def test_sft_both_forms(tmp_path):
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "sort 3 1."}]
    path = write_jsonl(
        tmp_path / "sft.jsonl",
        [
            {"prompt": "count from 1 to 3.", "response": "1 2 3.", "extra": 7},
            {"messages": chat + [{"role": "assistant", "content": "1 3."}]},
        ],
    )
    assert load_sft(path) == [
        SFTExample(prompt="count from 1 to 3.", response="1 2 3."),
        SFTExample(prompt=chat, response="1 3."),
    ]


def test_jsonl_error_names_file_and_line(tmp_path):
    # a blank line after row 0: the bad row is on line 3 of the file
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c"}], blank_after=0)
    with pytest.raises(DataError) as e:
        load_sft(path)
    assert str(e.value) == f"{path}:3: missing field 'response'"
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "lines, expected",
    [
        (['{"prompt": "a", "response": "b"}', "{not json"], ":2: invalid JSON"),
        (['["a", "b"]'], ":1: expected a JSON object, got list"),
        (['{"prompt": 3, "response": "b"}'], ":1: field 'prompt': expected a string, got int"),
        (['{"prompt": "a", "response": null}'], ":1: field 'response': expected a string, got null"),
        (['{"messages": [{"role": "user", "content": "hi"}]}'], ":1: field 'messages': the last message must be the assistant's"),
        (['{"messages": [{"role": "assistant", "content": "hi"}]}'], ":1: field 'messages': no prompt message"),
        (['{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}'], "message 0 'content' must be a string, got missing"),
        (['{"messages": []}'], "expected a non-empty list of {role, content}, got an empty list"),
        (['{"text": "a"}'], ":1: missing field 'prompt'"),
    ],
)
def test_sft_errors_are_one_line(tmp_path, lines, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as e:
        load_sft(path)
    msg = str(e.value)
    assert msg.startswith(str(path)) and expected in msg and "\n" not in msg


def test_file_level_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty.jsonl: no records"):
        load_records(empty)
    with pytest.raises(DataError, match="nope.jsonl: no such data file"):
        load_records(tmp_path / "nope.jsonl")
    other = tmp_path / "x.csv"
    other.write_text("a,b\n")
    with pytest.raises(DataError, match="unknown data format '.csv'"):
        load_records(other)
    corrupt = tmp_path / "x.parquet"
    corrupt.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="x.parquet: cannot read Parquet"):
        load_records(corrupt)


def test_json_array_file(tmp_path):
    path = tmp_path / "texts.json"
    path.write_text(json.dumps([{"text": "a b"}, {"text": "c"}]))
    assert load_texts(path) == ["a b", "c"]
    path.write_text(json.dumps([{"text": "a b"}, {"txt": "c"}]))
    with pytest.raises(DataError, match=r"texts.json: element 1: missing field 'text'"):
        load_texts(path)


# --- comparisons -----------------------------------------------------------------------------


def test_comparisons_both_forms(tmp_path):
    path = write_jsonl(
        tmp_path / "cmp.jsonl",
        [
            {"prompt": "p0", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]},
            {"prompt": "p1", "chosen": "good", "rejected": "bad"},
            {"messages": [{"role": "user", "content": "p2"}], "responses": ["x", "y"], "ranking": [1, 0]},
        ],
    )
    assert load_comparisons(path) == [
        Comparison(prompt="p0", responses=["a", "b", "c"], ranking=[2, 0, 1]),
        Comparison(prompt="p1", responses=["good", "bad"], ranking=[0, 1]),
        Comparison(prompt=[{"role": "user", "content": "p2"}], responses=["x", "y"], ranking=[1, 0]),
    ]


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}, "is not a permutation of 0..1"),
        ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 2]}, "is not a permutation of 0..1"),
        ({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 1]}, "is not a permutation of 0..2"),
        ({"prompt": "p", "responses": ["a"], "ranking": [0]}, "needs K >= 2 responses, got 1"),
        ({"prompt": "p", "responses": ["a", "b"], "ranking": [True, False]}, "expected a list of integers"),
        ({"prompt": "p", "responses": ["a", 3], "ranking": [0, 1]}, "field 'responses': expected a list of strings"),
        ({"prompt": "p", "responses": ["a", "b"]}, "missing field 'ranking'"),
        ({"prompt": "p", "chosen": "a"}, "missing field 'rejected'"),
        ({"responses": ["a", "b"], "ranking": [0, 1]}, "missing field 'prompt'"),
    ],
)
def test_comparison_errors(tmp_path, row, expected):
    path = write_jsonl(tmp_path / "cmp.jsonl", [{"prompt": "ok", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(DataError) as e:
        load_comparisons(path)
    assert str(e.value).startswith(f"{path}:2: ") and expected in str(e.value)


# --- prompts and texts -----------------------------------------------------------------------


def test_prompts_and_texts(tmp_path):
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"messages": chat}])
    assert load_prompts(path) == ["a", chat]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": chat + [{"role": "assistant", "content": "x"}]}])
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'messages': a prompt must not end with an assistant"):
        load_prompts(bad)
    texts = write_jsonl(tmp_path / "t.jsonl", [{"text": "one\ntwo"}, {"text": ""}])
    assert load_texts(texts) == ["one\ntwo", ""]
    with pytest.raises(DataError, match=r"t2.jsonl:1: field 'text': expected a string, got list"):
        load_texts(write_jsonl(tmp_path / "t2.jsonl", [{"text": ["a"]}]))


def test_lm_data_texts_or_demonstrations(tmp_path):
    """The ptx reader: {text} rows -> strings; demonstrations in either SFT form -> SFTExamples."""
    texts = write_jsonl(tmp_path / "t.jsonl", [{"text": "one"}, {"text": "two"}])
    assert load_lm_data(texts) == ["one", "two"]
    chat = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    demos = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "response": "r"}, {"messages": chat}])
    assert load_lm_data(demos) == [SFTExample("p", "r"), SFTExample([chat[0]], "a")]
    # the first record decides the form; a later record of the other form is named by file and line
    mixed = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "p", "response": "r"}, {"text": "t"}])
    with pytest.raises(DataError, match=r"m.jsonl:2: .*'prompt'"):
        load_lm_data(mixed)
    with pytest.raises(DataError, match=r"n.jsonl:1: .*'response'"):
        load_lm_data(write_jsonl(tmp_path / "n.jsonl", [{"prompt": "p"}]))


# --- Parquet ---------------------------------------------------------------------------------


def test_parquet_round_trip(tmp_path):
    sft = pa.table({"prompt": ["p0", "p1"], "response": ["r0", "r1"]})
    pq.write_table(sft, tmp_path / "sft.parquet")
    assert load_sft(tmp_path / "sft.parquet") == [SFTExample("p0", "r0"), SFTExample("p1", "r1")]
    assert load_records(tmp_path / "sft.parquet") == [{"prompt": "p0", "response": "r0"}, {"prompt": "p1", "response": "r1"}]

    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    pq.write_table(pa.table({"messages": [chat]}), tmp_path / "chat.parquet")  # list<struct<role, content>>
    assert load_sft(tmp_path / "chat.parquet") == [SFTExample([chat[0]], "yo")]

    cmp = pa.table({"prompt": ["p"], "responses": [["a", "b", "c"]], "ranking": [[1, 2, 0]]})
    pq.write_table(cmp, tmp_path / "cmp.parquet")
    assert load_comparisons(tmp_path / "cmp.parquet") == [Comparison("p", ["a", "b", "c"], [1, 2, 0])]

    pq.write_table(pa.table({"prompt": ["p"], "chosen": ["a"], "rejected": ["b"]}), tmp_path / "pair.parquet")
    assert load_comparisons(tmp_path / "pair.parquet") == [Comparison("p", ["a", "b"], [0, 1])]

    pq.write_table(pa.table({"text": ["t0", "t1"]}), tmp_path / "pre.parquet")
    assert load_texts(tmp_path / "pre.parquet") == ["t0", "t1"]
    pq.write_table(pa.table({"prompt": ["q"]}), tmp_path / "rl.parquet")
    assert load_prompts(tmp_path / "rl.parquet") == ["q"]


def test_parquet_errors_name_the_column(tmp_path):
    pq.write_table(pa.table({"prompt": ["p"], "text": ["t"]}), tmp_path / "a.parquet")
    with pytest.raises(DataError) as e:
        load_sft(tmp_path / "a.parquet")
    assert str(e.value).startswith(f"{tmp_path / 'a.parquet'}: missing column 'response' (columns: prompt, text;")

    pq.write_table(pa.table({"prompt": ["p", "q"], "response": [1, 2]}), tmp_path / "b.parquet")
    with pytest.raises(DataError) as e:
        load_sft(tmp_path / "b.parquet")
    assert str(e.value) == f"{tmp_path / 'b.parquet'}: row 0 (0-based), column 'response': expected a string, got int"

    pq.write_table(pa.table({"prompt": ["p", "q"], "response": ["r", None]}), tmp_path / "c.parquet")
    with pytest.raises(DataError) as e:
        load_sft(tmp_path / "c.parquet")
    assert str(e.value) == f"{tmp_path / 'c.parquet'}: row 1 (0-based), column 'response': is null"

    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "d.parquet")
    with pytest.raises(DataError, match="d.parquet: no records"):
        load_texts(tmp_path / "d.parquet")


@pytest.mark.parametrize("loader, line, message", [
    ("load_prompts", '{"prompt": "   "}', "field 'prompt': empty prompt"),
    ("load_sft", '{"prompt": "", "response": "ok"}', "field 'prompt': empty prompt"),
    ("load_sft", '{"prompt": "sort 2 1.", "response": " "}', "field 'response': empty response"),
    ("load_comparisons", '{"prompt": "", "chosen": "a", "rejected": "b"}', "field 'prompt': empty prompt"),
])
def test_empty_prompts_and_demonstrations_are_refused_naming_the_line(loader, line, message, tmp_path):
    import rlhf_dist.data as data

    path = tmp_path / "d.jsonl"
    good = {"load_prompts": '{"prompt": "a"}', "load_sft": '{"prompt": "a", "response": "b"}',
            "load_comparisons": '{"prompt": "a", "chosen": "b", "rejected": "c"}'}[loader]
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(data.DataError) as e:
        getattr(data, loader)(path)
    assert str(e.value) == f"{path}:2: {message}"
