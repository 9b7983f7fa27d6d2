"""Critic-free advantage estimators: GRPO, Dr. GRPO, RLOO and REINFORCE++.

Instead of a learned value function, these estimators take their baseline from other samples:
the other responses to the same prompt (group estimators) or the whole batch (REINFORCE++).
Group layout: with group size G, rows [g*G, (g+1)*G) are the G responses to prompt g, so the
batch size B must be a multiple of G.

The KL to the reference policy enters in one of two places:
- in the reward (`kl_in_reward=True`): each token gets the reward-to-go of -beta * kl_t added to
  its advantage, as OpenRLHF does for RLOO/GRPO with KL in the reward;
- as a loss term (`kl_in_reward=False`, GRPO's choice, Shao et al. 2024 eq. 4): the advantages
  ignore it and the learner adds beta * `kl_penalty_loss` to the policy loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_dist.algo.advantages import masked_kl_and_score
from rlhf_dist.algo.masked import masked_sum, masked_whiten
from rlhf_dist.algo.rewards import token_level_rewards

GROUP_METHODS = ("grpo", "grpo_mean", "rloo")
ESTIMATORS = GROUP_METHODS + ("reinforce_pp",)


def _grouped(score: torch.Tensor, group_size: int) -> torch.Tensor:
    """score: (B,) -> (B // G, G) fp64 (B numbers: the group statistics cost nothing in fp64, and
    scores a few fp32 units apart keep their differences); ValueError unless G >= 1 divides B."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if score.shape[0] % group_size != 0:
        raise ValueError(
            f"batch size {score.shape[0]} is not divisible by group_size {group_size}: "
            "every prompt needs exactly group_size consecutive responses"
        )
    return score.double().reshape(-1, group_size)


