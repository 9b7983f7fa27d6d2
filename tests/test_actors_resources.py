"""Impossible resource requests (rlhf_dist/actors/resources.py): refused before any actor starts,
with one line naming what was asked and what exists; through the CLI within seconds. Bad data
found while the engines start stops them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_dist.actors.resources import ResourceError, Role, check_resources

EXE = Path(sys.executable).with_name("rlhf-dist")
TWO_CPUS = [{"CPU": 2.0, "memory": 1e10}]


def test_requests_that_fit_pass():
    check_resources([Role("rollout worker", 2, 0.25), Role("learner rank", 1, 1.5)], nodes=TWO_CPUS)
    check_resources([Role("learner rank", 2, 1.0, 1.0)], nodes=[{"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 1}])


@pytest.mark.parametrize("roles, nodes, expected", [
    ([Role("rollout worker", 1, 0.25, 1.0)], TWO_CPUS,
     "the run asks for 1 GPUs in all (1 rollout worker x 0.25 CPU + 1 GPU), but the Ray cluster has 2 CPUs and 0 GPUs on 1 node(s)"),
    ([Role("rollout worker", 4, 0.5), Role("learner rank", 1, 1.0)], TWO_CPUS,
     "the run asks for 3 CPUs in all (4 rollout workers x 0.5 CPU; 1 learner rank x 1 CPU), but the Ray cluster has 2 CPUs "
     "and 0 GPUs on 1 node(s)"),
    ([Role("learner rank", 1, 3.0)], [{"CPU": 2.0}, {"CPU": 2.0}],
     "one learner rank asks for 3 CPUs, more than any node has (the Ray cluster has 4 CPUs and 0 GPUs on 2 node(s))"),
])
def test_impossible_requests_name_what_was_asked_and_what_exists(roles, nodes, expected):
    with pytest.raises(ResourceError) as e:
        check_resources(roles, nodes=nodes)
    assert str(e.value) == expected


def test_a_role_with_no_actors_asks_for_nothing():
    check_resources([Role("reward actor", 0, 100.0, 8.0), Role("learner rank", 1, 1.0)], nodes=TWO_CPUS)


@pytest.mark.parametrize("override, words", [
    ("rollout.gpus_per_worker=1", ["1 GPUs in all", "rollout worker", "0 GPUs"]),
    ("learner.gpus_per_rank=1", ["1 GPUs in all", "learner rank", "0 GPUs"]),
    ("rollout.cpus_per_worker=64", ["CPUs in all", "1 rollout worker x 64 CPU"]),
])
@pytest.mark.slow
def test_ppo_refuses_an_impossible_request_within_seconds_and_writes_nothing(override, words, ppo_models, tmp_path):
    sft, rm, data = ppo_models
    out = tmp_path / "run"
    start = time.perf_counter()
    res = subprocess.run([str(EXE), "ppo", "--config", "configs/tiny.yaml", "--out", str(out), f"sft={sft}",
                          f"reward_model={rm}", f"data={data}", "eval_prompts=0", override],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and all(w in errors[0] for w in words), res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert time.perf_counter() - start < 60
    assert not out.exists()


@pytest.mark.slow
def test_bad_data_found_while_the_engines_start_stops_them_and_writes_nothing(ppo_models, tmp_path):
    """The driver reads the data while the rollout engines start: a bad prompts file still ends the
    run with one line naming the file and line, exit 2, and the started actors stopped."""
    sft, rm, data = ppo_models
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "the cat"}\n{"prompt": \n')
    out = tmp_path / "run"
    res = subprocess.run([str(EXE), "ppo", "--config", "configs/tiny.yaml", "--out", str(out), f"sft={sft}",
                          f"reward_model={rm}", f"data={data}", f"prompts_file={prompts}", "eval_prompts=0"],
                         capture_output=True, text=True, timeout=180, cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"{prompts}:2" in errors[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not out.exists()
    deadline = time.time() + 15  # the local Ray instance stops its workers as the driver exits
    while (left := [d.name for d in Path("/proc").iterdir()
                    if d.name.isdigit() and _cmdline(d).startswith("ray::RolloutWorker")]) and time.time() < deadline:
        time.sleep(0.5)
    assert not left, f"rollout worker processes left running: {left}"


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # the process ended meanwhile
        return ""


@pytest.mark.slow
def test_sigterm_ends_a_ppo_run_promptly(ppo_models, tmp_path):
    """A scheduler's SIGTERM mid-run: the driver stops its actors, shuts down its local Ray and exits
    130 with one line, within seconds."""
    import os
    import signal

    sft, rm, data = ppo_models
    proc = subprocess.Popen([str(EXE), "ppo", "--config", "configs/tiny.yaml", "--out", str(tmp_path / "run"),
                             f"sft={sft}", f"reward_model={rm}", f"data={data}", "eval_prompts=0", "iterations=200"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (tmp_path / "run" / "metrics.jsonl").exists():
            time.sleep(1)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(3)  # inside the iteration loop
        proc.send_signal(signal.SIGTERM)
        start = time.perf_counter()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(os.getpgid(proc.pid), signal.SIGKILL) if hasattr(os, "killpg") else proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert time.perf_counter() - start < 30
    assert "rlhf-dist ppo: interrupted" in err and "Traceback" not in err
