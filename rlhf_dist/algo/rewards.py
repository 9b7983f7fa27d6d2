"""Response masks, the last response token, and per-token KL-shaped rewards."""

from __future__ import annotations

import torch


def response_mask_after_eos(
    response_ids: torch.Tensor, eos_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut each response after its first EOS. response_ids: (B, T) -> (ids (B, T), mask (B, T), has_eos (B,)).

    Tokens after the first EOS become `pad_id` and leave the mask; the EOS itself stays in
    (the policy must learn to emit it, and the reward is read there). A row with no EOS keeps
    all its non-pad tokens (it was cut off by the length budget) and has has_eos=False.
    """
    is_eos = response_ids == eos_id
    # Number of EOS tokens strictly before position t; a token is kept if that number is 0.
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    mask = (eos_before == 0) & (response_ids != pad_id)
    ids = torch.where(mask, response_ids, torch.full_like(response_ids, pad_id))
    return ids, mask, is_eos.any(dim=1)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last valid token of each row: the EOS, or the last token of a cut-off response.

    mask: (B, T) -> (B,) long. Every row must have at least one valid token.
    """
    mask = mask.bool()
    if not mask.any(dim=1).all():
        raise ValueError("every response needs at least one valid token (found an empty row)")
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, -1).max(dim=1).values


def token_level_rewards(
    score: torch.Tensor,
    kl: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    has_eos: torch.Tensor | None = None,
    missing_eos_penalty: float | None = None,
    step_rewards: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token RLHF rewards. score: (B,), kl: (B, T), mask: (B, T) -> (B, T) fp32.

    r_t = -beta * kl_t on every response token, plus the sequence score on the last response
    token L (InstructGPT section 3.5; we put the score at L, not at L+1 as TRL/N+ do, and treat
    L as terminal). Positions after L are exactly 0. With `missing_eos_penalty`, rows whose
    `has_eos` is False get score - penalty (TRL's `missing_eos_penalty`): the RM score of a
    truncated response is not trustworthy and the policy would otherwise learn to ramble.
    `kl` must come from the rollout (old) policy and the reference, without gradient.
    `step_rewards` (B, T), optional: rewards given during the response (an environment's reward
    for each turn, on that turn's last token), added where they stand.
    """
    mask = mask.bool()
    rewards = torch.where(mask, -beta * kl.float(), torch.zeros((), device=kl.device))
    if step_rewards is not None:
        rewards = rewards + torch.where(mask, step_rewards.float(), torch.zeros((), device=kl.device))
    score = score.float()
    if missing_eos_penalty is not None:
        if has_eos is None:
            raise ValueError("missing_eos_penalty needs has_eos")
        score = torch.where(has_eos.bool(), score, score - missing_eos_penalty)
    last = last_token_index(mask)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += score
    return rewards
