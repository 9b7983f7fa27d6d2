"""The PPO learner's loss config derived from the algorithm config (rlhf_dist.engines.ppo.PPOLossConfig),
the iteration's learner metrics from hand-built step statistics (learner_metrics), and the rollout
batch's metrics (rlhf_dist.algo.advantages.batch_metrics) on a hand-built padded batch. Expected
values are written out by hand (and, for batch_metrics, also recomputed with plain loops)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from rlhf_dist.algo.advantages import PPOTargets, batch_metrics
from rlhf_dist.config.ppo import PPOAlgoConfig
from rlhf_dist.engines.ppo import PPOLossConfig, learner_metrics

TOL = 1e-5  # fp32


# ----------------------------------------------------------------------------- PPOLossConfig.from_config

ALGO = PPOAlgoConfig(kl_coef=0.05, clip_eps=0.3, clip_eps_high=0.28, value_clip=0.4, vf_coef=0.5, entropy_coef=0.01,
                     epochs=4, minibatch_size=8, ptx_coef=27.8, ptx_ratio=2.0)


def test_loss_config_from_algo_config_with_ptx():
    got = PPOLossConfig.from_config(ALGO, temperature=0.7, ptx=True)
    assert got == PPOLossConfig(temperature=0.7, clip_eps=0.3, clip_eps_high=0.28, value_clip=0.4, vf_coef=0.5,
                                entropy_coef=0.01, ptx_coef=27.8)


def test_loss_config_without_ptx_data_has_no_ptx_term():
    got = PPOLossConfig.from_config(ALGO, temperature=1.3, ptx=False)
    assert got == PPOLossConfig(temperature=1.3, clip_eps=0.3, clip_eps_high=0.28, value_clip=0.4, vf_coef=0.5,
                                entropy_coef=0.01, ptx_coef=0.0)


def test_loss_config_passes_none_clips_through():
    algo = PPOAlgoConfig(clip_eps=0.1, clip_eps_high=None, value_clip=None, vf_coef=2.0, entropy_coef=0.0, ptx_coef=1.5)
    got = PPOLossConfig.from_config(algo, temperature=0.9, ptx=True)
    assert got == PPOLossConfig(temperature=0.9, clip_eps=0.1, clip_eps_high=None, value_clip=None, vf_coef=2.0,
                                entropy_coef=0.0, ptx_coef=1.5)


def test_every_loss_field_but_temperature_is_an_algo_field():
    # the derivation goes by name: a loss field missing from PPOAlgoConfig would silently keep its default
    algo_fields = {f.name for f in dataclasses.fields(PPOAlgoConfig)}
    loss_fields = {f.name for f in dataclasses.fields(PPOLossConfig)}
    # from the rollout config / kl_coef + kl_penalty / advantage / the learner config
    derived = {"temperature", "kl_loss_coef", "critic", "forward_max_tokens"}
    assert loss_fields - algo_fields == derived
    assert loss_fields == derived | {"clip_eps", "clip_eps_high", "value_clip", "vf_coef", "entropy_coef", "ptx_coef"}


@pytest.mark.parametrize("advantage, kl_penalty, critic, kl_loss_coef", [
    ("gae", "reward", True, 0.0), ("gae", "loss", True, 0.07), ("grpo", "loss", False, 0.07), ("rloo", "reward", False, 0.0)])
def test_loss_config_derives_the_kl_term_and_the_critic(advantage, kl_penalty, critic, kl_loss_coef):
    algo = PPOAlgoConfig(advantage=advantage, kl_penalty=kl_penalty, kl_coef=0.07)
    got = PPOLossConfig.from_config(algo, temperature=1.0, ptx=False)
    assert (got.critic, got.kl_loss_coef) == (critic, kl_loss_coef)


@pytest.mark.parametrize("stage, budget, want", [(2, 1536, 1536), (0, 0, 0), (3, 1536, 0)])
def test_loss_config_takes_the_forward_budget_from_the_learner_but_not_under_zero3(stage, budget, want):
    """ZeRO-3 gathers the parameters collectively in every forward: the ranks' forward counts must match."""
    from rlhf_dist.config.learner import LearnerConfig

    learner = LearnerConfig(zero_stage=stage, forward_max_tokens=budget)
    assert PPOLossConfig.from_config(ALGO, temperature=1.0, ptx=False, learner=learner).forward_max_tokens == want
    assert PPOLossConfig.from_config(ALGO, temperature=1.0, ptx=False).forward_max_tokens == 0


