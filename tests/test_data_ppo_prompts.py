"""PPO's prompt and ptx files (rlhf_dist/data/ppo_data.py) in the layouts and schemas users bring:
JSONL, Parquet, hub-style Parquet shard folders and `datasets` save_to_disk / DatasetDict folders
(`FOLDER#SPLIT`), string and message-list prompts, `columns.*` mapping; each read through
`load_ppo_data` and compared with the prompts and token ids written out by hand."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf_dist.config import derive
from rlhf_dist.config.data_columns import DataColumnsConfig
from rlhf_dist.config.ppo import PPOConfig
from rlhf_dist.data import DataError, tokenize_texts
from rlhf_dist.data.ppo_data import load_ppo_data
from rlhf_dist.models import load_tokenizer
from tests.test_data_hf_schemas import assistant, save_to_disk, user, write_jsonl


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    assert not tok.chat_template  # prompts are joined as plain text (rlhf_dist/data/encode.py)
    return tok


def ppo_cfg(tmp_path, prompts_file, eval_prompts_file="", eval_prompts=0, columns=None, **kw) -> PPOConfig:
    """A PPOConfig reading these files; `columns` and `kw` ({"ppo": {...}} included) as the command's keys."""
    cfg = PPOConfig(out=str(tmp_path / "run"), prompts_file=str(prompts_file), eval_prompts_file=str(eval_prompts_file),
                    eval_prompts=eval_prompts, max_prompt_len=64, columns=DataColumnsConfig(**(columns or {})))
    return derive(cfg, **kw)


def plain_ids(tok, texts):
    """What a tokenizer without a chat template is given: the prompt text and the separator."""
    return [list(ids) for ids in tok([t + "\n" for t in texts])["input_ids"]]


def test_prompt_string_jsonl_and_mapped_parquet(tmp_path, tok):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "sort 3 1 2.", "id": 1}, {"prompt": "count the birds."}])
    d = load_ppo_data(ppo_cfg(tmp_path, path), tok)
    assert d.prompts == ["sort 3 1 2.", "count the birds."]
    assert d.prompt_ids == plain_ids(tok, d.prompts)

    pq.write_table(pa.table({"question": ["Q one?", "Q two?"], "prompt": ["not this", "nor this"]}),
                   tmp_path / "mine.parquet")
    d = load_ppo_data(ppo_cfg(tmp_path, tmp_path / "mine.parquet", columns={"prompt": "question"}), tok)
    assert d.prompts == ["Q one?", "Q two?"] and d.prompt_ids == plain_ids(tok, ["Q one?", "Q two?"])


def test_trl_conversational_prompts_in_a_hub_shard_folder_with_splits(tmp_path, tok):
    """TRL prompt-only conversational {prompt: [messages]}, hub layout data/SPLIT-0000i-of-0000n.parquet:
    the folder reads the train split (shards in order), FOLDER#test the held-out prompts."""
    folder = tmp_path / "hub"
    (folder / "data").mkdir(parents=True)

    def table(*prompts):
        return pa.table({"prompt": list(prompts)})

    pq.write_table(table([user("Hi"), assistant("Hello!"), user("Name a color.")]),
                   folder / "data" / "train-00001-of-00002.parquet")
    pq.write_table(table([user("What is 2+2?")]), folder / "data" / "train-00000-of-00002.parquet")
    pq.write_table(table([user("Held out?")]), folder / "data" / "test-00000-of-00001.parquet")
    d = load_ppo_data(ppo_cfg(tmp_path, folder, f"{folder}#test", eval_prompts=5), tok)
    assert d.prompts == [[user("What is 2+2?")], [user("Hi"), assistant("Hello!"), user("Name a color.")]]
    assert d.prompt_ids == plain_ids(tok, ["What is 2+2?", "Hi\nHello!\nName a color."])
    assert d.eval_prompts == [[user("Held out?")]] and d.eval_prompt_ids == plain_ids(tok, ["Held out?"])


def test_mapped_messages_in_a_dataset_dict_through_a_chat_template(tmp_path, tiny_model_dir):
    """A DatasetDict (save_to_disk) whose `conversation` column holds the prompts as messages
    (columns.messages=conversation); a tokenizer with a chat template renders them with it."""
    dd = tmp_path / "dd"
    save_to_disk(dd / "train", pa.table({"conversation": [[user("Q1"), assistant("A1"), user("Q2")], [user("Q3")]]}))
    save_to_disk(dd / "test", pa.table({"conversation": [[user("Q4")]]}))
    (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    chat = load_tokenizer(tiny_model_dir)
    chat.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}<assistant>{% endif %}")
    cfg = ppo_cfg(tmp_path, dd, f"{dd}#test", eval_prompts=5, columns={"messages": "conversation"})
    d = load_ppo_data(cfg, chat)
    assert d.prompts == [[user("Q1"), assistant("A1"), user("Q2")], [user("Q3")]]
    rendered = ["<user>Q1\n<assistant>A1\n<user>Q2\n<assistant>", "<user>Q3\n<assistant>"]
    assert d.prompt_ids == [list(ids) for ids in chat(rendered, add_special_tokens=False)["input_ids"]]
    assert d.eval_prompt_ids == [list(chat("<user>Q4\n<assistant>", add_special_tokens=False)["input_ids"])]


