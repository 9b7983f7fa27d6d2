"""Lost actors on real Ray, vLLM and DeepSpeed: `kill -9` of a rollout worker (one of two) or of the
reward actor in the middle of a PPO run. The run replaces the actor (a rollout worker gets the
current weights, version-checked), samples or scores the unfinished rows again, logs faults/*,
and finishes; its trajectory files hold every prompt's samples exactly once per iteration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray")
pytest.importorskip("vllm")

REPO = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).with_name("rlhf-dist")
ITERATIONS, PROMPTS = 6, 16
pytestmark = pytest.mark.slow  # end-to-end PPO runs with an actor killed: skipped by `make test-fast`


def _wait_for_first_iteration(proc, out: Path) -> None:
    """Until the run in `out` has logged its first iteration (the actors are all up); the run must not end first."""
    deadline = time.time() + 300
    while time.time() < deadline and not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text()):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.05)


def _actor_pids(sid: int, name: str) -> list[int]:
    """PIDs of this run's Ray actor processes whose title starts with ray::<name> (the run's process session id `sid`)."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines() if len(line.split(None, 2)) == 3]
    return [int(pid) for pid, row_sid, args in rows if int(row_sid) == sid and args.startswith(f"ray::{name}")]


@pytest.mark.parametrize("victim, fault_key", [("RolloutWorker", "faults/rollout_restarts"),
                                               ("RewardActor", "faults/reward_restarts")])
def test_a_killed_actor_is_replaced_and_the_run_completes(victim, fault_key, ppo_models, tmp_path):
    sft, rm, data = ppo_models
    out = tmp_path / "run"
    cmd = [str(EXE), "ppo", "--config", "configs/tiny.yaml", "--out", str(out), f"sft={sft}", f"reward_model={rm}",
           f"data={data}", f"iterations={ITERATIONS}", f"prompts_per_iteration={PROMPTS}", "ppo.minibatch_size=8",
           "learner.micro_batch_size=4", "eval_prompts=0", "rollout.max_new_tokens=12", "rollout.num_workers=2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True)
    try:
        _wait_for_first_iteration(proc, out)
        pids = _actor_pids(proc.pid, victim)
        assert pids, f"no ray::{victim} process under the run"
        os.kill(pids[0], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    assert "replaced" in stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, ITERATIONS + 1))
    assert rows[-1][fault_key] == 1 and rows[-1][fault_key.replace("restarts", "restart_s")] > 0
    files = sorted((out / "trajectories").glob("iter_*.parquet"))
    assert len(files) == ITERATIONS
    for f in files:
        t = pq.read_table(f)
        keys = list(zip(t.column("prompt_id").to_pylist(), t.column("sample_index").to_pylist()))
        assert len(keys) == PROMPTS and len(set(keys)) == PROMPTS, f  # every prompt's sample exactly once
        assert all(v == int(f.stem.split("_")[1]) for v in t.column("policy_version").to_pylist())  # on-policy


def test_a_lost_learner_rank_stops_the_run_naming_it(ppo_models, tmp_path):
    sft, rm, data = ppo_models
    out = tmp_path / "run"
    cmd = [str(EXE), "ppo", "--config", "configs/tiny.yaml", "--out", str(out), f"sft={sft}", f"reward_model={rm}",
           f"data={data}", "iterations=50", f"prompts_per_iteration={PROMPTS}", "ppo.minibatch_size=8",
           "learner.micro_batch_size=4", "eval_prompts=0", "rollout.max_new_tokens=12", "save_every=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True)
    try:
        _wait_for_first_iteration(proc, out)
        os.kill(_actor_pids(proc.pid, "PPOLearnerWorker")[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "learner rank 0 died" in errors[0] and "resume=auto" in errors[0], stderr[-3000:]
    assert "Traceback" not in stderr
    assert (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())  # resumable


SLOW_TWO_TURNS = '''
import time

class Slow:
    """Two turns (the first ends at a space), a little time per step: the kill lands mid-episode."""
    stop = [" "]

    def reset(self, prompt):
        return {"turn": 0}

    def step(self, state, text):
        time.sleep(0.02)
        state["turn"] += 1
        return (None, 1.0, True) if state["turn"] == 2 else ("go on:", 0.5, False)
'''


def test_a_rollout_worker_lost_mid_episode_runs_its_episodes_again_from_the_start(ppo_models, tmp_path):
    """With env=, a killed rollout worker's episodes are run again by its replacement from the start
    with the same seeds: the run's trajectories equal, token for token, those of a run where
    nothing was killed."""
    sft, rm, data = ppo_models
    (tmp_path / "slow.py").write_text(SLOW_TWO_TURNS)

    def cmd(out):
        return [str(EXE), "ppo", "--config", "configs/tiny.yaml", "--out", str(out), f"sft={sft}", f"reward_model={rm}",
                f"data={data}", "iterations=4", f"prompts_per_iteration={PROMPTS}", "ppo.minibatch_size=8",
                "learner.micro_batch_size=4", "eval_prompts=0", "rollout.max_new_tokens=8", "rollout.num_workers=2",
                f"env={tmp_path / 'slow.py'}:Slow", "rollout.max_episode_tokens=32"]

    clean = subprocess.run(cmd(tmp_path / "clean"), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert clean.returncode == 0, clean.stderr[-3000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)
    try:
        _wait_for_first_iteration(proc, out)
        os.kill(_actor_pids(proc.pid, "RolloutWorker")[0], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["faults/rollout_restarts"] == 1
    for name in sorted(f.name for f in (tmp_path / "clean" / "trajectories").glob("iter_*.parquet")):
        a, b = pq.read_table(tmp_path / "clean" / "trajectories" / name), pq.read_table(out / "trajectories" / name)
        for column in ("prompt_id", "response_ids", "policy_mask", "env_rewards", "end_reason", "score"):
            assert a.column(column).to_pylist() == b.column(column).to_pylist(), (name, column)
