"""Token log-probabilities and entropy from logits, at a sampling temperature, in fp32."""

from __future__ import annotations

import torch


def _scaled_fp32(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for log-probabilities, got {temperature}")
    # Upcast before log-softmax: bf16 log-softmax noise alone makes the PPO ratio != 1
    # (OpenRLHF models/utils.py, PR 718).
    logits = logits.float()
    return logits if temperature == 1.0 else logits / temperature


def logprobs_from_logits(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log pi_T(token) where pi_T = softmax(logits / T). logits: (B, T, V), tokens: (B, T) -> (B, T) fp32.

    The same temperature the rollout engine sampled with must be used for the old, new and
    reference log-probabilities (N+ implementation details, policy detail 1), so that the
    importance ratio compares the behaviour policy with itself. `tokens` may hold any valid id at
    padded positions; mask the result.
    """
    if logits.dtype in (torch.float32, torch.float64):
        z = _scaled_fp32(logits, temperature)
        return z.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)
    # Low-precision logits: upcast one row at a time so we never hold a full fp32 copy.
    rows = []
    for row_logits, row_tokens in zip(logits, tokens):
        z = _scaled_fp32(row_logits, temperature)
        rows.append(z.gather(-1, row_tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1))
    return torch.stack(rows)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / T) per position. logits: (B, T, V) -> (B, T) fp32.

    H = -sum_v p_v log p_v with p = softmax(z), terms with p_v = 0 taken as 0 (so masked-out
    vocabulary entries with logit -inf are fine).
    """
    logp = torch.log_softmax(_scaled_fp32(logits, temperature), dim=-1)
    p = logp.exp()
    # Zero log p where p == 0 *before* the product, so the backward pass never forms 0 * -inf.
    logp = torch.where(p > 0, logp, torch.zeros((), device=logp.device))
    return -(p * logp).sum(-1)