# ----------------------------------------------------------------------------- learner_metrics

STEP1 = {"tokens": 10, "pg_loss_sum": 2.0, "vf_loss_sum": 5.0, "approx_kl_sum": 0.1, "clipfrac_sum": 2.0,
         "ratio_sum": 10.5, "ratio_max": 1.2, "entropy_sum": 30.0, "vf_clipfrac_sum": 2.0, "ratio_dev_max": 0.01,
         "policy_lr_max": 1e-5, "critic_lr_max": 2e-5}
STEP2 = {"tokens": 30, "pg_loss_sum": -6.0, "vf_loss_sum": 3.0, "approx_kl_sum": 0.7, "clipfrac_sum": 3.0,
         "ratio_sum": 29.5, "ratio_max": 1.5, "entropy_sum": 50.0, "vf_clipfrac_sum": 6.0, "ratio_dev_max": 0.3,
         "policy_lr_max": 3e-5, "critic_lr_max": 4e-5}
PTX1 = {"ptx_nll_sum": 40.0, "ptx_tokens": 20.0, "policy_grad_norm_max": 0.5, "critic_grad_norm_max": 1.5}
PTX2 = {"ptx_nll_sum": 20.0, "ptx_tokens": 40.0, "policy_grad_norm_max": 1.5, "critic_grad_norm_max": 0.9}

# Token means over both steps (40 tokens), by hand.
EXPECTED = {
    "loss/policy": (2.0 - 6.0) / 40,  # -0.1
    "loss/value": (5.0 + 3.0) / 40,  # 0.2
    "policy/approx_kl": (0.1 + 0.7) / 40,  # 0.02
    "policy/clipfrac": (2.0 + 3.0) / 40,  # 0.125
    "policy/ratio_mean": (10.5 + 29.5) / 40,  # 1.0
    "policy/ratio_max": 1.5,
    "policy/entropy": (30.0 + 50.0) / 40,  # 2.0
    "value/clipfrac": (2.0 + 6.0) / 40,  # 0.2
    "policy/first_minibatch_ratio_dev_max": 0.01,
    "policy/first_minibatch_clipfrac": 2.0 / 10,  # 0.2: the first step only
    "policy/lr": 3e-5,  # the last step's
    "value/lr": 4e-5,
}


def test_learner_metrics_token_means():
    m = learner_metrics([STEP1, STEP2])
    assert set(m) == set(EXPECTED)
    for key, want in EXPECTED.items():
        assert m[key] == pytest.approx(want, rel=1e-12, abs=1e-12), key
    assert m["loss/policy"] == pytest.approx(-0.1, abs=1e-12) and m["policy/clipfrac"] == pytest.approx(0.125, abs=1e-12)


def test_learner_metrics_with_ptx_and_grad_norms():
    m = learner_metrics([{**STEP1, **PTX1}, {**STEP2, **PTX2}])
    assert set(m) == set(EXPECTED) | {"ptx/nll", "policy/grad_norm", "critic/grad_norm"}
    for key, want in EXPECTED.items():
        assert m[key] == pytest.approx(want, rel=1e-12, abs=1e-12), key
    assert m["ptx/nll"] == pytest.approx(60.0 / 60.0, abs=1e-12)  # token mean (the mean of step means would be 1.25)
    assert m["policy/grad_norm"] == pytest.approx((0.5 + 1.5) / 2, abs=1e-12)  # mean over steps
    assert m["critic/grad_norm"] == pytest.approx((1.5 + 0.9) / 2, abs=1e-12)


def test_learner_metrics_single_step():
    m = learner_metrics([STEP2])
    assert m["policy/first_minibatch_clipfrac"] == pytest.approx(0.1) and m["policy/clipfrac"] == pytest.approx(0.1)
    assert m["policy/first_minibatch_ratio_dev_max"] == 0.3 and m["policy/lr"] == 3e-5


