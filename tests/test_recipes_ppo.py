"""PPO end to end on real Ray, vLLM, DeepSpeed and Arrow (CPU, tiny models from `ppo_models`).

- the driver (`train_ppo`) runs to completion; at iteration 1 the policy equals the reference, so
  KL is 0; in every iteration the first minibatch is on-policy, so the ratio is exactly 1 and
  nothing is clipped (ppo-details 37); vLLM's log-probs match the learner's;
- the trajectories written by the run read back with pyarrow: one row per sampled response,
  nothing missing or duplicated, stamped with the version that sampled them;
- after a weight push, every rollout worker's greedy output equals HF greedy decoding of the
  learner's saved weights, token for token (and differs from before the update);
- with reward_source=gold the scores are the task's gold scores of the sampled responses;
- bad settings fail early with a message naming the key.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("vllm")

REPO = Path(__file__).resolve().parents[1]
ITERATIONS, PROMPTS = 3, 16


def _overrides(ppo_models, out) -> list[str]:
    sft, rm, data = ppo_models
    return [f"out={out}", f"sft={sft}", f"reward_model={rm}", f"data={data}", f"iterations={ITERATIONS}",
            f"prompts_per_iteration={PROMPTS}", "ppo.minibatch_size=8", "learner.micro_batch_size=4", "eval_prompts=8",
            "rollout.max_new_tokens=12", "optim.lr=1e-3", "critic_optim.lr=1e-3", "optim.warmup_steps=0",
            f"save_every={ITERATIONS}"]


@pytest.fixture(scope="module")
def run(ppo_models, tmp_path_factory):
    from rlhf_dist.config import load_config
    from rlhf_dist.config.ppo import PPOConfig
    from rlhf_dist.recipes.ppo import train_ppo

    out = tmp_path_factory.mktemp("ppo_run")
    cfg = load_config(PPOConfig, REPO / "configs" / "tiny.yaml", _overrides(ppo_models, out))
    try:
        summary = train_ppo(cfg)
    finally:
        ray.shutdown()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, summary, records


def _train_records(records):
    return [r for r in records if "objective/score" in r]


@pytest.mark.slow
def test_run_completes_and_writes_models(run):
    out, summary, records = run
    assert summary["iterations"] == ITERATIONS
    assert len(_train_records(records)) == ITERATIONS
    for name in ("model", "critic"):
        assert (out / name / "config.json").is_file() and (out / name / "tokenizer.json").is_file()
    assert set(summary["eval"]) == {"sft", "ppo"}
    assert all(0.0 <= summary["eval"][k]["gold"] <= 1.0 for k in ("sft", "ppo"))


@pytest.mark.slow
def test_checkpoint_holds_policy_critic_and_driver_state(run):
    out = run[0]
    folder = out / "checkpoints" / f"iter_{ITERATIONS:06d}"
    for net in ("policy", "critic"):
        tag = folder / net / "state"
        assert tag.is_dir() and any(tag.iterdir()), tag
        assert (folder / net / "latest").read_text().strip() == "state"
    state = json.loads((folder / "state.json").read_text())
    assert state["iteration"] == ITERATIONS and set(state) >= {"beta", "score_stats", "ptx", "evals"}
    assert not list((out / "checkpoints").glob(".tmp-*"))


@pytest.mark.slow
def test_first_iteration_policy_equals_reference(run):
    first = _train_records(run[2])[0]
    assert abs(first["objective/kl"]) < 1e-6
    assert abs(run[1]["eval"]["sft"]["kl"]) < 1e-3  # vLLM (policy) vs reference actor, same weights


@pytest.mark.slow
def test_first_minibatch_is_on_policy_every_iteration(run):
    for r in _train_records(run[2]):
        assert r["policy/first_minibatch_ratio_dev_max"] < 1e-5, r
        assert r["policy/first_minibatch_clipfrac"] == 0.0
        assert r["rollout/staleness"] == 0
        assert r["rollout/logprob_gap_max"] < 1e-3  # vLLM processed log-probs vs the learner's, fp32


@pytest.mark.slow
def test_the_policy_moves(run):
    """Later iterations are off the reference: positive KL, and some ratio away from 1 after the
    first minibatch (lr 1e-3 on a random model: large steps)."""
    recs = _train_records(run[2])
    assert recs[-1]["objective/kl"] > 1e-4
    assert max(r["policy/ratio_max"] for r in recs) > 1.0 + 1e-4


@pytest.mark.slow
def test_trajectories_read_back_one_row_per_response(run):
    import pyarrow.compute as pc

    from rlhf_dist.buffer import read_trajectories

    out = run[0]
    table = read_trajectories(out / "trajectories")
    assert table.num_rows == ITERATIONS * PROMPTS
    keys = set(zip(table.column("iteration").to_pylist(), table.column("prompt_id").to_pylist(),
                   table.column("sample_index").to_pylist()))
    assert len(keys) == table.num_rows
    assert table.column("policy_version").to_pylist() == table.column("iteration").to_pylist()
    for name in ("score", "ref_logprobs", "old_logprobs", "values", "advantages", "returns", "kl"):
        assert name in table.schema.names
    lengths = pc.list_value_length(table.column("response_ids"))
    for name in ("rollout_logprobs", "ref_logprobs", "old_logprobs", "values", "advantages", "returns"):
        assert pc.all(pc.equal(pc.list_value_length(table.column(name)), lengths)).as_py(), name
    import pyarrow.parquet as pq

    first = pq.read_table(sorted((out / "trajectories").glob("iter_*.parquet"))[0])
    assert first.num_rows == PROMPTS


@pytest.mark.slow
def test_reward_source_gold_trains_on_the_gold_scorer(ppo_models, tmp_path):
    """reward_source=gold: every trajectory's score is the task's gold score of its decoded
    response (recomputed here from the stored token ids), not the reward model's."""
    from rlhf_dist.buffer import read_trajectories
    from rlhf_dist.config import load_config
    from rlhf_dist.data import load_prompts, prompt_text
    from rlhf_dist.models import load_tokenizer
    from rlhf_dist.config.ppo import PPOConfig
    from rlhf_dist.recipes.ppo import train_ppo
    from rlhf_dist.tasks.instruct import task

    sft, _, data = ppo_models
    overrides = [o for o in _overrides(ppo_models, tmp_path) if not o.startswith(("iterations=", "eval_prompts=", "save_every="))]
    cfg = load_config(PPOConfig, REPO / "configs" / "tiny.yaml", [*overrides, "iterations=2", "eval_prompts=0", "reward_source=gold"])
    try:
        train_ppo(cfg)
    finally:
        ray.shutdown()
    table = read_trajectories(tmp_path / "trajectories")
    prompts, tok = load_prompts(Path(data) / "rl_prompts.jsonl"), load_tokenizer(sft)
    expected = [task.gold_score(prompt_text(prompts[i]), tok.decode(ids, skip_special_tokens=True))
                for i, ids in zip(table.column("prompt_id").to_pylist(), table.column("response_ids").to_pylist())]
    assert table.num_rows == 2 * PROMPTS
    assert table.column("score").to_pylist() == pytest.approx(expected, abs=1e-6)


