"""Model folders are checked before anything loads (rlhf_dist/models/loading.py: check_model_dir):
one line naming the key, the folder and what is missing or broken."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_dist.models import check_model_dir

EXE = Path(sys.executable).with_name("rlhf-dist")


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst)
    return dst


def test_a_complete_folder_passes(model_copy):
    check_model_dir(model_copy, "sft")


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^sft=.*nope: no such model folder"):
        check_model_dir(tmp_path / "nope", "sft")


@pytest.mark.parametrize("remove, what", [("tokenizer.json", "a tokenizer"), ("config.json", "config.json"),
                                          ("model.safetensors", "weights")])
def test_a_missing_part_is_named(model_copy, remove, what):
    (model_copy / remove).unlink()
    with pytest.raises(FileNotFoundError) as e:
        check_model_dir(model_copy, "reward_model")
    assert str(e.value).startswith(f"reward_model={model_copy}: not a complete model folder, missing ") and what in str(e.value)


def test_truncated_weights_are_refused(model_copy):
    weights = model_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"model.safetensors is truncated \({len(data) // 2} bytes, its tensors need {len(data)}\)"):
        check_model_dir(model_copy, "init")
    weights.write_bytes(data[:4])
    with pytest.raises(ValueError, match=r"model.safetensors is truncated \(4 bytes\)"):
        check_model_dir(model_copy, "init")


def test_corrupt_config_is_refused(model_copy):
    (model_copy / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        check_model_dir(model_copy, "init")


def test_eval_names_the_broken_model_in_one_line(model_copy, tmp_path):
    (model_copy / "tokenizer.json").unlink()
    res = subprocess.run([str(EXE), "eval", "--out", str(tmp_path / "ev"), f"models.sft={model_copy}", "prompts=2"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"models.sft={model_copy}: not a complete model folder, missing a tokenizer" in lines[0], res.stderr
    assert not (tmp_path / "ev").exists()


def test_config_json_round_trip_is_untouched(model_copy):
    before = json.loads((model_copy / "config.json").read_text())
    check_model_dir(model_copy, "sft")
    assert json.loads((model_copy / "config.json").read_text()) == before
