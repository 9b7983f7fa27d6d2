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


def length_groups(prompt_lens: torch.Tensor, response_lens: torch.Tensor, max_tokens: int,
                  max_rows: int | None = None) -> list[torch.Tensor]:
    """Rows sorted by length and cut into forward groups, so that a forward pass computes little padding.

    prompt_lens, response_lens: (B,) long. A group is padded to its own longest prompt + longest
    response; rows are added in order of total length while rows x that padded length stays within
    `max_tokens` (and the rows within `max_rows`); a row longer than the budget is a group of its
    own. `max_tokens` 0 = no token budget. -> row-index tensors (long) that together hold every row
    once (the same budget idea as verl's dynamic batch size and OpenRLHF's sample packing, with
    padding instead of varlen attention, which CPU attention does not offer).
    """
    order = torch.argsort(prompt_lens + response_lens, stable=True).tolist()
    p, r = prompt_lens.tolist(), response_lens.tolist()
    groups, current, longest_p, longest_r = [], [], 0, 0
    for i in order:
        lp, lr = max(longest_p, p[i]), max(longest_r, r[i])
        full = (max_tokens and (len(current) + 1) * (lp + lr) > max_tokens) or (max_rows and len(current) == max_rows)
        if current and full:
            groups.append(current)
            current, lp, lr = [], p[i], r[i]
        current.append(i)
        longest_p, longest_r = lp, lr
    if current:
        groups.append(current)
    return [torch.tensor(g, dtype=torch.long) for g in groups]


def select_rows(batch, rows: torch.Tensor) -> PaddedBatch:
    """The rows `rows` of a PaddedBatch-shaped batch (PaddedBatch or TrajectoryTensors), padded to their
    own longest prompt P' and response T' only. -> PaddedBatch (b, P' + T').

    Left-padded prompts and right-padded responses mean the dropped columns are padding in every
    kept row, so the position ids (counted over real tokens) and the logits do not change.
    """
    P = batch.prompt_len
    prompt_lens = batch.attention_mask[rows, :P].sum(1)
    response_mask = batch.response_mask[rows]
    Pg, Tg = int(prompt_lens.max()), int(response_mask.sum(1).max())
    cols = slice(P - Pg, P + Tg)
    return PaddedBatch(batch.input_ids[rows, cols], batch.attention_mask[rows, cols], batch.position_ids[rows, cols],
                       response_mask[:, :Tg], Pg)
