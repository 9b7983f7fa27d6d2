"""Hugging Face and TRL dataset schemas and layouts, each written here exactly as published and
read back against hand-written prompts and responses; column mapping; one-line schema errors."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf_dist.config.data_columns import DataColumnsConfig
from rlhf_dist.data import Comparison, DataError, SFTExample, load_comparisons, load_lm_data, load_prompts, load_sft


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# --- HH-RLHF (Anthropic/hh-rlhf: chosen/rejected transcripts) ------------------------------------

HH_ROWS = [
    {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.",
     "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5, probably."},
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a color.\n\nAssistant: Blue.",
     "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a color.\n\nAssistant: I won't."},
]


def test_hh_rlhf_transcripts(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", HH_ROWS)
    assert load_comparisons(path) == [
        Comparison([user("What is 2+2?")], ["4.", "5, probably."], [0, 1]),
        Comparison([user("Hi"), assistant("Hello!"), user("Name a color.")], ["Blue.", "I won't."], [0, 1]),
    ]


def test_hh_rlhf_prefixes_that_differ_name_the_row(tmp_path):
    bad = {"chosen": "\n\nHuman: A?\n\nAssistant: yes", "rejected": "\n\nHuman: B?\n\nAssistant: no"}
    path = write_jsonl(tmp_path / "hh.jsonl", [HH_ROWS[0], bad])
    with pytest.raises(DataError) as e:
        load_comparisons(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:2: HH-RLHF 'chosen' and 'rejected' differ before their last") and "\n" not in msg


# --- UltraFeedback binarized: Parquet shards in a folder ------------------------------------------


def ultrafeedback_table(prompts):
    return pa.table({
        "prompt": prompts,
        "prompt_id": [f"id{i}" for i in range(len(prompts))],
        "chosen": [[user(p), assistant(f"good {p}")] for p in prompts],
        "rejected": [[user(p), assistant(f"bad {p}")] for p in prompts],
        "messages": [[user(p), assistant(f"good {p}")] for p in prompts],
        "score_chosen": [8.0] * len(prompts),
        "score_rejected": [3.0] * len(prompts),
    })


def test_ultrafeedback_parquet_shards_folder_reads_train_in_order(tmp_path):
    folder = tmp_path / "ultrafeedback"
    (folder / "data").mkdir(parents=True)
    # the hub layout: data/SPLIT-0000i-of-0000n.parquet, several splits side by side
    pq.write_table(ultrafeedback_table(["b"]), folder / "data" / "train_prefs-00001-of-00002.parquet")
    pq.write_table(ultrafeedback_table(["a"]), folder / "data" / "train_prefs-00000-of-00002.parquet")
    pq.write_table(ultrafeedback_table(["t"]), folder / "data" / "test_prefs-00000-of-00001.parquet")
    expected = [Comparison([user(p)], [f"good {p}", f"bad {p}"], [0, 1]) for p in ("a", "b")]
    assert load_comparisons(f"{folder}#train_prefs") == expected
    assert load_comparisons(f"{folder / 'data'}#test_prefs") == [Comparison([user("t")], ["good t", "bad t"], [0, 1])]
    with pytest.raises(DataError, match=r"no shards of split 'train' \(splits: test_prefs, train_prefs; pick one"):
        load_comparisons(folder)  # no `train` split: the choice is the user's

    plain = tmp_path / "plain"
    plain.mkdir()
    pq.write_table(ultrafeedback_table(["b"]), plain / "part-1.parquet")
    pq.write_table(ultrafeedback_table(["a"]), plain / "part-0.parquet")
    assert load_comparisons(plain) == expected


def test_shard_errors_name_the_shard_and_row(tmp_path):
    pq.write_table(pa.table({"prompt": ["p"], "response": ["r"]}), tmp_path / "train-00000-of-00002.parquet")
    pq.write_table(pa.table({"prompt": ["p", "q"], "response": ["r", None]}), tmp_path / "train-00001-of-00002.parquet")
    with pytest.raises(DataError) as e:
        load_sft(tmp_path)
    assert str(e.value) == f"{tmp_path / 'train-00001-of-00002.parquet'}: row 1 (0-based), column 'response': is null"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no data in this folder"):
        load_sft(empty)


# --- datasets' save_to_disk layout, written with pyarrow --------------------------------------------


def save_to_disk(folder, table):
    """What `datasets.Dataset.save_to_disk` writes: an Arrow IPC stream shard, dataset_info.json, state.json."""
    folder.mkdir(parents=True)
    with pa.ipc.new_stream(folder / "data-00000-of-00001.arrow", table.schema) as writer:
        writer.write_table(table)
    features = {name: {"dtype": "string", "_type": "Value"} for name in table.column_names}
    (folder / "dataset_info.json").write_text(json.dumps(
        {"citation": "", "description": "", "features": features, "homepage": "", "license": ""}))
    (folder / "state.json").write_text(json.dumps({
        "_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_fingerprint": "0123456789abcdef",
        "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
        "_split": None}))


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    table = pa.table({"prompt": ["Say hi.", "Count to 2."], "completion": ["hi", "1 2"]})
    save_to_disk(tmp_path / "ds", table)
    expected = [SFTExample("Say hi.", "hi"), SFTExample("Count to 2.", "1 2")]
    assert load_sft(tmp_path / "ds") == expected

    dd = tmp_path / "dd"
    save_to_disk(dd / "train", table)
    save_to_disk(dd / "test", pa.table({"prompt": ["Q?"], "completion": ["A."]}))
    (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    assert load_sft(dd) == expected
    assert load_sft(f"{dd}#test") == [SFTExample("Q?", "A.")]
    with pytest.raises(DataError, match=r"no split 'valid' in this DatasetDict \(splits: train, test"):
        load_sft(f"{dd}#valid")

    save_to_disk(tmp_path / "bad", pa.table({"prompt": ["Q?"], "completion": [None]}, ))
    with pytest.raises(DataError) as e:
        load_sft(tmp_path / "bad")
    assert str(e.value).startswith(f"{tmp_path / 'bad' / 'data-00000-of-00001.arrow'}: row 0 (0-based)")


# --- TRL formats -----------------------------------------------------------------------------------


def test_trl_preference_formats(tmp_path):
    rows = [
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},  # standard
        {"prompt": [user("What color is the sky?")], "chosen": [assistant("Blue.")],  # conversational
         "rejected": [assistant("Green.")]},
        {"chosen": [user("Hi?"), assistant("Hello.")], "rejected": [user("Hi?"), assistant("Go away.")]},  # implicit
    ]
    assert load_comparisons(write_jsonl(tmp_path / "trl.jsonl", rows)) == [
        Comparison("The sky is", [" blue.", " green."], [0, 1]),
        Comparison([user("What color is the sky?")], ["Blue.", "Green."], [0, 1]),
        Comparison([user("Hi?")], ["Hello.", "Go away."], [0, 1]),
    ]
    differ = {"chosen": [user("A?"), assistant("x")], "rejected": [user("B?"), assistant("y")]}
    with pytest.raises(DataError, match=r"trl2.jsonl:1: 'chosen' and 'rejected' differ before their last"):
        load_comparisons(write_jsonl(tmp_path / "trl2.jsonl", [differ]))


def test_trl_sft_formats(tmp_path):
    rows = [
        {"prompt": "The sky is", "completion": " blue."},
        {"prompt": [user("Color of the sky?")], "completion": [assistant("Blue.")]},
        {"messages": [user("Hi"), assistant("Hello")]},
    ]
    expected = [SFTExample("The sky is", " blue."), SFTExample([user("Color of the sky?")], "Blue."),
                SFTExample([user("Hi")], "Hello")]
    path = write_jsonl(tmp_path / "sft.jsonl", rows)
    assert load_sft(path) == expected
    assert load_lm_data(path) == expected
    assert load_lm_data(write_jsonl(tmp_path / "t.jsonl", [{"text": "one"}])) == ["one"]
    assert load_prompts(write_jsonl(tmp_path / "p.jsonl", [{"prompt": [user("Q")]}, {"prompt": "R"}])) == [[user("Q")], "R"]


# --- column mapping --------------------------------------------------------------------------------


def test_column_mapping(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [{"question": "Q1", "good": "A", "bad": "B", "prompt": "ignored"}])
    columns = DataColumnsConfig(prompt="question", chosen="good", rejected="bad")
    assert load_comparisons(path, columns) == [Comparison("Q1", ["A", "B"], [0, 1])]
    pq.write_table(pa.table({"instruction": ["Do x."], "output": ["Done."]}), tmp_path / "mine.parquet")
    assert load_sft(tmp_path / "mine.parquet", {"prompt": "instruction", "response": "output"}) == [
        SFTExample("Do x.", "Done.")]
    with pytest.raises(DataError, match=r"columns.response=answer: no column 'answer' \(columns: instruction, output\)"):
        load_sft(tmp_path / "mine.parquet", DataColumnsConfig(prompt="instruction", response="answer"))


# --- unknown schema --------------------------------------------------------------------------------


def test_unknown_schema_is_one_line_naming_columns_and_schemas(tmp_path):
    pq.write_table(pa.table({"question": ["q"], "answer_a": ["a"]}), tmp_path / "odd.parquet")
    with pytest.raises(DataError) as e:
        load_comparisons(tmp_path / "odd.parquet")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path / 'odd.parquet'}: missing column")
    assert "columns: question, answer_a;" in msg
    for schema in ("ranked {prompt, responses, ranking}", "{prompt, chosen, rejected}", "HH-RLHF", "UltraFeedback",
                   "TRL", "{chosen, rejected}", "columns.*"):
        assert schema in msg

    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError) as e:
        load_sft(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:1: missing field 'prompt' (fields: question, answer;")
    assert "{prompt, completion}" in msg and "{messages}" in msg


def test_cli_unknown_schema_exits_2_with_one_line(tmp_path, tiny_model_dir, capsys):
    from rlhf_dist.cli import main

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "a"}])
    code = main(["rm", "--out", str(tmp_path / "run"), f"init={tiny_model_dir}", f"train_file={bad}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{bad}:1: missing field" in err and "HH-RLHF" in err
