"""`compute_targets` (rlhf_dist/algo/targets.py), the driver's one call from a scored batch to the
learner's targets, against float64 references written by hand: GAE with the KL in the reward or
in the loss, running score normalisation with clipping, and the group estimator with the KL in
the reward. The references are the loops of tests/test_algo_advantages.py and a per-group loop
here; padded positions hold garbage throughout."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_dist.algo import RunningMoments, compute_targets
from rlhf_dist.config.ppo import PPOAlgoConfig
from tests.test_algo_advantages import TOL, assert_matches, make_batch, poisoned_inputs, reference


def _columns(batch, values: bool = True) -> dict[str, torch.Tensor]:
    x = poisoned_inputs(batch)
    cols = {"score": x["score"], "finished_with_eos": x["has_eos"], "old_logprobs": x["old_logprobs"],
            "ref_logprobs": x["ref_logprobs"]}
    return {**cols, "values": x["values"]} if values else cols


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kl_estimator", ["k1", "k3"])
def test_gae_with_the_kl_in_the_reward(seed, kl_estimator):
    batch = make_batch(seed)
    algo = PPOAlgoConfig(kl_estimator=kl_estimator, gamma=0.99, lam=0.9, missing_eos_penalty=1.0)
    out = compute_targets(algo, _columns(batch), batch["mask"], 0.05, 1, RunningMoments())
    assert_matches(out, reference(batch, 0.05, kl_estimator, 0.99, 0.9, missing_eos_penalty=1.0), batch["mask"])


def test_gae_with_the_kl_in_the_loss_leaves_it_out_of_the_rewards():
    """kl_penalty=loss: the rewards carry the score alone (the learner adds beta * k3 to the loss),
    while the KL estimate is still reported for the controller and the metrics."""
    batch = make_batch(2)
    algo = PPOAlgoConfig(kl_penalty="loss", missing_eos_penalty=None)
    out = compute_targets(algo, _columns(batch), batch["mask"], 0.3, 1, RunningMoments())
    expected = reference(batch, 0.0)
    assert_matches(out, expected, batch["mask"])
    assert float(out.kl_sum.abs().sum()) > 0.1  # the KL is there, just not in the rewards


def test_running_score_normalisation_and_clip_over_two_batches():
    """score_norm=running: each batch's scores are normalised by the mean and population standard
    deviation of every score seen so far (this batch included), then clipped to +-score_clip."""
    first, second = make_batch(3), make_batch(4)
    second["score"] = second["score"] * 5.0 + 3.0  # far from the first batch: the clip bites
    algo = PPOAlgoConfig(score_norm="running", score_clip=1.5, missing_eos_penalty=None)
    stats = RunningMoments()
    compute_targets(algo, _columns(first), first["mask"], 0.02, 1, stats)
    out = compute_targets(algo, _columns(second), second["mask"], 0.02, 1, stats)
    seen = [float(s) for s in first["score"]] + [float(s) for s in second["score"]]
    mean = math.fsum(seen) / len(seen)
    std = math.sqrt(math.fsum((s - mean) ** 2 for s in seen) / len(seen))
    normalised = [min(max((float(s) - mean) / std, -1.5), 1.5) for s in second["score"]]
    assert any(abs(v) == 1.5 for v in normalised) and any(abs(v) < 1.5 for v in normalised)
    assert_matches(out, reference({**second, "score": torch.tensor(normalised, dtype=torch.float64)}, 0.02),
                   second["mask"])


def _grpo_reference(batch, group: int, beta: float, gamma: float, penalty: float) -> torch.Tensor:
    """Per-token GRPO advantages by hand: (s - group mean) / (group sample std + 1e-6) on every
    valid token, plus the reward-to-go of -beta * (log pi_old - log pi_ref) (KL in the reward)."""
    B, T = batch["mask"].shape
    scores = [float(s) - (0.0 if bool(e) else penalty) for s, e in zip(batch["score"], batch["has_eos"])]
    out = torch.zeros(B, T, dtype=torch.float64)
    for g in range(0, B, group):
        members = scores[g:g + group]
        mu = math.fsum(members) / group
        sd = math.sqrt(math.fsum((s - mu) ** 2 for s in members) / (group - 1))
        for b in range(g, g + group):
            n = batch["lengths"][b]
            kl = [float(batch["old"][b, t]) - float(batch["ref"][b, t]) for t in range(n)]
            for t in range(n):
                to_go = sum(-beta * kl[s] * gamma ** (s - t) for s in range(t, n))
                out[b, t] = (scores[b] - mu) / (sd + 1e-6) + to_go
    return out


@pytest.mark.parametrize("seed", [0, 5])
def test_grpo_with_the_kl_in_the_reward(seed):
    batch = make_batch(seed)  # 8 rows: 2 prompts x 4 responses
    algo = PPOAlgoConfig(advantage="grpo", gamma=0.95, missing_eos_penalty=0.5)
    out = compute_targets(algo, _columns(batch, values=False), batch["mask"], 0.1, 4, RunningMoments())
    assert not hasattr(out, "returns")
    expected = _grpo_reference(batch, 4, 0.1, 0.95, 0.5)
    torch.testing.assert_close(out.advantages.double(), expected, rtol=TOL, atol=TOL)
    assert (out.advantages[~batch["mask"]] == 0).all()
