"""Resume (`resume=auto`) on real Ray, vLLM and DeepSpeed: a PPO run killed with SIGKILL after a
checkpoint and resumed ends with the same metrics and trajectories as the uninterrupted run of the
same seed, to the last bit (rlhf_dist/recipes/ppo_checkpoint.py says why exact equality holds);
a folder that holds a run is refused unless resumed or overwritten."""

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
ITERATIONS = 5
pytestmark = pytest.mark.slow  # end-to-end PPO runs, killed and resumed: skipped by `make test-fast`


def _command(ppo_models, out, *extra):
    sft, rm, data = ppo_models
    return [str(EXE), "ppo", "--config", "configs/tiny.yaml", "--out", str(out), f"sft={sft}", f"reward_model={rm}",
            f"data={data}", f"iterations={ITERATIONS}", "prompts_per_iteration=16", "ppo.minibatch_size=8",
            "learner.micro_batch_size=4", "eval_prompts=8", "eval_every=2", "rollout.max_new_tokens=12",
            "optim.lr=1e-3", "critic_optim.lr=1e-3", "optim.warmup_steps=0", "save_every=2", "keep_checkpoints=1",
            "ppo.kl_target=1.0", "ppo.score_norm=running", *extra]


def _run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)


def _metrics(out):
    """Every logged record without the wall-clock timings."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def _trajectories(out):
    return {p.name: pq.read_table(p).drop_columns(["worker_id"]).to_pylist() for p in sorted((out / "trajectories").glob("*"))}


@pytest.fixture(scope="module")
def uninterrupted(ppo_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo_whole") / "run"
    res = _run(_command(ppo_models, out))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_a_run_killed_after_a_checkpoint_resumes_to_the_same_metrics(uninterrupted, ppo_models, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_command(ppo_models, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (out / "checkpoints" / "iter_000002" / "state.json").exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(0.2)
        assert (out / "checkpoints" / "iter_000002" / "state.json").exists()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started: a lost machine
        proc.wait()
    resumed = _run(_command(ppo_models, out, "resume=auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    assert _metrics(out) == _metrics(uninterrupted)
    steps = [r["step"] for r in _metrics(out) if "objective/score" in r]
    assert steps == list(range(1, ITERATIONS + 1))  # no iteration missing or repeated
    assert _trajectories(out) == _trajectories(uninterrupted)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval"] == json.loads((uninterrupted / "summary.json").read_text())["eval"]


def test_a_folder_holding_a_run_is_refused_untouched(uninterrupted, ppo_models):
    before = (uninterrupted / "metrics.jsonl").read_bytes()
    res = _run(_command(ppo_models, uninterrupted))
    assert res.returncode == 2
    errors = [line for line in res.stderr.splitlines() if line.strip()]
    assert errors == [f"rlhf-dist ppo: error: out={uninterrupted} already holds a run (config.yaml): give resume=auto "
                      "to continue it or overwrite=true to start over (--debug or RLHF_DIST_DEBUG=1 shows the traceback)"]
    assert (uninterrupted / "metrics.jsonl").read_bytes() == before
