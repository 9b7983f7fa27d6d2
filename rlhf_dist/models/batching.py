"""Padding prompt/response pairs into one batch, and position ids that ignore padding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only. (B, S) -> (B, S) long: cumsum(mask) - 1, clamped at 0.

    Logits must not depend on how much left padding a row has: the rollout engine sees unpadded
    prompts while the learner sees left-padded ones (N+ / OpenAI adjust position indices).
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class PaddedBatch:
    """Prompts left-padded to P, responses right-padded to T, concatenated: (B, P + T).

    input_ids, attention_mask, position_ids: (B, P + T); response_mask: (B, T) (True on response
    tokens); prompt_len: P. Response token t sits at column P + t and is predicted by column
    P + t - 1.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    response_mask: torch.Tensor
    prompt_len: int

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len :]

    def to(self, device) -> "PaddedBatch":
        return PaddedBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.response_mask.to(device),
            self.prompt_len,
        )


def pad_prompt_response(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int
) -> PaddedBatch:
    """Build a PaddedBatch from token-id lists (prompts non-empty; responses may be empty)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (BOS)")
    B = len(prompts)
    P = max(len(p) for p in prompts)
    T = max((len(r) for r in responses), default=0)
    input_ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, P + T), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        input_ids[i, P - len(p) : P] = torch.as_tensor(p, dtype=torch.long)
        input_ids[i, P : P + len(r)] = torch.as_tensor(r, dtype=torch.long)
        attention_mask[i, P - len(p) : P + len(r)] = 1
    return PaddedBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        response_mask=attention_mask[:, P:].bool(),
        prompt_len=P,
    )
