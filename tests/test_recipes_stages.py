"""`rlhf-dist pretrain`, `sft` and `rm` end to end, run as a newcomer would (subprocesses, real Ray,
DeepSpeed and vLLM), on a small slice of the built-in task with a tiny model."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXE = str(Path(sys.executable).with_name("rlhf-dist"))
COMMON = ["learner.cpus_per_rank=1", "log_every=1", "eval_every=0"]


def run(*args, timeout=600):
    res = subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{args[0]} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    data = root / "data"
    run("task-data", "--out", data, "n_pretrain=1200", "n_pretrain_heldout=64", "n_sft=256", "n_rl_prompts=16",
        "n_eval_prompts=16", "n_comparisons=96", "n_comparisons_heldout=32", "probe=0")
    run("pretrain", "--out", root / "base", f"data={data}", "size=tiny", "batch_size=32", "epochs=2",
        "learner.micro_batch_size=16", "optim.lr=3e-3", "save_every=40", *COMMON)
    run("sft", "--out", root / "sft", f"data={data}", f"init={root / 'base' / 'model'}", "batch_size=16", "epochs=2",
        "learner.num_ranks=2", "learner.zero_stage=3", "learner.micro_batch_size=4", "gold_prompts=16", *COMMON)
    run("rm", "--out", root / "rm", f"data={data}", f"init={root / 'sft' / 'model'}", "batch_size=16",
        "learner.num_ranks=2", "learner.micro_batch_size=4", *COMMON)
    return root


@pytest.mark.slow
def test_run_folders_have_config_metrics_tensorboard_and_hf_model(pipeline):
    for stage in ("base", "sft", "rm"):
        d = pipeline / stage
        assert (d / "config.yaml").is_file() and (d / "summary.json").is_file()
        assert list((d / "tb").glob("events.out.tfevents.*")), f"{stage}: no TensorBoard events"
        rows = metrics(d)
        assert any("train/loss" in r for r in rows) and any("eval/loss" in r for r in rows)
        assert (d / "model" / "config.json").is_file() and (d / "model" / "tokenizer.json").is_file()


@pytest.mark.slow
def test_pretraining_lowers_heldout_loss_and_writes_checkpoints(pipeline):
    folder = pipeline / "base" / "checkpoints" / "step_000040"
    assert (folder / "latest").read_text().strip() == "state" and any((folder / "state").iterdir())
    assert json.loads((folder / "state.json").read_text())["step"] == 40
    evals = [r["eval/loss"] for r in metrics(pipeline / "base") if "eval/loss" in r]
    assert evals[-1] < evals[0] - 1.0, evals  # random init starts near log(vocab) ~ 5.9 nats


@pytest.mark.slow
def test_sft_on_zero3_learners_reports_gold_and_saves_a_vllm_loadable_model(pipeline):
    from rlhf_dist.tasks.base import DEFAULT_TASK, load_task

    task = load_task(DEFAULT_TASK)
    summary = json.loads((pipeline / "sft" / "summary.json").read_text())
    # The gold comparison sampled both the init and the SFT folder with vLLM: both loaded there.
    # Each mean is recomputed from the written samples with the task's gold scorer.
    prompts = [json.loads(line)["prompt"] for line in (pipeline / "data" / "eval_prompts.jsonl").read_text().splitlines()]
    for name in ("init", "sft"):
        rows = [json.loads(line) for line in (pipeline / "sft" / f"samples_{name}.jsonl").read_text().splitlines()]
        assert [r["prompt"] for r in rows] == prompts[:16]
        gold = [task.gold_score(r["prompt"], r["response"]) for r in rows]
        assert [r["gold"] for r in rows] == pytest.approx(gold, abs=1e-12)
        assert summary[f"gold/{name}"] == pytest.approx(sum(gold) / 16, abs=1e-12)
    evals = [r["eval/loss"] for r in metrics(pipeline / "sft") if "eval/loss" in r]
    assert evals[-1] < evals[0], evals


@pytest.mark.slow
def test_reward_model_summary_normalisation_and_padding_invariance(pipeline):
    from rlhf_dist.models import load_scalar_model, load_tokenizer, position_ids_from_mask
    from rlhf_dist.tasks.base import DEFAULT_TASK, load_task
    from tests.conftest import hf_reward_fn

    summary = json.loads((pipeline / "rm" / "summary.json").read_text())
    # Recomputed pair by pair on the held-out file: the saved RM's accuracy (transformers' own
    # classifier, one unpadded sequence at a time) and the labeler ceiling (the gold scorer).
    task = load_task(DEFAULT_TASK)
    tok = load_tokenizer(pipeline / "rm" / "model")
    reward = hf_reward_fn(pipeline / "rm" / "model")
    held = [json.loads(line) for line in (pipeline / "data" / "comparisons_heldout.jsonl").read_text().splitlines()]
    correct = agree = pairs = close = 0.0
    rewards = []
    for c in held:
        prompt_ids = tok(c["prompt"] + "\n").input_ids
        seqs = [prompt_ids + tok(r, add_special_tokens=False).input_ids + [tok.eos_token_id] for r in c["responses"]]
        assert max(map(len, seqs)) <= 128  # the rm stage's max_len: nothing truncated or dropped
        scores = [reward(ids) for ids in seqs]
        rewards += scores
        gold = [task.gold_score(c["prompt"], r) for r in c["responses"]]
        for win, lose in itertools.combinations(c["ranking"], 2):  # ranking is best first
            pairs += 1
            correct += 1.0 if scores[win] > scores[lose] else 0.5 if scores[win] == scores[lose] else 0.0
            close += abs(scores[win] - scores[lose]) < 1e-4  # batched vs single forward may order these either way
            agree += 1.0 if gold[win] > gold[lose] else 0.5 if gold[win] == gold[lose] else 0.0
    assert summary["eval/accuracy"] == pytest.approx(correct / pairs, abs=close / pairs + 1e-6)  # fp32 sums
    assert summary["labeler_ceiling"] == pytest.approx(agree / pairs, abs=1e-12) and agree / pairs > 0.5
    # Normalised (InstructGPT 3.5): after the saved bias, the held-out responses score 0 on average.
    assert abs(sum(rewards) / len(rewards)) < 1e-4, sum(rewards) / len(rewards)
    rm = load_scalar_model(pipeline / "rm" / "model")
    assert rm.reward(torch.tensor([seqs[0]]), torch.ones(1, len(seqs[0]), dtype=torch.long)).item() == pytest.approx(
        reward(seqs[0]), abs=1e-5)  # our loader applies the same bias
    ids = tok("sort 3 1 2.\n1 2 3.").input_ids + [tok.eos_token_id]
    scores = []
    for pads in (0, 3, 7):
        input_ids = torch.tensor([[tok.pad_token_id] * pads + ids])
        mask = (torch.arange(input_ids.shape[1]) >= pads).long().unsqueeze(0)
        with torch.no_grad():
            scores.append(rm.reward(input_ids, mask, position_ids_from_mask(mask)).item())
    assert max(scores) - min(scores) < 1e-5, scores


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    res = subprocess.run([EXE, "sft", "--out", str(tmp_path / "x"), f"data={tmp_path}", f"init={tmp_path}"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "x").exists()


VLLM_RM_SCRIPT = """
import os, sys, json
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
from vllm import LLM, TokensPrompt
llm = LLM(model=sys.argv[1], runner="pooling", dtype="float32", enforce_eager=True, max_model_len=128)
out = llm.classify([TokensPrompt(prompt_token_ids=json.loads(sys.argv[2]))], use_tqdm=False)
print("PROB", out[0].outputs.probs[0])
"""


@pytest.mark.slow
def test_reward_model_folder_loads_in_vllm_with_the_same_score(pipeline):
    """vLLM serves the RM folder as a sequence classifier: its output is sigmoid(raw head value at
    the last token), and ours is that raw value minus the normalising bias."""
    import math

    from rlhf_dist.models import load_scalar_model, load_tokenizer

    d = pipeline / "rm" / "model"
    tok = load_tokenizer(d)
    ids = tok("count from 1 to 3.\n1 2 3.").input_ids + [tok.eos_token_id]
    res = subprocess.run([sys.executable, "-c", VLLM_RM_SCRIPT, str(d), json.dumps(ids)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    prob = float(next(line for line in res.stdout.splitlines() if line.startswith("PROB")).split()[1])
    rm = load_scalar_model(d)
    with torch.no_grad():
        ours = rm.reward(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)).item()
    assert prob == pytest.approx(1 / (1 + math.exp(-(ours + rm.reward_bias))), abs=1e-5)
