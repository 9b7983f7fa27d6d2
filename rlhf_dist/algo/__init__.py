"""The RLHF math core: small pure-torch functions on padded batches.

Conventions (the numbered PPO details are in docs/ppo-details.md):
- B is the batch size, T the (padded) response length, V the vocabulary size, K responses per prompt.
- `mask` is a (B, T) bool/0-1 tensor, True on response tokens (up to and including EOS) and
  False on padding. Responses are right-padded, so each row's valid tokens are a prefix.
- Everything here imports torch and nothing else from the stack (a test enforces it).
"""

from rlhf_dist.algo.advantages import PPOTargets, RunningMoments, batch_metrics, explained_variance, ppo_targets
from rlhf_dist.algo.estimators import (
    CriticFreeTargets,
    critic_free_targets,
    group_advantages,
    kl_penalty_loss,
    outcome_token_advantages,
    reinforce_pp_advantages,
    returns_to_go,
)
from rlhf_dist.algo.dpo import dpo_loss, sequence_logprobs
from rlhf_dist.algo.gae import gae_advantages
from rlhf_dist.algo.kl import AdaptiveKLController, FixedKLController, kl_estimate, make_kl_controller
from rlhf_dist.algo.logprobs import entropy_from_logits, logprobs_from_logits
from rlhf_dist.algo.losses import aggregate_loss, global_normalizer, lm_loss, policy_loss, value_loss
from rlhf_dist.algo.offpolicy import truncated_is_weights
from rlhf_dist.algo.masked import masked_mean, masked_sum, masked_var, masked_whiten
from rlhf_dist.algo.ranking import pairwise_accuracy, ranking_loss, ranks_from_ordering
from rlhf_dist.algo.schedules import lr_multiplier
from rlhf_dist.algo.rewards import last_token_index, response_mask_after_eos, token_level_rewards
from rlhf_dist.algo.targets import compute_targets

__all__ = [
    "PPOTargets",
    "RunningMoments",
    "batch_metrics",
    "compute_targets",
    "explained_variance",
    "ppo_targets",
    "CriticFreeTargets",
    "critic_free_targets",
    "group_advantages",
    "kl_penalty_loss",
    "outcome_token_advantages",
    "reinforce_pp_advantages",
    "returns_to_go",
    "AdaptiveKLController",
    "FixedKLController",
    "aggregate_loss",
    "dpo_loss",
    "entropy_from_logits",
    "gae_advantages",
    "global_normalizer",
    "kl_estimate",
    "last_token_index",
    "lm_loss",
    "logprobs_from_logits",
    "lr_multiplier",
    "make_kl_controller",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "pairwise_accuracy",
    "policy_loss",
    "ranking_loss",
    "ranks_from_ordering",
    "response_mask_after_eos",
    "sequence_logprobs",
    "token_level_rewards",
    "truncated_is_weights",
    "value_loss",
]
