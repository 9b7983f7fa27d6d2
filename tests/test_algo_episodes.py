"""`compute_targets` on multi-turn episodes (rows whose policy tokens are interrupted by the
environment's observation tokens) against float64 loops written here: GAE and REINFORCE++ recurse
from one policy token to the next across the observations, each turn's environment reward stands
on its turn's last token, observation tokens get exactly 0, and the group estimators compare the
episodes' totals. Observation positions and padding hold garbage throughout."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_dist.algo import RunningMoments, compute_targets
from rlhf_dist.algo.compact import compact, compaction, expand, is_prefix_mask
from rlhf_dist.config.ppo import PPOAlgoConfig

B, T = 6, 14


def episodes(seed: int) -> dict:
    """B rows: a policy turn, an observation, a policy turn (and sometimes a third), then padding;
    step rewards on the last token of some turns."""
    g = torch.Generator().manual_seed(seed)
    response, policy = torch.zeros(B, T, dtype=torch.bool), torch.zeros(B, T, dtype=torch.bool)
    step = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        t, turns = 0, 2 + b % 2
        for k in range(turns):
            n = int(torch.randint(1, 4, (1,), generator=g))
            policy[b, t:t + n] = True
            step[b, t + n - 1] = float(torch.randn(1, generator=g)) if k < turns - 1 else 0.0
            t += n
            if k < turns - 1:
                t += int(torch.randint(1, 3, (1,), generator=g))  # the observation
        response[b, :t] = True
    garbage = lambda: torch.randn(B, T, generator=g, dtype=torch.float64) * 50  # noqa: E731
    return {"score": torch.randn(B, generator=g, dtype=torch.float64),
            "has_eos": torch.tensor([True, False, True, True, False, True]),
            "old": torch.where(policy, -torch.rand(B, T, generator=g, dtype=torch.float64) * 3, garbage()),
            "ref": torch.where(policy, -torch.rand(B, T, generator=g, dtype=torch.float64) * 3, garbage()),
            "values": torch.where(policy, torch.randn(B, T, generator=g, dtype=torch.float64), garbage()),
            "step": torch.where(policy, step, garbage()), "mask": policy, "response": response}


def columns(e: dict) -> dict:
    f = lambda x: x.float()  # noqa: E731
    return {"score": f(e["score"] + (e["step"] * e["mask"]).sum(1)), "finished_with_eos": e["has_eos"],
            "old_logprobs": f(e["old"]), "ref_logprobs": f(e["ref"]), "values": f(e["values"]), "env_rewards": f(e["step"])}


def naive_token_rewards(e: dict, b: int, beta: float, penalty: float) -> tuple[list[int], list[float]]:
    """Row b's policy positions and their rewards: -beta * kl (k1), each step reward where it stands,
    the final score (minus the missing-EOS penalty) on the last policy token."""
    pos = [t for t in range(T) if e["mask"][b, t]]
    rewards = [-beta * (float(e["old"][b, t]) - float(e["ref"][b, t])) + float(e["step"][b, t]) for t in pos]
    rewards[-1] += float(e["score"][b]) - (0.0 if e["has_eos"][b] else penalty)
    return pos, rewards


def test_compaction_round_trip_and_prefix_detection():
    e = episodes(0)
    assert not is_prefix_mask(e["mask"]) and is_prefix_mask(torch.arange(T) < torch.tensor([[3], [0], [T]]))
    index, cmask = compaction(e["mask"])
    x = torch.randn(B, T)
    packed = compact(x, index)
    for b in range(B):
        assert packed[b, : int(cmask[b].sum())].tolist() == x[b][e["mask"][b]].tolist()
    assert torch.equal(expand(packed, index, cmask), torch.where(e["mask"], x, 0.0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_recurses_across_observations(seed):
    e, beta, gamma, lam, penalty = episodes(seed), 0.1, 0.9, 0.8, 1.0
    algo = PPOAlgoConfig(gamma=gamma, lam=lam, missing_eos_penalty=penalty, whiten_advantages=False)
    out = compute_targets(algo, columns(e), e["mask"], beta, 1, RunningMoments())
    for b in range(B):
        pos, rewards = naive_token_rewards(e, b, beta, penalty)
        values = [float(e["values"][b, t]) for t in pos]
        adv, running = [0.0] * len(pos), 0.0
        for j in reversed(range(len(pos))):
            next_value = values[j + 1] if j + 1 < len(pos) else 0.0
            running = rewards[j] + gamma * next_value - values[j] + gamma * lam * running
            adv[j] = running
        for j, t in enumerate(pos):
            assert float(out.advantages[b, t]) == pytest.approx(adv[j], abs=1e-4)
            assert float(out.returns[b, t]) == pytest.approx(adv[j] + values[j], abs=1e-4)
        others = [t for t in range(T) if not e["mask"][b, t]]
        assert all(float(out.advantages[b, t]) == 0.0 and float(out.returns[b, t]) == 0.0 for t in others)
        want_score = float(e["score"][b]) + sum(float(e["step"][b, t]) for t in pos) - (0.0 if e["has_eos"][b] else penalty)
        assert float(out.score[b]) == pytest.approx(want_score, abs=1e-5)


def test_reinforce_pp_returns_to_go_across_observations():
    e, beta = episodes(3), 0.2
    algo = PPOAlgoConfig(advantage="reinforce_pp", missing_eos_penalty=None)
    out = compute_targets(algo, columns(e), e["mask"], beta, 1, RunningMoments())
    togo = {}
    for b in range(B):
        pos, rewards = naive_token_rewards(e, b, beta, 0.0)
        running = 0.0
        for j in reversed(range(len(pos))):
            running += rewards[j]
            togo[(b, pos[j])] = running
    mean = math.fsum(togo.values()) / len(togo)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in togo.values()) / (len(togo) - 1))
    for (b, t), v in togo.items():
        assert float(out.advantages[b, t]) == pytest.approx((v - mean) / (std + 1e-8), abs=1e-3)
    assert float(out.advantages[~e["mask"]].abs().max()) == 0.0


def test_group_estimator_compares_episode_totals_on_policy_tokens_only():
    e = episodes(4)
    algo = PPOAlgoConfig(advantage="rloo", missing_eos_penalty=None, kl_coef=0.0)
    out = compute_targets(algo, columns(e), e["mask"], 0.0, 3, RunningMoments())
    totals = [float(e["score"][b]) + sum(float(e["step"][b, t]) for t in range(T) if e["mask"][b, t]) for b in range(B)]
    for b in range(B):
        g = b // 3 * 3
        others = [totals[i] for i in range(g, g + 3) if i != b]
        want = totals[b] - sum(others) / 2
        assert out.advantages[b][e["mask"][b]].tolist() == pytest.approx([want] * int(e["mask"][b].sum()), abs=1e-5)
        assert float(out.advantages[b][~e["mask"][b]].abs().sum()) == 0.0
