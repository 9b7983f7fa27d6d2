"""PPO losses and their aggregation over tokens, micro-batches and data-parallel ranks.

Every loss here returns per-token values (B, T) plus statistics; `aggregate_loss` turns them
into the scalar to back-propagate. Why the split: a mean per micro-batch over-weights short
sequences and changes with the gradient-accumulation split (OpenRLHF `aggregate_loss`, verl
`agg_loss`); the correct token mean divides by the token count of the whole minibatch.
"""

from __future__ import annotations

import torch

from rlhf_dist.algo.logprobs import logprobs_from_logits
from rlhf_dist.algo.masked import masked_mean, masked_sum

AGGREGATIONS = ("token_mean", "seq_mean_token_mean")


def aggregate_loss(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token_mean",
    normalizer: float | None = None,
) -> torch.Tensor:
    """Reduce per-token losses to a scalar. loss, mask: (B, T) -> scalar.

    mode="token_mean": sum over valid tokens / normalizer, normalizer = number of valid tokens
      (default: this batch's).
    mode="seq_mean_token_mean": each sequence's mean over its tokens, summed / normalizer,
      normalizer = number of sequences (default: this batch's). A row with no valid token
      (padding rows that keep ranks in step) contributes 0.

    Across micro-batches and ranks pass the GLOBAL count (tokens or sequences of the whole
    minibatch, over all ranks) divided by the factor the engine averages gradients with: data
    parallel all-reduce divides by dp_size, and DeepSpeed's `engine.backward` also divides by the
    gradient-accumulation steps. See `global_normalizer`. Then the summed gradient equals the
    gradient of the full-minibatch mean exactly.
    """
    if mode == "token_mean":
        total = masked_sum(loss, mask)
        default = mask.sum()
    elif mode == "seq_mean_token_mean":
        per_row = masked_sum(loss, mask, dim=1) / mask.sum(1).clamp(min=1).to(loss.dtype)
        total = per_row.sum()
        default = mask.shape[0]
    else:
        raise ValueError(f"unknown loss aggregation {mode!r}; expected one of {AGGREGATIONS}")
    return total / (default if normalizer is None else normalizer)


def global_normalizer(global_count: float, dp_size: int = 1, engine_grad_divisor: int = 1) -> float:
    """Normaliser for `aggregate_loss` on one micro-batch of a data-parallel, accumulated minibatch.

    global_count: valid tokens (or sequences) in the whole minibatch across all ranks.
    dp_size: ranks whose gradients are AVERAGED by all-reduce.
    engine_grad_divisor: any extra factor the engine divides the loss by (DeepSpeed: the number
      of gradient-accumulation steps).
    """
    return global_count / (dp_size * engine_grad_divisor)


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate per token. (B, T) x 4 -> (loss (B, T), stats).

    loss_t = max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps, 1 + eps_high)), rho = exp(logp - old_logp)
    (Schulman et al. 2017, eq. 7; eps_high defaults to eps). Stats over valid tokens:
    clipfrac (share of tokens where the clipped branch is taken, TRL's definition; cleanrl counts
    |ratio - 1| > eps instead), approx_kl (k3 estimate of KL(old || new), cleanrl's name),
    ratio_mean, ratio_max. Padded positions are zeroed before the loss, so garbage there (NaN,
    huge numbers) cannot reach the gradient.
    """
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    mask = mask.bool()
    zero = torch.zeros((), device=logp.device)
    log_ratio = torch.where(mask, logp.float() - old_logp.float(), zero)
    advantages = torch.where(mask, advantages.float(), zero)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": torch.where(mask.bool(), ratio, 0.0).max(),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float | None = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss per token. (B, T) x 4 -> (loss (B, T), stats).

    loss_t = 0.5 * max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2) (N+ / Secrets-I;
    InstructGPT does not say). clip_eps=None gives the plain 0.5 * (V - R)^2.
    Stats: vf_clipfrac (share of tokens where the clip bound, |V - V_old| > eps strictly, and the
    clipped branch is the larger, so the token gets no gradient). Padded positions are zeroed
    first, so garbage there cannot reach the gradient.
    """
    mask = mask.bool()
    zero = torch.zeros((), device=values.device)
    values = torch.where(mask, values.float(), zero)
    old_values = torch.where(mask, old_values.float(), zero)
    returns = torch.where(mask, returns.float(), zero)
    unclipped = (values - returns) ** 2
    if clip_eps is None:
        loss = 0.5 * unclipped
        return loss, {"vf_clipfrac": torch.zeros((), device=values.device)}
    delta = values - old_values
    clipped_values = old_values + torch.clamp(delta, -clip_eps, clip_eps)
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * torch.maximum(unclipped, clipped)
    with torch.no_grad():
        # The clip bound only where |V - V_old| > eps (read from the difference): inside the range
        # V_old + (V - V_old) may round 1 ulp away from V, and `clipped > unclipped` alone counted that.
        bound = (delta.abs() > clip_eps) & (clipped > unclipped)
        stats = {"vf_clipfrac": masked_mean(bound.float(), mask)}
    return loss, stats


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood for the SFT and ptx losses. logits: (B, T, V) -> (B, T) fp32.

    `logits[:, t]` must be the prediction for `labels[:, t]` (already shifted). PAD positions
    are masked out (0), so they never enter the loss, and may hold any label (HF's -100
    included); aggregate with `aggregate_loss`. The PPO-ptx objective adds gamma * this to the
    PPO loss (InstructGPT eq. 2, gamma = 27.8).
    """
    labels = torch.where(mask.bool(), labels, torch.zeros((), dtype=labels.dtype, device=labels.device))
    nll = -logprobs_from_logits(logits, labels, temperature=1.0)
    return torch.where(mask.bool(), nll, torch.zeros((), device=nll.device))