def test_ptx_texts_from_dataset_folders_with_columns_text(tmp_path, tok):
    """ptx_file: a save_to_disk folder and a Parquet shard folder, comma-separated, their `body`
    column read as the pretraining text (columns.text=body); the prompt mapping is not applied."""
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"question": "Q?"}])
    save_to_disk(tmp_path / "corpus_a", pa.table({"body": ["the cat sat.", "a dog ran."]}))
    (tmp_path / "corpus_b").mkdir()
    pq.write_table(pa.table({"body": ["birds fly."], "url": ["x"]}), tmp_path / "corpus_b" / "part-0.parquet")
    cfg = ppo_cfg(tmp_path, prompts, ptx_file=f"{tmp_path / 'corpus_a'},{tmp_path / 'corpus_b'}",
                  columns={"prompt": "question", "text": "body"}, ppo={"ptx_coef": 1.0, "ptx_max_len": 64})
    d = load_ppo_data(cfg, tok)
    assert d.prompts == ["Q?"]
    assert d.ptx == tokenize_texts(["the cat sat.", "a dog ran.", "birds fly."], tok, 64)[0]


def test_a_bad_prompt_column_is_one_line_naming_the_columns(tmp_path, tok):
    path = tmp_path / "mine.parquet"
    pq.write_table(pa.table({"instruction": ["Do x."], "id": [1]}), path)
    with pytest.raises(DataError) as e:
        load_ppo_data(ppo_cfg(tmp_path, path, columns={"prompt": "question"}), tok)
    assert str(e.value) == f"{path}: columns.prompt=question: no column 'question' (columns: instruction, id)"
    with pytest.raises(DataError) as e:
        load_ppo_data(ppo_cfg(tmp_path, path), tok)
    assert str(e.value) == (f"{path}: missing column 'prompt' (columns: instruction, id; accepted schemas: prompt "
                            "{prompt}; messages {messages}; columns.* maps other names)")
    good = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "P"}])
    with pytest.raises(DataError, match=r"held\.jsonl: columns.prompt=instruction: no column 'instruction' \(columns: prompt\)$"):
        load_ppo_data(ppo_cfg(tmp_path, path, write_jsonl(tmp_path / "held.jsonl", [{"prompt": "P"}]), eval_prompts=1,
                              columns={"prompt": "instruction"}), tok)
    with pytest.raises(FileNotFoundError, match=r"no_such#test: no held-out prompts"):
        load_ppo_data(ppo_cfg(tmp_path, good, tmp_path / "no_such#test", eval_prompts=1), tok)
    with pytest.raises(FileNotFoundError, match=r"^no held-out prompts: give eval_prompts_file=FILE"):
        load_ppo_data(ppo_cfg(tmp_path, good, eval_prompts=1), tok)


def test_ppo_refuses_column_keys_it_does_not_read(tmp_path, capsys):
    """columns.response/chosen/rejected would map nothing in a PPO run: refused at the command line, exit 2."""
    from rlhf_dist.cli import main

    code = main(["ppo", "--out", str(tmp_path / "run"), "columns.prompt=question", "columns.chosen=good"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "columns.chosen: ppo reads prompts (columns.prompt, columns.messages) and ptx texts (columns.text)" in err
    assert not (tmp_path / "run").exists()


def test_eval_reads_prompts_and_texts_from_dataset_folders(tmp_path, tiny_model_dir):
    """`rlhf-dist eval` reads its held-out files with the same readers: a save_to_disk folder's split
    and a Parquet shard folder."""
    from rlhf_dist.config.evaluation import EvalConfig
    from rlhf_dist.evaluation.evaluate import resolve_inputs

    dd = tmp_path / "dd"
    save_to_disk(dd / "test", pa.table({"prompt": ["Q one?", "Q two?"]}))
    (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["test"]}))
    (tmp_path / "texts").mkdir()
    pq.write_table(pa.table({"text": ["the cat sat."]}), tmp_path / "texts" / "part-0.parquet")
    cfg = EvalConfig(out=str(tmp_path / "eval"), models={"sft": str(tiny_model_dir)}, prompts_file=f"{dd}#test",
                     pretrain_file=str(tmp_path / "texts"))
    inputs = resolve_inputs(cfg)
    assert inputs.prompts == ["Q one?", "Q two?"]
    assert inputs.prompt_ids == plain_ids(load_tokenizer(tiny_model_dir), ["Q one?", "Q two?"])
    assert inputs.pretrain_seqs == tokenize_texts(["the cat sat."], load_tokenizer(tiny_model_dir), cfg.pretrain_max_len)[0]
