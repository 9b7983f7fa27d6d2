"""From one rollout batch to PPO targets: KL-shaped token rewards, GAE, whitening.

The driver calls `ppo_targets` once per iteration on the whole batch (all ranks' rows), so the
advantage whitening uses the statistics of the full batch (as OpenRLHF does), whatever the
number of learner ranks. `RunningMoments` keeps the reward statistics across iterations for the
optional score normalisation (Secrets of RLHF I, section 5.3.1, "PPO-max").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_dist.algo.gae import gae_advantages
from rlhf_dist.algo.kl import kl_estimate
from rlhf_dist.algo.masked import masked_mean, masked_sum, masked_whiten
from rlhf_dist.algo.rewards import token_level_rewards


@dataclass
class PPOTargets:
    """Everything (B, T) fp32 and 0 at padded positions, except `kl_sum` and `score` (B,)."""

    rewards: torch.Tensor  # -beta * kl_t, plus the score on the last token
    advantages: torch.Tensor  # GAE, whitened over the batch's valid tokens when asked
    returns: torch.Tensor  # value targets: raw (unwhitened) advantages + values
    kl: torch.Tensor  # per-token KL estimate log pi_old - log pi_ref (or k2/k3)
    kl_sum: torch.Tensor  # (B,) per-sequence KL (the "objective/kl" of N+)
    score: torch.Tensor  # (B,) score as used in the rewards (after normalisation/clipping/penalty)


def masked_kl_and_score(score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                        has_eos: torch.Tensor, kl_estimator: str = "k1",
                        missing_eos_penalty: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token KL estimate of the sampling policy against the reference (B, T), 0 at padding, and
    the score (B,) fp32 minus `missing_eos_penalty` where a response has no EOS (ppo-details 19, 23).
    Shared by GAE (`ppo_targets`) and the critic-free estimators."""
    mask = mask.bool()
    kl = torch.where(mask, kl_estimate(logprobs, ref_logprobs, kl_estimator), torch.zeros((), device=mask.device))
    score = score.float()
    if missing_eos_penalty is not None:
        score = torch.where(has_eos.bool(), score, score - missing_eos_penalty)
    return kl, score


def ppo_targets(
    score: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    has_eos: torch.Tensor,
    beta: float,
    kl_estimator: str = "k1",
    gamma: float = 1.0,
    lam: float = 0.95,
    missing_eos_penalty: float | None = None,
    whiten_rewards: bool = False,
    whiten_advantages: bool = True,
    step_rewards: torch.Tensor | None = None,
) -> PPOTargets:
    """score, has_eos: (B,); old_logprobs, ref_logprobs, values, mask: (B, T) -> PPOTargets.

    1. kl_t = estimate(log pi_old(y_t) - log pi_ref(y_t)), computed without gradient at rollout
       time (ppo-details 21, 23);
    2. r_t = -beta * kl_t, plus the score at the last token L; a response without EOS gets
       `score - missing_eos_penalty` (TRL's EOS trick, ppo-details 19);
    3. optional reward whitening that keeps the mean (N+ detail 24; off by default);
    4. GAE with V = 0 after L (ppo-details 27); returns = A + V from the UNwhitened advantages;
    5. advantage whitening over all valid tokens of the batch (ppo-details 28).
    `step_rewards` (B, T), optional: rewards within the response (an environment's per turn),
    added to r_t where they stand; `score` is then what comes at the end, and the returned
    `score` is the whole (score + the row's step rewards).
    """
    mask = mask.bool()
    kl, score = masked_kl_and_score(score, old_logprobs, ref_logprobs, mask, has_eos, kl_estimator, missing_eos_penalty)
    rewards = token_level_rewards(score, kl, mask, beta, step_rewards=step_rewards)
    if step_rewards is not None:
        score = score + masked_sum(step_rewards.float(), mask, dim=1)
    if whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    advantages, returns = gae_advantages(rewards, torch.where(mask, values.float(), 0.0), mask, gamma, lam)
    if whiten_advantages:
        advantages = masked_whiten(advantages, mask, shift_mean=True)
    return PPOTargets(rewards, advantages, returns, kl, masked_sum(kl, mask, dim=1), score)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[returns - values] / Var[returns] over valid tokens (cleanrl's diagnostic); nan if Var[returns] = 0."""
    mask = mask.bool()
    returns, values = returns.double(), values.double()  # fp64: a constant like 0.1 must give Var 0, not 1e-16
    residual = returns - values
    mean_r = masked_mean(returns, mask)
    var_r = masked_mean((returns - mean_r) ** 2, mask)
    var_res = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    if var_r.item() <= 1e-12 * (1.0 + mean_r.item() ** 2):  # constant returns: nothing to explain
        return float("nan")
    return (1.0 - var_res / var_r).item()


class RunningMoments:
    """Mean and standard deviation of every value seen so far (Chan et al. parallel update).

    Used to normalise RM scores with statistics from all past batches, then clip them:
    r <- clip((r - mean) / std, -clip, clip) (Secrets of RLHF I, PPO-max).
    """

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().reshape(-1)
        n = x.numel()
        if n == 0:
            return
        batch_mean = x.mean().item()
        batch_m2 = ((x - batch_mean) ** 2).sum().item()
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        """Population standard deviation (0 before two values were seen)."""
        return (self.m2 / self.count) ** 0.5 if self.count > 1 else 0.0

    def normalize(self, x: torch.Tensor, clip: float | None = None) -> torch.Tensor:
        """(x - mean) / std, then clipped to [-clip, clip]; only centred while std is undefined or 0."""
        out = (x.float() - self.mean) / (self.std if self.std > 0 else 1.0) if self.count > 1 else x.float() - self.mean
        return out if clip is None else out.clamp(-clip, clip)


def batch_metrics(raw_score: torch.Tensor, targets, beta: float, mask: torch.Tensor, has_eos: torch.Tensor,
                  rollout_logprobs: torch.Tensor, old_logprobs: torch.Tensor, values: torch.Tensor | None) -> dict[str, float]:
    """One rollout batch's metrics, with N+'s names (objective/...).

    raw_score, has_eos: (B,) the scorer's output before normalisation, EOS flags; mask,
    rollout_logprobs (the sampler's), old_logprobs (the learner's), values: (B, T) (None without a
    critic). `targets`: `PPOTargets`, or a critic-free estimator's targets (`no_signal_share`: the
    share of prompts whose responses all scored the same, which carry no gradient).
    `rollout/logprob_gap_*` is |log pi_sampler - log pi_learner| over valid tokens: 0 up to
    numerics when both hold the same weights (docs/ppo-details.md item 37).
    """
    mask = mask.bool()
    gap = (rollout_logprobs - old_logprobs).abs()[mask]
    m = {
        "objective/score": raw_score.float().mean().item(),
        "objective/kl": targets.kl_sum.mean().item(),
        "objective/rlhf_reward": (targets.score - beta * targets.kl_sum).mean().item(),
        "objective/beta": beta,
        "rollout/response_len": mask.sum(1).float().mean().item(),
        "rollout/eos_rate": has_eos.float().mean().item(),
        "rollout/logprob_gap_mean": gap.mean().item(),
        "rollout/logprob_gap_max": gap.max().item(),
    }
    if values is not None:
        m["value/explained_variance"] = explained_variance(values, targets.returns, mask)
    if hasattr(targets, "no_signal_share"):
        m["objective/no_signal_share"] = targets.no_signal_share
    return m
