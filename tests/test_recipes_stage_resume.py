"""Resume of a learner-group stage (`rlhf-dist pretrain ... resume=auto`, the same loop as sft and
rm: rlhf_dist/recipes/train_stage.py): killed with SIGKILL after a checkpoint and resumed, it logs
the same metrics and saves the same weights as the uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("deepspeed")

REPO = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).with_name("rlhf-dist")
pytestmark = pytest.mark.slow  # end-to-end pretrain runs, killed and resumed: skipped by `make test-fast`


def _command(tiny_model_dir, data, out, *extra):
    return [str(EXE), "pretrain", "--out", str(out), f"data={data}", f"init={tiny_model_dir}", "epochs=4", "batch_size=32",
            "learner.micro_batch_size=16", "learner.cpus_per_rank=1", "log_every=1", "eval_every=10", "save_every=3",
            "optim.lr=1e-3", *extra]


def _metrics(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "train/units_per_s"} for r in rows]


def test_a_stage_killed_after_a_checkpoint_resumes_to_the_same_weights(tiny_model_dir, ppo_models, tmp_path):
    data = ppo_models[2]
    whole = tmp_path / "whole"
    res = subprocess.run(_command(tiny_model_dir, data, whole), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(_command(tiny_model_dir, data, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (out / "checkpoints" / "step_000003" / "state.json").exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "summary.json").exists()  # killed mid-run
    res = subprocess.run(_command(tiny_model_dir, data, out, "resume=auto"), capture_output=True, text=True, timeout=600,
                         cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stdout
    assert _metrics(out) == _metrics(whole)
    assert (out / "model" / "model.safetensors").read_bytes() == (whole / "model" / "model.safetensors").read_bytes()
    refused = subprocess.run(_command(tiny_model_dir, data, out), capture_output=True, text=True, timeout=120, cwd=REPO)
    assert refused.returncode == 2 and "already holds a run" in refused.stderr