def test_greedy_after_weight_sync_equals_hf_greedy_of_learner(ppo_models, tmp_path):
    """Two rollout workers and two learner ranks (ZeRO-3): one PPO step changes the policy; after
    the push, both workers decode exactly what HF decodes with the learner's saved weights."""
    import random

    import torch

    from rlhf_dist.actors.learner_group import ModelSpec
    from rlhf_dist.actors.ppo_learner import PPOLearnerGroup
    from rlhf_dist.actors.rollout import RolloutGroup
    from rlhf_dist.buffer import add_columns
    from rlhf_dist.data import format_prompts, load_prompts
    from rlhf_dist.config.learner import LearnerConfig, OptimConfig
    from rlhf_dist.engines.ppo import PPOLossConfig
    from rlhf_dist.models import load_causal_lm, load_tokenizer

    sft, rm, data = ppo_models
    tok = load_tokenizer(sft)
    prompts = format_prompts(tok, load_prompts(Path(data) / "rl_prompts.jsonl")[:8])
    new_tokens = 10
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="test_ppo_sync")
    try:
        rollout = RolloutGroup(sft, num_workers=2, seed=0, max_model_len=256, num_cpus=0.25)
        learner = PPOLearnerGroup(ModelSpec(sft, "causal_lm"), ModelSpec(rm, "scalar"),
                                  LearnerConfig(num_ranks=2, zero_stage=3, micro_batch_size=4, cpus_per_rank=0.5),
                                  OptimConfig(lr=2e-2, schedule="constant"), OptimConfig(lr=1e-3, schedule="constant"),
                                  minibatch_size=8, total_steps=1, pad_id=tok.pad_token_id, loss_cfg=PPOLossConfig(temperature=1.0))
        before = rollout.greedy(prompts, new_tokens)
        table = rollout.generate(prompts, list(range(8)), [0] * 8, new_tokens, 1.0, seed=3)
        old_lp, values, _ = learner.forward_old(table)
        rng = random.Random(0)
        adv = [[rng.gauss(0, 1) for _ in r] for r in table.column("response_ids").to_pylist()]
        table = add_columns(table, old_logprobs=old_lp, values=values, advantages=adv, returns=adv)
        learner.ppo_step(table, None)
        stats = learner.push_weights(rollout.workers, version=1, transport="object_store")
        after = rollout.greedy(prompts, new_tokens)
        versions = rollout.versions()
        learner.save(tmp_path / "policy", tmp_path / "critic", sft)
        learner.shutdown()
        rollout.shutdown()
    finally:
        ray.shutdown()
    assert stats["versions"] == [1, 1] and versions == [1, 1]
    model = load_causal_lm(tmp_path / "policy")
    expected = []
    for p in prompts:
        with torch.no_grad():
            ids = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), max_new_tokens=new_tokens,
                                 do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        expected.append(ids[0, len(p):].tolist())
    assert after[0] == after[1] == expected
    assert before[0] != after[0]  # the update (lr 2e-2) did change the greedy output


