"""The reward and reference models in one Ray actor (`reference.colocate_with_reward`), on real Ray
with tiny local models: scores and log-probs equal an independent transformers forward of each
unpadded row; a lost actor is replaced once, whichever role notices, and both roles then use the
replacement; a PPO run gives the same figures colocated as with separate actors. The resources and
the config checks it brings are tested without Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from random import Random
from types import SimpleNamespace

import pyarrow as pa
import pytest

from rlhf_dist.actors.ppo_actors import ppo_roles
from rlhf_dist.actors.resources import ResourceError, check_resources
from rlhf_dist.config.ppo import PPOConfig, ReferenceConfig, ScorerConfig
from tests.conftest import hf_reward_fn

REPO = Path(__file__).resolve().parents[1]
TEMPERATURE = 0.7


# ------------------------------------------------------------------------------------ config and resources


def test_colocation_needs_as_many_reference_as_reward_actors():
    with pytest.raises(ValueError, match=r"reference.num_actors \(1\) must equal reward.num_actors \(2\)"):
        PPOConfig(out="x", reward=ScorerConfig(num_actors=2), reference=ReferenceConfig(colocate_with_reward=True))
    PPOConfig(out="x", reward=ScorerConfig(num_actors=2), reference=ReferenceConfig(num_actors=2, colocate_with_reward=True))


def test_a_colocated_actor_asks_for_both_roles_cpus_and_the_larger_gpu_share():
    cfg = PPOConfig(out="x", reward=ScorerConfig(num_actors=2, cpus_per_actor=0.5, gpus_per_actor=0.25),
                    reference=ReferenceConfig(num_actors=2, cpus_per_actor=0.75, gpus_per_actor=0.5, colocate_with_reward=True))
    scorers = [r for r in ppo_roles(cfg) if "reward" in r.name or "reference" in r.name]
    assert [(r.name, r.count, r.cpus, r.gpus) for r in scorers] == [("reward + reference actor", 2, 1.25, 0.5)]
    apart = PPOConfig(out="x", reward=cfg.reward, reference=ReferenceConfig(num_actors=2, cpus_per_actor=0.75, gpus_per_actor=0.5))
    assert sum(r.count * r.gpus for r in ppo_roles(apart)) - sum(r.count * r.gpus for r in ppo_roles(cfg)) == pytest.approx(0.5)
    # 1 GPU for the two colocated pairs (2 x 0.5) fits a node with one GPU; apart (2 x 0.25 + 2 x 0.5) it does not.
    node = [{"CPU": 16.0, "GPU": 1.0}]
    cheap = lambda c: [r for r in ppo_roles(c) if "rollout" not in r.name and "learner" not in r.name]  # noqa: E731
    check_resources(cheap(cfg), node)
    with pytest.raises(ResourceError):
        check_resources(cheap(apart), node)


# ------------------------------------------------------------------------------------ on real Ray


@pytest.fixture(scope="module")
def rows(ppo_models):
    """Seven trajectories of varied prompt and response lengths, with random token ids."""
    from rlhf_dist.buffer import rollouts_to_batch
    from rlhf_dist.models import load_tokenizer

    vocab = len(load_tokenizer(ppo_models[0]))
    rng = Random(3)
    out = []
    for p_len, r_len in [(3, 9), (11, 2), (6, 6), (1, 12), (8, 1), (5, 7), (9, 4)]:
        prompt = [rng.randrange(4, vocab) for _ in range(p_len)]
        response = [rng.randrange(4, vocab) for _ in range(r_len)]
        out.append(SimpleNamespace(prompt_ids=prompt, response_ids=response, logprobs=[-1.0] * r_len,
                                   finished_with_eos=False))
    return pa.Table.from_batches([rollouts_to_batch(out, list(range(len(out))), 0, 0)])


def _independent_scores(rm, sft, table):
    """RM score (transformers' sequence classifier) and reference log-probs (transformers' causal LM),
    one unpadded row at a time."""
    import torch
    from transformers import AutoModelForCausalLM

    reward = hf_reward_fn(rm)
    lm = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32).eval()
    scores, logprobs = [], []
    for prompt, response in zip(table.column("prompt_ids").to_pylist(), table.column("response_ids").to_pylist()):
        ids = prompt + response
        scores.append(reward(ids))
        with torch.no_grad():
            logits = lm(torch.tensor([ids])).logits[0].float() / TEMPERATURE
        logp = torch.log_softmax(logits, -1)
        logprobs.append([logp[len(prompt) + t - 1, tok].item() for t, tok in enumerate(response)])
    return scores, logprobs


def _pools(ppo_models, colocated: bool):
    from rlhf_dist.actors.scorers import ReferenceActor, RewardActor, ScorerPool

    sft, rm, _ = ppo_models
    reward_args, reference_args = (rm, 0, 3, "float32"), (sft, 0, TEMPERATURE, 3, "float32")
    if colocated:
        return ScorerPool.colocated(1, 0.5, 0, reward_args, reference_args, max_restarts=2)
    return (ScorerPool(RewardActor, 1, 0.25, 0, *reward_args, max_restarts=2),
            ScorerPool(ReferenceActor, 1, 0.25, 0, *reference_args, max_restarts=2))


def _check(reward, reference, table, expected):
    scores, logprobs = expected
    ref = reference.submit("logprobs", table)  # both in flight at once, as the driver submits them
    got_scores = reward.submit("score", table).result()
    got_logprobs = ref.result().to_pylist()
    assert got_scores.tolist() == pytest.approx(scores, abs=1e-5)
    assert len(got_logprobs) == len(logprobs)
    for got, want in zip(got_logprobs, logprobs):
        assert got == pytest.approx(want, abs=1e-5)


def test_colocated_scores_and_logprobs_equal_an_independent_forward(ray_local, ppo_models, rows):
    sft, rm, _ = ppo_models
    expected = _independent_scores(rm, sft, rows)
    for colocated in (False, True):
        reward, reference = _pools(ppo_models, colocated)
        try:
            _check(reward, reference, rows, expected)
            assert (reward.actors[0] is reference.actors[0]) == colocated
        finally:
            reward.shutdown()
            if not colocated:
                reference.shutdown()


@pytest.mark.slow
def test_a_lost_colocated_actor_is_replaced_once_and_serves_both_roles(ray_local, ppo_models, rows):
    import ray

    sft, rm, _ = ppo_models
    expected = _independent_scores(rm, sft, rows)
    reward, reference = _pools(ppo_models, colocated=True)
    try:
        first = reward.actors[0]
        ray.kill(first, no_restart=True)
        _check(reward, reference, rows, expected)  # the reward's result is read first: it replaces the actor
        assert (reward.restarts.count, reference.restarts.count) == (1, 0)
        second = reward.actors[0]
        assert second is not first and reference.actors[0] is second

        ray.kill(second, no_restart=True)
        ref = reference.submit("logprobs", rows)
        pending = reward.submit("score", rows)
        assert ref.result().to_pylist()[0] == pytest.approx(expected[1][0], abs=1e-5)  # now the reference notices
        assert pending.result().tolist() == pytest.approx(expected[0], abs=1e-5)
        assert (reward.restarts.count, reference.restarts.count) == (1, 1)
        assert reward.actors[0] is reference.actors[0] and reward.actors[0] is not second
    finally:
        reward.shutdown()


def _ppo_run(ppo_models, out, *extra):
    sft, rm, data = ppo_models
    cmd = [sys.executable, "-m", "rlhf_dist.cli", "ppo", "--config", str(REPO / "configs" / "tiny.yaml"), f"out={out}",
           f"sft={sft}", f"reward_model={rm}", f"data={data}", "iterations=2", "prompts_per_iteration=8",
           "ppo.minibatch_size=8", "learner.micro_batch_size=4", "eval_prompts=0", "rollout.max_new_tokens=8",
           "write_trajectories=false", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_ppo_run_gives_the_same_figures_colocated(ppo_models, tmp_path):
    _, apart = _ppo_run(ppo_models, tmp_path / "apart")
    stdout, colocated = _ppo_run(ppo_models, tmp_path / "colocated", "reference.colocate_with_reward=true")
    assert "1 reward + reference actor(s)" in stdout
    assert len(apart) == len(colocated) == 2
    for a, c in zip(apart, colocated):
        for key in ("objective/score", "objective/kl", "loss/policy", "loss/value", "gold/train_mean"):
            assert c[key] == pytest.approx(a[key], abs=1e-6), key
