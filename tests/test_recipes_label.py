"""`rlhf-dist label`: K vLLM samples of a policy per prompt, ranked by the simulated labeler, in the
comparisons schema that `rlhf-dist rm` reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow  # an end-to-end `rlhf-dist label` run: skipped by `make test-fast`


def test_label_writes_ranked_policy_samples(ppo_models, tmp_path):
    from rlhf_dist.data import load_comparisons, load_prompts, prompt_text
    from rlhf_dist.tasks.base import load_task

    sft, _, data = ppo_models
    out = tmp_path / "labels"
    proc = subprocess.run([sys.executable, "-m", "rlhf_dist.cli", "label", "--out", str(out), f"policy={sft}", f"data={data}",
                           "k=3", "prompts=6", "heldout_prompts=4", "max_new_tokens=8", "labeler_temperature=0"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "labels.json").read_text())
    train = [json.loads(line) for line in (out / "comparisons.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (out / "comparisons_heldout.jsonl").read_text().splitlines()]
    assert len(train) + len(held) + summary["dropped_identical"] == 10
    rl_prompts = load_prompts(Path(data) / "rl_prompts.jsonl")[:6]
    eval_prompts = load_prompts(Path(data) / "eval_prompts.jsonl")[-4:]
    assert [r["prompt"] for r in train] == [p for p in rl_prompts if p in {r["prompt"] for r in train}]
    assert all(r["prompt"] in eval_prompts for r in held)  # held-out rows come from the end of the eval file
    task = load_task("rlhf_dist.tasks.instruct:task")
    for row in train + held:
        assert len(row["responses"]) == 3 and sorted(row["ranking"]) == [0, 1, 2]
        gold = [task.gold_score(prompt_text(row["prompt"]), r) for r in row["responses"]]
        ordered = [gold[i] for i in row["ranking"]]
        assert ordered == sorted(ordered, reverse=True)  # a noiseless labeler (T=0) ranks by gold
    assert len(load_comparisons(out / "comparisons.jsonl")) == len(train)  # readable by the RM stage