@pytest.mark.parametrize("override, message", [
    ("rollout.top_p=0.9", "top_p"),
    ("ppo.minibatch_size=5", "minibatch_size"),
    ("ppo.kl_estimator=k9", "kl_estimator"),
    ("reward_source=judge", "reward_source"),
    ("ppo.bogus=1", "bogus"),
])
def test_bad_settings_fail_with_the_key_named(override, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlhf_dist.cli", "ppo", "--config", str(REPO / "configs" / "tiny.yaml"),
                           f"out={tmp_path / 'run'}", override], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0], proc.stderr
    assert not (tmp_path / "run").exists()  # nothing written


def test_ptx_mix_reads_pretraining_texts_and_demonstrations(ppo_models, tmp_path):
    """ptx_file=A,B: the pretraining texts' sequences, then each demonstration as the ids SFT trains on."""
    from rlhf_dist.data import encode_response, format_prompt, load_sft, load_texts
    from rlhf_dist.models import load_tokenizer
    from rlhf_dist.data.ppo_data import ptx_sequences

    sft, _, data = ppo_models
    tok = load_tokenizer(sft)
    texts, demos = Path(data) / "pretrain.jsonl", Path(data) / "sft.jsonl"
    seqs = ptx_sequences(f"{texts}, {demos}", tok, max_len=512, ptx_coef=1.0)
    eos = tok.eos_token_id
    expected = [list(ids) + [eos] for ids in tok(load_texts(texts))["input_ids"]]
    expected += [format_prompt(tok, e.prompt) + encode_response(tok, e.response) for e in load_sft(demos)]
    assert seqs == expected
    assert all(s[-1] == eos for s in seqs) and len(seqs) == len(load_texts(texts)) + len(load_sft(demos))
    with pytest.raises(FileNotFoundError, match=r"ptx_file='/nowhere.jsonl' not found"):
        ptx_sequences(f"{demos},/nowhere.jsonl", tok, max_len=512, ptx_coef=1.0)


