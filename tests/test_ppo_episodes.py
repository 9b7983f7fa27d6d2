"""`rlhf-dist ppo env=FILE.py:Env` end to end on real Ray, vLLM, DeepSpeed and Arrow (CPU, tiny
models from `ppo_models`): a user's environment given by path trains with GRPO and with GAE; the
trajectory files hold whole episodes with per-token policy masks; estimators count the policy's
tokens only; environments that raise, hang, return garbage or kill their process are contained,
counted in metrics.jsonl, and past `rollout.env_max_failed_share` stop the run in one line."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("vllm")

REPO = Path(__file__).resolve().parents[1]

# A two-turn environment: answer, then "shorter please:", reward 0.5 for the first turn and 1.0
# when the second turn is shorter. Imports nothing from rlhf_dist.
SHORTER = '''
class Shorter:
    stop = ["."]

    def reset(self, prompt):
        return {"turn": 0, "first": 0}

    def step(self, state, text):
        state["turn"] += 1
        n = len(text.split())
        if state["turn"] == 1:
            state["first"] = n
            return "shorter please:", 0.5, False
        return None, 1.0 if n < state["first"] else 0.0, True
'''

# The same environment, failing in every way an untrusted environment can, in reset or step, as
# the prompt decides (turns end at a space, so step is reached).
FAULTY = SHORTER + '''

import os, time

class Faulty(Shorter):
    stop = [" "]

    def reset(self, prompt):
        kind = sum(map(ord, prompt)) % 7
        if kind == 1:
            raise RuntimeError("tool server down")
        if kind == 2:
            time.sleep(60)
        if kind == 4:
            os._exit(3)
        return {**super().reset(prompt), "kind": kind}

    def step(self, state, text):
        if state["kind"] == 3:
            return "not a tuple"
        if state["kind"] == 5:
            raise KeyError("no such tool")
        return super().step(state, text)
'''

ALWAYS_FAILS = '''
class Broken:
    def reset(self, prompt):
        raise ValueError("no such tool")

    def step(self, state, text):
        return None, 0.0, True
'''


def _ppo(ppo_models, out, env_file, *extra):
    sft, rm, data = ppo_models
    args = [f"sft={sft}", f"reward_model={rm}", f"data={data}", f"env={env_file}", "iterations=2", "prompts_per_iteration=4",
            "rollout.samples_per_prompt=4", "ppo.epochs=1", "ppo.minibatch_size=16", "learner.micro_batch_size=16",
            "eval_prompts=4", "rollout.max_new_tokens=10", "rollout.max_episode_tokens=40", "optim.lr=1e-3",
            "optim.warmup_steps=0", *extra]
    return subprocess.run([str(Path(sys.executable).with_name("rlhf-dist")), "ppo", "--config",
                           str(REPO / "configs" / "tiny.yaml"), "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600)


def _write(tmp_path, name, source) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def _rows_and_train(out):
    from rlhf_dist.buffer import read_trajectories

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return read_trajectories(out / "trajectories").to_pylist(), [r for r in records if "objective/score" in r]


@pytest.mark.slow
def test_grpo_with_a_users_environment_file_and_overlap(ppo_models, tmp_path):
    env = _write(tmp_path, "shorter.py", SHORTER)
    res = _ppo(ppo_models, tmp_path / "run", f"{env}:Shorter", "reward_source=env", "ppo.advantage=grpo",
               "ppo.kl_coef=0", "rollout.overlap=true", "rollout.max_staleness=1")
    assert res.returncode == 0, res.stderr[-3000:]
    rows, train = _rows_and_train(tmp_path / "run")
    assert len(rows) == 32 and all(len(r["policy_mask"]) == len(r["response_ids"]) for r in rows)
    assert all(train[0][k] == 0.0 for k in ("env/failed_share", "env/end_env_error_share"))
    assert all(1.0 <= t["env/turns_mean"] <= 2.0 for t in train)
    # overlap: the second batch was sampled with the first weights, its rows weighted on the policy's tokens
    assert [t["rollout/staleness"] for t in train] == [0, 1] and "offpolicy/capped_share" in train[1]
    assert all(len(r["is_weights"]) == len(r["response_ids"]) for r in rows if r["iteration"] == 1)
    # vLLM's log-probs are the learner's at every policy token of the episodes (same weights in iteration 1)
    assert train[0]["rollout/logprob_gap_max"] < 1e-4, train[0]
    for r in rows:
        mask = r["policy_mask"]
        if r["end_reason"] == "done":  # answer, observation, answer; 0.5 on the first turn's last token
            first_end = mask.index(False) - 1
            assert r["turns"] == 2 and not all(mask) and r["env_rewards"][first_end] == 0.5
            assert r["score"] == pytest.approx(sum(r["env_rewards"]))
        assert all(a == 0.0 for a, m in zip(r["advantages"], mask) if not m)  # observations are context
    for g in range(0, len(rows), 4):  # GRPO over the episodes of one prompt, on the policy's tokens
        group = rows[g:g + 4]
        s = [r["score"] - (0.0 if r["finished_with_eos"] else 1.0) for r in group]
        mean, std = statistics.fmean(s), statistics.stdev(s)
        for r, x in zip(group, s):
            want = 0.0 if max(s) == min(s) else (x - mean) / (std + 1e-6)
            got = [a for a, m in zip(r["advantages"], r["policy_mask"]) if m]
            assert got == pytest.approx([want] * len(got), abs=1e-5)


@pytest.mark.slow
def test_gae_with_failing_environments_contained_and_counted(ppo_models, tmp_path):
    env = _write(tmp_path, "faulty.py", FAULTY)
    res = _ppo(ppo_models, tmp_path / "run", f"{env}:Faulty", "rollout.env_timeout_s=2", "rollout.env_max_failed_share=1",
               "prompts_per_iteration=8", "rollout.samples_per_prompt=2")
    assert res.returncode == 0, res.stderr[-3000:]
    rows, train = _rows_and_train(tmp_path / "run")
    reasons = {r["end_reason"] for r in rows}
    assert {"env_error", "env_timeout", "env_bad_return", "env_crash"} <= reasons, reasons
    for r in rows:
        failed = r["end_reason"].startswith("env_")
        assert bool(r["env_error"]) == failed
        if failed:
            assert r["score"] == 0.0 and sum(r["env_rewards"]) == 0.0
        assert all(a == 0.0 for a, m in zip(r["advantages"], r["policy_mask"]) if not m)
    assert "tool server down" in " ".join(r["env_error"] for r in rows)
    for t in train:
        shares = sum(t[f"env/end_{k}_share"] for k in ("env_error", "env_timeout", "env_bad_return", "env_crash"))
        assert t["env/failed_share"] == pytest.approx(shares) and 0 < shares < 1
    assert (tmp_path / "run" / "critic").exists()


@pytest.mark.slow
def test_failures_past_the_share_stop_the_run_in_one_line(ppo_models, tmp_path):
    env = _write(tmp_path, "broken.py", ALWAYS_FAILS)
    res = _ppo(ppo_models, tmp_path / "run", f"{env}:Broken", "reward_source=env", "ppo.advantage=rloo")
    assert res.returncode == 2, res.stderr[-3000:]
    last = [line for line in res.stderr.splitlines() if line.strip()][-1]  # (Ray's start-up lines before it)
    assert "Traceback" not in res.stderr, res.stderr
    assert last.startswith("rlhf-dist ppo: error: ") and f"env={env}:Broken" in last and "no such tool" in last and "prompt" in last, last


@pytest.mark.slow
def test_bad_environment_spec_is_one_line_before_anything_starts(ppo_models, tmp_path):
    env = _write(tmp_path, "nostep.py", "class NoStep:\n    def reset(self, prompt):\n        return None\n")
    res = _ppo(ppo_models, tmp_path / "run", f"{env}:NoStep")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "lacks step" in res.stderr and "NoStep" in res.stderr, res.stderr