def group_advantages(
    score: torch.Tensor, group_size: int, method: str, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-response advantages from a group baseline. score: (B,) -> (adv (B,) fp32, no_signal (B // G,) bool).

    method="grpo":      (r_i - mean_g) / (std_g + eps), std_g the unbiased sample standard
                        deviation (Bessel's correction, torch.std's default, as TRL and verl use;
                        DeepSeekMath GRPO, Shao et al. 2024, section 4.1.2).
    method="grpo_mean": r_i - mean_g, no division by the std (Dr. GRPO, Liu et al. 2025,
                        "Understanding R1-Zero-Like Training": the std division re-weights prompts
                        by their difficulty).
    method="rloo":      r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean_g) (leave-one-out
                        baseline, Ahmadian et al. 2024, "Back to Basics").
    A group whose scores are all exactly equal gets advantage exactly 0 on every row and is
    flagged in `no_signal`: its responses are indistinguishable, so there is nothing to learn
    from it (and the std division would amplify round-off). A group of one response (G = 1) has
    no baseline from other samples, so it carries no signal either: all-zero advantages, flagged.
    """
    if method not in GROUP_METHODS:
        raise ValueError(f"unknown group advantage method {method!r}; expected one of {GROUP_METHODS}")
    grouped = _grouped(score, group_size)
    no_signal = (grouped == grouped[:, :1]).all(dim=1)  # always True when G == 1
    if group_size == 1:
        return torch.zeros_like(grouped).reshape(-1).float(), no_signal
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if method == "grpo":
        adv = centred / (grouped.std(dim=1, keepdim=True) + eps)
    elif method == "grpo_mean":
        adv = centred
    else:
        adv = centred * (group_size / (group_size - 1))
    adv = torch.where(no_signal.unsqueeze(1), torch.zeros((), dtype=adv.dtype, device=adv.device), adv)
    return adv.reshape(-1).float(), no_signal


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Discounted reward-to-go. rewards, mask: (B, T) -> (B, T) fp32.

    G_t = sum_{s >= t, s valid} gamma^(s - t) r_s; whatever `rewards` holds at padded positions
    is ignored and the output is 0 there.
    """
    mask = mask.bool()
    zero = torch.zeros((), dtype=torch.float32, device=rewards.device)
    rewards = torch.where(mask, rewards.float(), zero)
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    # Right padding: the zeroed tail adds nothing, so one reverse sweep is exact on valid tokens.
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        out[:, t] = running
    return torch.where(mask, out, zero)


def reinforce_pp_advantages(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """REINFORCE++ advantages (Hu 2025, arXiv 2501.03262). token_rewards, mask: (B, T) -> (B, T) fp32.

    The reward-to-go of the token rewards (score on the last token, -beta * kl_t on every token),
    whitened with the mean and unbiased variance of all valid tokens of the whole batch: the
    batch-level normalisation is the baseline that replaces the critic. 0 at padded positions.
    The batch needs at least two valid tokens. A batch whose returns are all exactly equal has
    nothing to learn: exactly 0 (as the group estimators give an all-equal group), not the
    round-off of the mean divided by a zero std.
    """
    returns = returns_to_go(token_rewards, mask, gamma)
    valid = returns[mask.bool()]
    if valid.numel() and bool((valid == valid[0]).all()):
        return torch.zeros_like(returns)
    return masked_whiten(returns, mask, shift_mean=True)


def outcome_token_advantages(
    seq_adv: torch.Tensor,
    mask: torch.Tensor,
    kl: torch.Tensor | None = None,
    beta: float = 0.0,
    gamma: float = 1.0,
) -> torch.Tensor:
    """Broadcast sequence advantages to tokens. seq_adv: (B,), mask: (B, T), kl: (B, T) or None -> (B, T) fp32.

    A_t = seq_adv on every valid token, plus, when `kl` is given and beta > 0, the reward-to-go
    of -beta * kl_t (KL in the reward for group estimators, as OpenRLHF does for RLOO/GRPO).
    0 at padded positions, whatever `kl` holds there.
    """
    mask = mask.bool()
    zero = torch.zeros((), dtype=torch.float32, device=mask.device)
    adv = torch.where(mask, seq_adv.float().unsqueeze(1), zero)
    if kl is not None and beta > 0:
        adv = adv + returns_to_go(-beta * kl.float(), mask, gamma)  # ignores the padded kl
    return adv


def kl_penalty_loss(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) as a loss. logp, ref_logp, mask: (B, T) -> (B, T) fp32.

    k3 = exp(ref - logp) - (ref - logp) - 1 (Schulman, "Approximating KL Divergence"; GRPO's KL
    term, Shao et al. 2024 eq. 4), differentiable through `logp`: d k3 / d logp = 1 - exp(ref - logp).
    Padded positions are replaced before the exp, so garbage there (NaN, inf) reaches neither the
    values nor the gradients; the output is exactly 0 there.
    """
    mask = mask.bool()
    zero = torch.zeros((), dtype=torch.float32, device=logp.device)
    log_r = torch.where(mask, ref_logp.float() - logp.float(), zero)
    # expm1 keeps precision when the policies are close (r - 1 ~ 0).
    return torch.where(mask, torch.expm1(log_r) - log_r, zero)


@dataclass
class CriticFreeTargets:
    """(B, T) fp32 fields are 0 at padded positions; `kl_sum` and `score` are (B,)."""

    advantages: torch.Tensor  # (B, T) per-token advantages
    kl: torch.Tensor  # (B, T) per-token KL estimate log pi_old - log pi_ref (or k2/k3)
    kl_sum: torch.Tensor  # (B,) per-sequence KL
    score: torch.Tensor  # (B,) score after the missing-EOS penalty
    no_signal_share: float  # share of groups whose scores were all equal (0.0 for reinforce_pp)


def critic_free_targets(
    score: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    has_eos: torch.Tensor,
    estimator: str,
    group_size: int,
    beta: float,
    kl_in_reward: bool = True,
    kl_estimator: str = "k1",
    gamma: float = 1.0,
    missing_eos_penalty: float | None = None,
    eps: float = 1e-6,
    step_rewards: torch.Tensor | None = None,
) -> CriticFreeTargets:
    """score, has_eos: (B,); logprobs, ref_logprobs, mask: (B, T) -> CriticFreeTargets.

    1. kl_t = estimate(log pi_old(y_t) - log pi_ref(y_t)), 0 at padding (as in `ppo_targets`);
    2. a response without EOS gets `score - missing_eos_penalty` (TRL's EOS trick);
    3. estimator "grpo" / "grpo_mean" / "rloo": sequence advantages from `group_advantages`
       (rows grouped by `group_size`), broadcast over tokens, plus the reward-to-go of
       -beta * kl_t when `kl_in_reward`;
       estimator "reinforce_pp": token rewards (-beta * kl_t when `kl_in_reward`, the score on
       the last valid token) -> `reinforce_pp_advantages`; `group_size` is not used.
    With kl_in_reward=False the advantages ignore the KL; add beta * `kl_penalty_loss` to the loss.
    `step_rewards` (B, T), optional: rewards within the response (an environment's per turn);
    reinforce_pp adds them where they stand, the group estimators compare the totals
    score + sum(step_rewards) of the row, which the returned `score` holds.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown critic-free estimator {estimator!r}; expected one of {ESTIMATORS}")
    mask = mask.bool()
    kl, score = masked_kl_and_score(score, logprobs, ref_logprobs, mask, has_eos, kl_estimator, missing_eos_penalty)
    final = score
    if step_rewards is not None:
        score = score + masked_sum(step_rewards.float(), mask, dim=1)
    if estimator == "reinforce_pp":
        token_rewards = token_level_rewards(final, kl if kl_in_reward else torch.zeros_like(kl), mask, beta,
                                            step_rewards=step_rewards)
        advantages = reinforce_pp_advantages(token_rewards, mask, gamma)
        no_signal_share = 0.0
    else:
        seq_adv, no_signal = group_advantages(score, group_size, estimator, eps)
        advantages = outcome_token_advantages(seq_adv, mask, kl if kl_in_reward else None, beta, gamma)
        no_signal_share = no_signal.float().mean().item()
    return CriticFreeTargets(advantages, kl, masked_sum(kl, mask, dim=1), score, no_signal_share)
