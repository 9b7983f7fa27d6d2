"""Run folders and checkpoints (rlhf_dist/runtime.py): refusal, overwrite, atomic checkpoints,
the newest complete one found, and logs cut back to a checkpoint's step."""

from __future__ import annotations

import json

import pytest

from rlhf_dist.runtime import RunFolderError, RunLog, latest_checkpoint, new_checkpoint, prepare_run_folder

ARTIFACTS = ("config.yaml", "metrics.jsonl", "tb")


def test_an_empty_or_missing_folder_is_a_new_run(tmp_path):
    assert prepare_run_folder(tmp_path / "new", "never", False, ARTIFACTS) is False
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("x")
    assert prepare_run_folder(tmp_path / "notes", "never", False, ARTIFACTS) is False


def test_a_run_is_refused_resumed_or_overwritten(tmp_path):
    (tmp_path / "config.yaml").write_text("a: 1")
    (tmp_path / "tb").mkdir()
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(RunFolderError) as e:
        prepare_run_folder(tmp_path, "never", False, ARTIFACTS)
    assert str(e.value) == (f"out={tmp_path} already holds a run (config.yaml): give resume=auto to continue it "
                            "or overwrite=true to start over")
    assert (tmp_path / "config.yaml").exists()
    assert prepare_run_folder(tmp_path, "auto", False, ARTIFACTS) is True
    assert prepare_run_folder(tmp_path, "never", True, ARTIFACTS) is False
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "tb").exists()
    assert (tmp_path / "mine.txt").read_text() == "keep"


def test_an_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunFolderError, match="is a file, not a folder"):
        prepare_run_folder(tmp_path / "f", "auto", False, ARTIFACTS)


def test_checkpoints_are_atomic_kept_and_the_newest_complete_one_found(tmp_path, capsys):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        with new_checkpoint(root, f"iter_{step:06d}", {"iteration": step}, keep=2) as folder:
            (folder / "weights.bin").write_bytes(b"w" * step)
    assert sorted(p.name for p in root.iterdir()) == ["iter_000004", "iter_000006"]
    folder, state = latest_checkpoint(root)
    assert folder.name == "iter_000006" and state == {"iteration": 6} and (folder / "weights.bin").read_bytes() == b"w" * 6
    (folder / "state.json").write_text("{cut")  # corrupt: skipped with a line
    folder, state = latest_checkpoint(root)
    assert folder.name == "iter_000004" and state["iteration"] == 4
    assert "skipping checkpoint" in capsys.readouterr().out
    with pytest.raises(RuntimeError):  # a checkpoint whose writer fails never becomes complete
        with new_checkpoint(root, "iter_000008", {"iteration": 8}, keep=2):
            raise RuntimeError("writer died")
    assert latest_checkpoint(root)[0].name == "iter_000004"
    assert latest_checkpoint(tmp_path / "none") is None


def test_runlog_resumed_drops_the_records_after_the_checkpoint(tmp_path):
    log = RunLog(tmp_path)
    for step in range(5):
        log.write(step, {"loss": float(step)})
    log.close()
    log = RunLog(tmp_path, resume_step=2)
    log.write(3, {"loss": 30.0})
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 0, "loss": 0.0}, {"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": 30.0}]
