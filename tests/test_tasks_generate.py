"""The data command: determinism, disjoint splits, schemas, headroom, atomic writes, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_dist.tasks import generate
from rlhf_dist.recipes.task_data import main

REPO = Path(__file__).resolve().parents[1]
SMALL = ["n_pretrain=300", "n_pretrain_heldout=50", "n_sft=300", "n_rl_prompts=200", "n_eval_prompts=100",
         "n_comparisons=200", "n_comparisons_heldout=50", "n_agreement_pairs=300"]
JSONL = ["pretrain.jsonl", "pretrain_heldout.jsonl", "sft.jsonl", "rl_prompts.jsonl", "eval_prompts.jsonl",
         "comparisons.jsonl", "comparisons_heldout.jsonl"]


def run(out, *args):
    return main(["--out", str(out), *SMALL, *args])


def read_bytes(d):
    return {name: (d / name).read_bytes() for name in JSONL + ["manifest.json"]}


def rows(d, name):
    return [json.loads(line) for line in (d / name).read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "seed0"
    assert run(out) == 0
    return out


def test_same_seed_same_bytes_different_seed_different_data(data, tmp_path):
    assert run(tmp_path / "again") == 0
    assert read_bytes(tmp_path / "again") == read_bytes(data)
    assert run(tmp_path / "other", "seed=1") == 0
    other = read_bytes(tmp_path / "other")
    for name in JSONL:
        assert other[name] != read_bytes(data)[name], name


def test_bytes_do_not_depend_on_the_hash_seed(data, tmp_path):
    """Python salts str hashes per process: a set iterated anywhere would show up here."""
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
        subprocess.run([sys.executable, "-m", "rlhf_dist.recipes.task_data", "--out", str(tmp_path / hash_seed), *SMALL],
                       check=True, env=env, cwd=REPO, capture_output=True)
        assert read_bytes(tmp_path / hash_seed) == read_bytes(data)


def test_one_count_changes_only_its_own_file(data, tmp_path):
    assert run(tmp_path / "more_sft", "n_sft=301") == 0
    changed = {name for name in JSONL if (tmp_path / "more_sft" / name).read_bytes() != (data / name).read_bytes()}
    assert changed == {"sft.jsonl"}


def test_schemas(data):
    for name in ("pretrain.jsonl", "pretrain_heldout.jsonl"):
        assert all(set(r) == {"text"} and isinstance(r["text"], str) and r["text"] for r in rows(data, name))
    for r in rows(data, "sft.jsonl"):
        assert set(r) == {"prompt", "response"} and isinstance(r["response"], str)
    for name in ("rl_prompts.jsonl", "eval_prompts.jsonl"):
        assert all(set(r) == {"prompt"} for r in rows(data, name))
    for name in ("comparisons.jsonl", "comparisons_heldout.jsonl"):
        for r in rows(data, name):
            assert set(r) == {"prompt", "responses", "ranking"}
            assert len(r["responses"]) == 4 and all(isinstance(y, str) for y in r["responses"])
            assert sorted(r["ranking"]) == [0, 1, 2, 3]
    counts = {name: len(rows(data, name)) for name in JSONL}
    assert counts == {"pretrain.jsonl": 300, "pretrain_heldout.jsonl": 50, "sft.jsonl": 300, "rl_prompts.jsonl": 200,
                      "eval_prompts.jsonl": 100, "comparisons.jsonl": 200, "comparisons_heldout.jsonl": 50}
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["task_name"] == "instruct"
    assert manifest["counts"] == counts
    assert manifest["demonstrator_mean_gold"] == manifest["stats"]["demonstrator_mean_gold"]
    assert set(manifest["sha256"]) == set(JSONL)


def test_eval_prompts_are_held_out_of_everything_trained_on(data):
    eval_prompts = {r["prompt"] for r in rows(data, "eval_prompts.jsonl")}
    assert len(eval_prompts) == 100  # distinct
    trained = {r["prompt"] for name in ("rl_prompts.jsonl", "sft.jsonl", "comparisons.jsonl")
               for r in rows(data, name)}
    trained |= {r["text"].split("\n")[0] for r in rows(data, "pretrain.jsonl")}
    assert not eval_prompts & trained
    heldout = {r["prompt"] for r in rows(data, "comparisons_heldout.jsonl")}
    assert not heldout & {r["prompt"] for r in rows(data, "comparisons.jsonl")}


def test_rankings_follow_gold_more_often_than_not(data):
    from rlhf_dist.tasks.instruct import task
    agree = total = 0
    for r in rows(data, "comparisons.jsonl"):
        best, worst = r["responses"][r["ranking"][0]], r["responses"][r["ranking"][-1]]
        gb, gw = task.gold_score(r["prompt"], best), task.gold_score(r["prompt"], worst)
        if gb != gw:
            agree += gb > gw
            total += 1
    assert agree / total > 0.8


def test_headroom(data):
    stats = json.loads((data / "manifest.json").read_text())["stats"]
    assert stats["optimal_mean_gold"] == 1.0
    assert stats["demonstrator_mean_gold"] < stats["optimal_mean_gold"] - 0.2
    assert stats["exploit_mean_gold"] < stats["demonstrator_mean_gold"]
    assert 0.6 < stats["labeler"]["sampled"] < 0.99


@pytest.mark.parametrize("args, message", [
    (["bogus=1"], "unknown key 'bogus'"),
    (["n_sft=many"], "n_sft"),
    (["k=1"], "k"),
    (["task=no_such_module:task"], "no_such_module"),
    (["task=rlhf_dist.tasks.instruct:nothing"], "nothing"),
    (["seed"], "seed"),
])
def test_bad_arguments_exit_nonzero_and_leave_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["--out", str(out), *args]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_missing_out_is_an_error(capsys):
    assert main(["seed=1"]) != 0
    assert "--out" in capsys.readouterr().err


def test_a_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    real = generate.write_jsonl

    def failing(path, rows):
        if path.name == "sft.jsonl":
            raise OSError("disk full")
        real(path, rows)

    monkeypatch.setattr(generate, "write_jsonl", failing)
    with pytest.raises(OSError):
        run(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_rerun_replaces_a_generated_dir_but_not_a_foreign_one(tmp_path):
    out = tmp_path / "out"
    assert run(out) == 0
    assert run(out, "seed=3") == 0
    assert json.loads((out / "manifest.json").read_text())["seed"] == 3
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert run(foreign) != 0
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "out"]


def test_example_task_by_file_path(tmp_path):
    assert run(tmp_path / "echo", f"task={REPO / 'examples' / 'echo_task.py'}:task") == 0
    manifest = json.loads((tmp_path / "echo" / "manifest.json").read_text())
    assert manifest["task_name"] == "echo"
    assert manifest["stats"]["demonstrator_mean_gold"] < manifest["stats"]["optimal_mean_gold"]
    assert rows(tmp_path / "echo", "sft.jsonl")[0]["prompt"].split()[0] in ("echo", "reverse")


def test_example_task_by_module_name(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    assert run(tmp_path / "echo", "task=examples.echo_task:task") == 0
    assert json.loads((tmp_path / "echo" / "manifest.json").read_text())["task_name"] == "echo"
