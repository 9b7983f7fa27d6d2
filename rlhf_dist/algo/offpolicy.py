"""Correcting for samples drawn with older weights (`rollout.overlap`: the batch of iteration k+1
is sampled with version k while the learner trains on batch k).

Decoupled PPO (Hilton et al. 2022, "Batch size-invariance for policy optimization", section 3):
the clipped surrogate is taken against the proximal policy pi_old (the learner's weights before
the update, recomputed), and each token is weighted by pi_old / pi_behaviour, the policy that
actually sampled it (vLLM's log-probs of the stale weights). The weight is truncated at `cap`
(truncated importance sampling, as verl's `tis_imp_ratio_cap`), trading a little bias for bounded
variance. Rows sampled with the current weights keep weight 1.
"""

from __future__ import annotations

import torch


def truncated_is_weights(
    old_logprobs: torch.Tensor,
    behaviour_logprobs: torch.Tensor,
    mask: torch.Tensor,
    stale: torch.Tensor,
    cap: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """old_logprobs, behaviour_logprobs, mask: (B, T); stale: (B,) bool -> (weights (B, T), stats).

    weights_t = min(exp(old_t - behaviour_t), cap) on the valid tokens of stale rows, 1 on fresh
    rows' tokens, 0 at padding. No gradient (a constant factor of each token's loss).
    stats: `offpolicy/stale_rows` (share of rows), `offpolicy/is_weight_mean` (over stale rows'
    tokens; 1 when none), `offpolicy/capped_share` (share of ALL valid tokens whose weight was capped).
    """
    mask = mask.bool()
    tokens = mask & stale.bool()[:, None]
    zero = torch.zeros((), dtype=torch.float32, device=mask.device)
    log_w = torch.where(tokens, old_logprobs.float() - behaviour_logprobs.float(), zero)  # padding garbage never exponentiated
    raw = torch.exp(log_w)
    capped = tokens & (raw > cap)
    w = torch.where(tokens, raw.clamp(max=cap), torch.where(mask, 1.0, zero)).detach()
    n_valid, n_stale = int(mask.sum()), int(tokens.sum())
    stats = {
        "offpolicy/stale_rows": stale.float().mean().item() if stale.numel() else 0.0,
        "offpolicy/is_weight_mean": w[tokens].mean().item() if n_stale else 1.0,
        "offpolicy/capped_share": capped.sum().item() / n_valid if n_valid else 0.0,
    }
    return w, stats
