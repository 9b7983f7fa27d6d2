"""From one scored rollout batch to the learner's targets, as the algorithm section of the config
says: the one entry point the PPO driver calls (step 4 of each iteration).

    targets = compute_targets(cfg.ppo, batch, mask, beta, group_size, score_stats)

It decides, in one place, the three choices of `PPOConfig.ppo`:
- score normalisation (`score_norm=running`: running mean/std over every batch so far, then clip;
  Secrets of RLHF I, PPO-max);
- where the KL to the reference enters (`kl_penalty=reward`: -beta * kl_t in the token rewards,
  InstructGPT; `loss`: the advantages ignore it and the learner adds beta * k3 to the loss, GRPO);
- the estimator (`advantage=gae`: KL-shaped rewards -> GAE -> whitening, with the critic's values;
  otherwise a critic-free estimator whose baseline is the prompt's other responses or the batch).
"""

from __future__ import annotations

import torch

from dataclasses import fields, replace

from rlhf_dist.algo.advantages import PPOTargets, RunningMoments, ppo_targets
from rlhf_dist.algo.compact import compact, compaction, expand, is_prefix_mask
from rlhf_dist.algo.estimators import CriticFreeTargets, critic_free_targets

# The padded (B,) and (B, T) columns `compute_targets` reads; `values` only with a critic.
INPUT_COLUMNS = ("score", "finished_with_eos", "old_logprobs", "ref_logprobs")


def compute_targets(algo, batch: dict[str, torch.Tensor], mask: torch.Tensor, beta: float, group_size: int,
                    score_stats: RunningMoments) -> PPOTargets | CriticFreeTargets:
    """The batch's advantages (and, with GAE, returns) under the settings of `algo`.

    algo: the algorithm section (`PPOConfig.ppo`): advantage, kl_penalty, kl_estimator, gamma, lam,
        score_norm, score_clip, missing_eos_penalty, whiten_rewards, whiten_advantages.
    batch: score (B,), finished_with_eos (B,), old_logprobs (B, T), ref_logprobs (B, T), with
        advantage=gae values (B, T), and for multi-turn episodes env_rewards (B, T) (each turn's
        environment reward on its last token; `score` is the episode total, which includes them);
        mask: (B, T), True on the policy's response tokens. Where a row's mask has gaps (an
        episode's observation tokens), the estimators run on the policy's tokens compacted
        (rlhf_dist/algo/compact.py) and every (B, T) target comes back at the tokens' positions.
    beta: the KL coefficient of this iteration (the KL controller's); group_size: responses per
        prompt (consecutive rows), read by the group estimators.
    score_stats: the running score statistics, updated here when score_norm=running.
    """
    if not is_prefix_mask(mask):  # multi-turn episodes: the estimators run on the policy's tokens only
        index, compact_mask = compaction(mask)
        per_token = {k: compact(v, index) if v.dim() == 2 else v for k, v in batch.items()}
        targets = compute_targets(algo, per_token, compact_mask, beta, group_size, score_stats)
        return replace(targets, **{f.name: expand(getattr(targets, f.name), index, compact_mask)
                                   for f in fields(targets) if getattr(getattr(targets, f.name), "ndim", 0) == 2})
    score = batch["score"]
    step_rewards = batch.get("env_rewards")
    if algo.score_norm == "running":
        score_stats.update(score)
        score = score_stats.normalize(score, algo.score_clip)
        step_rewards = None  # the episode's normalised total sits on its last token
    if step_rewards is not None:  # each turn's environment reward on its turn; the rest of the score at the end
        score = score - torch.where(mask, step_rewards, 0.0).sum(1)
    reward_beta = beta if algo.kl_penalty == "reward" else 0.0  # kl_penalty=loss: the learner adds the KL term
    common = dict(score=score, ref_logprobs=batch["ref_logprobs"], mask=mask, has_eos=batch["finished_with_eos"],
                  beta=reward_beta, kl_estimator=algo.kl_estimator, gamma=algo.gamma,
                  missing_eos_penalty=algo.missing_eos_penalty, step_rewards=step_rewards)
    if algo.has_critic:  # advantage=gae
        return ppo_targets(old_logprobs=batch["old_logprobs"], values=batch["values"], lam=algo.lam,
                           whiten_rewards=algo.whiten_rewards, whiten_advantages=algo.whiten_advantages, **common)
    return critic_free_targets(logprobs=batch["old_logprobs"], estimator=algo.advantage, group_size=group_size,
                               kl_in_reward=algo.kl_penalty == "reward", **common)
