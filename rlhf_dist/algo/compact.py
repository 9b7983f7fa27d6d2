"""Multi-turn episodes: the policy's tokens moved together, so the per-token estimators run on them
as on a single-turn response.

An episode's response interleaves the policy's turns with the environment's observations; only
the policy's tokens are actions. GAE and the rewards-to-go of REINFORCE++ and the KL term recurse
from one action to the NEXT action: V(s_{t+1}) of the last token of a turn is the value at the
first token of the next turn (the observation in between is part of that state, not a step of
its own). Compacting each row's policy tokens to the left (order kept) makes them a right-padded
response that the single-turn functions already handle exactly; the results go back to the
tokens' own positions, 0 on observation tokens and padding.
"""

from __future__ import annotations

import torch


def is_prefix_mask(mask: torch.Tensor) -> bool:
    """True when every row's True entries come first (a single-turn, right-padded layout)."""
    mask = mask.bool()
    return bool((mask == (torch.arange(mask.shape[1], device=mask.device) < mask.sum(1, keepdim=True))).all())


def compaction(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mask: (B, T) -> (index (B, T) long, compact_mask (B, T) bool).

    index[b, j] is the position of row b's j-th True entry for j < n_b (its count), then the
    positions of its False entries; compact_mask[b, j] = j < n_b."""
    mask = mask.bool()
    T = mask.shape[1]
    positions = torch.arange(T, device=mask.device).expand_as(mask)
    index = torch.argsort(torch.where(mask, positions, positions + T), dim=1, stable=True)
    return index, torch.arange(T, device=mask.device) < mask.sum(1, keepdim=True)


def compact(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, T) values at their own positions -> (B, T) with each row's policy tokens first."""
    return x.gather(1, index)


def expand(y: torch.Tensor, index: torch.Tensor, compact_mask: torch.Tensor) -> torch.Tensor:
    """The inverse of `compact` on the policy tokens: (B, T) compacted -> (B, T) at the tokens'
    own positions, 0 wherever the mask was False."""
    out = torch.zeros_like(y)
    return out.scatter_(1, index, torch.where(compact_mask, y, torch.zeros((), dtype=y.dtype, device=y.device)))