VARIANTS = {  # name -> overrides; 4 prompts x 4 samples, one minibatch of 16 in one micro-batch
    "grpo": ["ppo.advantage=grpo", "ppo.kl_coef=0"],
    "rloo_kl_loss": ["ppo.advantage=rloo", "ppo.kl_penalty=loss", "ppo.kl_coef=0.1"],
    "reinforce_pp": ["ppo.advantage=reinforce_pp"],
    "gae_overlap": ["rollout.overlap=true", "ppo.is_cap=1.05"],
    # every role in bf16 on CPU (the learner with eager attention), with overlap
    "gae_bf16": ["learner.dtype=bf16", "rollout.dtype=bfloat16", "reward.dtype=bfloat16", "reference.dtype=bfloat16",
                 "rollout.overlap=true"],
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.slow
def test_estimators_and_overlap_through_the_command(variant, ppo_models, tmp_path):
    """`rlhf-dist ppo` with each critic-free estimator builds no critic engine (start-up line, no
    critic folder) and writes advantages that a separate group computation gives from the stored
    scores; with one epoch of one minibatch the update reuses the old forward (ratio exactly 1);
    with overlap, rows after the first batch are one version old and carry truncated importance
    weights min(exp(old - rollout), cap), recomputed here from the stored columns; in bf16 on CPU
    the run completes with log-prob gaps of bf16 rounding."""
    import math
    import statistics

    from rlhf_dist.buffer import read_trajectories

    sft, rm, data = ppo_models
    args = [f"sft={sft}", f"reward_model={rm}", f"data={data}", "iterations=2", "prompts_per_iteration=4",
            "rollout.samples_per_prompt=4", "ppo.epochs=1", "ppo.minibatch_size=16", "learner.micro_batch_size=16",
            "eval_prompts=0", "rollout.max_new_tokens=12", "optim.lr=1e-3", "optim.warmup_steps=0", *VARIANTS[variant]]
    res = subprocess.run([str(Path(sys.executable).with_name("rlhf-dist")), "ppo", "--config", str(REPO / "configs" / "tiny.yaml"),
                          "--out", str(tmp_path), *args], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    critic_free = not variant.startswith("gae")
    assert (f"no critic (ppo.advantage={variant.split('_kl')[0]})" in res.stdout) == critic_free, res.stdout
    assert (tmp_path / "critic").exists() != critic_free
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["learner_peak_memory_mb"]) == 1 and summary["learner_peak_memory_mb"][0] > 100
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "objective/score" in r]
    assert [r["policy/first_minibatch_ratio_dev_max"] for r in train] == [0.0, 0.0]
    table = read_trajectories(tmp_path / "trajectories")
    assert table.num_rows == 2 * 16
    rows = table.to_pylist()
    if variant == "grpo":  # beta 0: advantage = (s - group mean) / (group std + 1e-6) on every token
        for g in range(0, len(rows), 4):
            group = rows[g:g + 4]
            s = [r["score"] - (0.0 if r["finished_with_eos"] else 1.0) for r in group]  # missing-EOS penalty 1
            mean, std = statistics.fmean(s), statistics.stdev(s)
            for r, x in zip(group, s):
                want = 0.0 if max(s) == min(s) else (x - mean) / (std + 1e-6)
                assert r["advantages"] == pytest.approx([want] * len(r["response_ids"]), abs=1e-5)
    if variant == "rloo_kl_loss":
        assert all("loss/value" not in r for r in train)
        # the policy starts as the reference (KL 0), then moves away from it
        assert abs(train[0]["loss/kl"]) < 1e-6 and train[1]["loss/kl"] > 1e-4, [r["loss/kl"] for r in train]
    if variant == "gae_bf16":
        # Iteration 1 samples, scores and trains with the same weights: vLLM's and the learner's
        # log-probs and the reference's differ by bf16 rounding only (fp32 runs: 0 and 1e-5).
        assert 0 < train[0]["rollout/logprob_gap_mean"] < 0.05, train[0]
        assert abs(train[0]["objective/kl"]) < 0.1, train[0]
        assert [r["rollout/staleness"] for r in train] == [0, 1]
        assert all(len(r["is_weights"]) == len(r["response_ids"]) for r in rows if r["iteration"] == 1)
    if variant == "gae_overlap":
        assert [r["rollout/staleness"] for r in train] == [0, 1]
        assert "offpolicy/capped_share" in train[1] and "offpolicy/capped_share" not in train[0]
        assert train[0]["policy/first_minibatch_ratio_dev_max"] == 0.0
        second = [r for r in rows if r["iteration"] == 1]
        assert all(r["policy_version"] == 0 for r in second)
        capped = 0
        for r in second:
            want = [min(math.exp(o - b), 1.05) for o, b in zip(r["old_logprobs"], r["rollout_logprobs"])]
            capped += sum(math.exp(o - b) > 1.05 for o, b in zip(r["old_logprobs"], r["rollout_logprobs"]))
            assert r["is_weights"] == pytest.approx(want, rel=1e-5)
        tokens = sum(len(r["response_ids"]) for r in second)
        assert train[1]["offpolicy/capped_share"] == pytest.approx(capped / tokens)
