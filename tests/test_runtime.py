"""rlhf_dist.runtime: atomic writes, the phase timer, the vLLM CPU environment defaults, RunLog
(metrics.jsonl + TensorBoard events, read back with TensorBoard's own reader), stage() and
print_table. No Ray (ensure_ray is exercised by the Ray tests)."""

from __future__ import annotations

import json
import os
import time

import pytest

from rlhf_dist import runtime
from rlhf_dist.runtime import RunLog, Timer, apply_vllm_cpu_env, print_table, stage, vllm_cpu_env, write_json, write_text_atomic

SLEEP = 0.05  # seconds; bounds below are loose (>= 0.8 x sleep, < 2 s) but still fail if nothing is timed


def test_write_text_atomic(tmp_path):
    path = tmp_path / "summary.txt"
    write_text_atomic(path, "a long first version\nwith two lines\n")
    assert path.read_text() == "a long first version\nwith two lines\n"
    write_text_atomic(str(path), "short")  # str paths too; the old file is replaced whole, no tail left
    assert path.read_text() == "short"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.txt"]  # no temporary file left behind


def test_write_json(tmp_path):
    obj = {"gold": 0.5, "models": ["sft", "ppo"], "nested": {"n": 3, "ok": True, "none": None}}
    write_json(tmp_path / "s.json", {"old": "content that is longer than the new one" * 10})
    write_json(tmp_path / "s.json", obj)
    text = (tmp_path / "s.json").read_text()
    assert json.loads(text) == obj
    assert '\n  "gold": 0.5' in text  # indented
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]


def test_timer_accumulates_in_first_use_order():
    timer = Timer()
    with timer("rollout"):
        time.sleep(SLEEP)
    with timer("train"):
        pass
    with timer("rollout"):
        time.sleep(SLEEP)
    with pytest.raises(RuntimeError), timer("sync"):
        time.sleep(SLEEP)
        raise RuntimeError("a failing phase is still timed")
    assert list(timer.seconds) == ["rollout", "train", "sync"]
    assert 2 * SLEEP * 0.8 <= timer.seconds["rollout"] < 2.0
    assert 0.0 <= timer.seconds["train"] < SLEEP * 0.8
    assert SLEEP * 0.8 <= timer.seconds["sync"] < 2.0
    m = timer.metrics()
    assert list(m) == ["time/rollout_s", "time/train_s", "time/sync_s"]
    assert m["time/rollout_s"] == timer.seconds["rollout"] and m["time/sync_s"] == timer.seconds["sync"]
    assert list(timer.metrics("t.")) == ["t.rollout_s", "t.train_s", "t.sync_s"]


KEYS = ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND")


def test_vllm_cpu_env_defaults_and_environment_wins(monkeypatch):
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)
    assert vllm_cpu_env() == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "8")
    assert vllm_cpu_env() == {"VLLM_CPU_KVCACHE_SPACE": "8", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-3")
    assert vllm_cpu_env() == {"VLLM_CPU_KVCACHE_SPACE": "8", "VLLM_CPU_OMP_THREADS_BIND": "0-3"}
    assert "VLLM_CPU_KVCACHE_SPACE" in os.environ  # reading it changes nothing


def test_apply_vllm_cpu_env_sets_only_what_is_unset(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-3")
    apply_vllm_cpu_env()
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "0-3"
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")
    apply_vllm_cpu_env()
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "4"


def test_shared_cores_get_passive_openmp_waiting_unless_the_environment_says_otherwise(monkeypatch):
    from rlhf_dist.runtime import shared_cores_env

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert shared_cores_env(True) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert shared_cores_env(False) == {}
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert shared_cores_env(True) == {"OMP_WAIT_POLICY": "ACTIVE"}


def read_tb_scalars(tb_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_runlog_writes_jsonl_and_tensorboard(tmp_path):
    log = RunLog(tmp_path)
    log.write(0, {"eval/gold": 0.25, "eval/prompts": 16, "note": "start", "done": False})
    log.write(3, {"train/loss": -1.5, "time/rollout_s": 2.0})
    log.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 0, "eval/gold": 0.25, "eval/prompts": 16, "note": "start", "done": False},
        {"step": 3, "train/loss": -1.5, "time/rollout_s": 2.0},
    ]
    assert list(json.loads(lines[0])) == ["step", "eval/gold", "eval/prompts", "note", "done"]  # step first
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    scalars = read_tb_scalars(tmp_path / "tb")
    # numbers only: no string, no bool
    assert set(scalars) == {"eval/gold", "eval/prompts", "train/loss", "time/rollout_s"}
    assert scalars["eval/gold"] == [(0, pytest.approx(0.25))]
    assert scalars["eval/prompts"] == [(0, pytest.approx(16.0))]
    assert scalars["train/loss"] == [(3, pytest.approx(-1.5))]
    assert scalars["time/rollout_s"] == [(3, pytest.approx(2.0))]


def test_runlog_in_the_same_folder_starts_afresh(tmp_path):
    first = RunLog(tmp_path)
    first.write(1, {"train/loss": 1.0})
    first.write(2, {"train/loss": 2.0})
    first.close()
    second = RunLog(tmp_path)
    second.write(1, {"train/kl": 0.5})
    second.close()
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
        {"step": 1, "train/kl": 0.5}]
    scalars = read_tb_scalars(tmp_path / "tb")
    assert set(scalars) == {"train/kl"}  # the first run's events are gone
    assert scalars["train/kl"] == [(1, pytest.approx(0.5))]


def test_stage_prints_and_records(capsys):
    timings = {"earlier": 1.0}
    with stage("Reward model", timings):
        time.sleep(SLEEP)
    out = capsys.readouterr().out
    assert out.startswith("\n== Reward model\n")
    assert list(timings) == ["earlier", "Reward model"] and timings["earlier"] == 1.0
    assert SLEEP * 0.8 <= timings["Reward model"] < 2.0
    assert out.endswith(f"   done in {timings['Reward model']:.1f} s\n")


def test_print_table(capsys):
    print_table([("gold", "0.50"), ("win rate", "0.81")], "Summary")
    lines = capsys.readouterr().out.split("\n")
    assert lines[1] == "Summary" and lines[2] == "-" * (8 + 30)
    assert lines[3] == "gold      0.50" and lines[4] == "win rate  0.81"


def test_runtime_imports_only_stdlib_at_module_level():
    # the module docstring promises stdlib-only imports at import time (every layer above config uses it)
    import ast
    import sys
    from pathlib import Path

    tree = ast.parse(Path(runtime.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in top if isinstance(n, ast.ImportFrom)}
    assert names and names <= set(sys.stdlib_module_names) | {"__future__"}, names