# ----------------------------------------------------------------------------- batch_metrics

NAN = float("nan")
MASK = [[1, 1, 1], [1, 1, 0]]  # B=2, T=3: row 1 is padded at t=2 (NaN / garbage there below)
RAW_SCORE = [1.0, -0.5]
HAS_EOS = [True, False]
SCORE = [1.0, -1.5]  # as used in the rewards: row 1 got the missing-EOS penalty 1
KL_TOKENS = [[0.1, 0.1, 0.1], [-0.05, -0.05, 0.0]]
KL_SUM = [0.3, -0.1]
BETA = 0.1
ROLLOUT_LP = [[-0.5, -1.0, -0.2], [-0.3, -2.0, NAN]]
OLD_LP = [[-0.4, -1.3, -0.2], [-0.35, -1.5, 7.0]]
VALUES = [[0.5, 1.0, 1.5], [2.0, 0.0, NAN]]
RETURNS = [[1.0, 1.0, 2.0], [1.0, 1.0, 1e9]]


def naive_batch_metrics():
    valid = [(b, t) for b in range(2) for t in range(3) if MASK[b][t]]
    gaps = [abs(ROLLOUT_LP[b][t] - OLD_LP[b][t]) for b, t in valid]
    rets = [RETURNS[b][t] for b, t in valid]
    res = [RETURNS[b][t] - VALUES[b][t] for b, t in valid]
    mean_r, mean_res = sum(rets) / len(rets), sum(res) / len(res)
    var_r = sum((r - mean_r) ** 2 for r in rets) / len(rets)  # population variance (cleanrl: np.var)
    var_res = sum((r - mean_res) ** 2 for r in res) / len(res)
    return {
        "objective/score": sum(RAW_SCORE) / 2,
        "objective/kl": sum(KL_SUM) / 2,
        "objective/rlhf_reward": sum(s - BETA * k for s, k in zip(SCORE, KL_SUM)) / 2,
        "objective/beta": BETA,
        "rollout/response_len": sum(sum(row) for row in MASK) / 2,
        "rollout/eos_rate": sum(HAS_EOS) / 2,
        "rollout/logprob_gap_mean": sum(gaps) / len(gaps),
        "rollout/logprob_gap_max": max(gaps),
        "value/explained_variance": 1 - var_res / var_r,
    }


BY_HAND = {
    "objective/score": 0.25,
    "objective/kl": 0.1,
    "objective/rlhf_reward": ((1.0 - 0.03) + (-1.5 + 0.01)) / 2,  # -0.26: from the penalised score
    "objective/beta": 0.1,
    "rollout/response_len": 2.5,
    "rollout/eos_rate": 0.5,
    "rollout/logprob_gap_mean": (0.1 + 0.3 + 0.0 + 0.05 + 0.5) / 5,  # 0.19; the padded position is left out
    "rollout/logprob_gap_max": 0.5,
    # returns [1, 1, 2, 1, 1]: mean 1.2, var 0.16; residuals [0.5, 0, 0.5, -1, 1]: mean 0.2, var 0.46
    "value/explained_variance": 1 - 0.46 / 0.16,  # -1.875
}


def test_batch_metrics_against_hand_values_and_naive_loops():
    def t(x):
        return torch.tensor(x, dtype=torch.float32)

    zeros = torch.zeros(2, 3)
    targets = PPOTargets(rewards=zeros, advantages=zeros, returns=t(RETURNS), kl=t(KL_TOKENS), kl_sum=t(KL_SUM),
                         score=t(SCORE))
    got = batch_metrics(t(RAW_SCORE), targets, BETA, torch.tensor(MASK, dtype=torch.bool), torch.tensor(HAS_EOS),
                        t(ROLLOUT_LP), t(OLD_LP), t(VALUES))
    naive = naive_batch_metrics()
    assert set(got) == set(BY_HAND) == set(naive)
    for key, want in BY_HAND.items():
        assert math.isfinite(got[key]), key
        assert abs(got[key] - want) <= TOL, (key, got[key], want)
        assert abs(got[key] - naive[key]) <= TOL, (key, got[key], naive[key])
