"""The InstructGPT reward-model ranking loss and pairwise accuracy (Ouyang et al. 2022, eq. 1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def ranks_from_ordering(ordering: Sequence[int], k: int | None = None) -> list[int]:
    """Turn a ranking given as response indices best-first into a rank per response (0 = best).

    ranks_from_ordering([2, 0, 1]) == [1, 2, 0]. With k larger than the ordering (padding slots),
    the extra slots get rank -1 (invalid; mask them out).
    """
    k = len(ordering) if k is None else k
    if k < len(ordering):
        raise ValueError(f"ranking of {len(ordering)} responses does not fit k={k} slots")
    if sorted(ordering) != list(range(len(ordering))):
        raise ValueError(f"ranking {list(ordering)} is not a permutation of 0..{len(ordering) - 1}")
    ranks = [-1] * k
    for position, index in enumerate(ordering):
        ranks[index] = position
    return ranks


def _pair_weights(ranks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, K), (B, K) -> (B, K, K) with 1 where response i is strictly better than j (both valid)."""
    better = ranks.unsqueeze(2) < ranks.unsqueeze(1)
    both = valid.unsqueeze(2) & valid.unsqueeze(1)
    return (better & both).float()


def ranking_loss(
    scores: torch.Tensor, ranks: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over prompts of the mean over strictly ranked pairs of -log sigmoid(r_better - r_worse).

    scores: (B, K) reward of each of a prompt's K responses (each forwarded once);
    ranks: (B, K) rank of each response, lower is better, equal ranks are ties (dropped);
    valid: (B, K) bool, False for padding slots when prompts have different K (default: all).
    -> scalar. For K = 2 this is the pairwise loss -log sigmoid(r_chosen - r_rejected).
    All C(K, 2) comparisons of one prompt stay in one batch element, weighted 1/C(K, 2), as
    InstructGPT section 3.5 prescribes (shuffling pairs as separate examples overfits). Tied
    pairs are dropped and the prompt's mean is over its remaining strict pairs (so 1/C(K, 2)
    exactly when there are no ties). Prompts with no strict pair (all tied) are left out.
    """
    valid = torch.ones_like(ranks, dtype=torch.bool) if valid is None else valid.bool()
    weights = _pair_weights(ranks, valid)
    # Padding slots may hold any score (NaN, inf included). Replace them BEFORE any arithmetic:
    # a where() after logsigmoid fixes the value but not the gradient (logsigmoid's backward at a
    # NaN difference gives 0 * NaN = NaN, which the subtraction sends to every score of the prompt).
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    scores = torch.where(valid, scores, zero)
    diff = scores.unsqueeze(2) - scores.unsqueeze(1)  # [b, i, j] = r_i - r_j
    pair_losses = torch.where(weights > 0, -F.logsigmoid(diff), zero)
    n_pairs = weights.sum(dim=(1, 2))
    has_pairs = n_pairs > 0
    if not has_pairs.any():
        raise ValueError("ranking_loss: no strictly ranked pair in the batch")
    per_prompt = pair_losses.sum(dim=(1, 2))[has_pairs] / n_pairs[has_pairs]
    return per_prompt.mean()


def pairwise_accuracy(
    scores: torch.Tensor, ranks: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Share of strictly ranked pairs (over the whole batch) whose better response scores higher.

    (B, K), (B, K), (B, K) -> scalar; a tie in scores counts one half.
    """
    valid = torch.ones_like(ranks, dtype=torch.bool) if valid is None else valid.bool()
    weights = _pair_weights(ranks, valid)
    # same masking as ranking_loss, so no padding score (NaN, inf) enters the arithmetic
    scores = torch.where(valid, scores, torch.zeros((), dtype=scores.dtype, device=scores.device))
    diff = scores.unsqueeze(2) - scores.unsqueeze(1)
    correct = (diff > 0).float() + 0.5 * (diff == 0).float()
    return (correct * weights).sum() / weights.sum()
