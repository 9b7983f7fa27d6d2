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


# Tokens per chunk: bounds the fp32 temporaries of log-softmax to chunk x V floats (with V = 128k,
# 1024 tokens = 512 MiB) instead of a full (B, T, V) copy; also faster on CPU than one big call
# (benchmarks/bench_algo.py).
CHUNK_TOKENS = 1024


def logprobs_from_logits(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log pi_T(token) where pi_T = softmax(logits / T). logits: (B, T, V), tokens: (B, T) -> (B, T) fp32.

    The same temperature the rollout engine sampled with must be used for the old, new and
    reference log-probabilities (N+ implementation details, policy detail 1), so that the
    importance ratio compares the behaviour policy with itself. `tokens` may hold any valid id at
    padded positions; mask the result. Computed in fp32 chunks of CHUNK_TOKENS positions.
    """
    V = logits.shape[-1]
    flat_logits, flat_tokens = logits.reshape(-1, V), tokens.reshape(-1)
    chunks = []
    for start in range(0, flat_logits.shape[0], CHUNK_TOKENS):
        z = _scaled_fp32(flat_logits[start : start + CHUNK_TOKENS], temperature)
        picked = z.gather(-1, flat_tokens[start : start + CHUNK_TOKENS].unsqueeze(-1)).squeeze(-1)
        chunks.append(picked - torch.logsumexp(z, dim=-1))
    if not chunks:
        return torch.zeros(tokens.shape, dtype=torch.float32, device=logits.device)
    return torch.cat(chunks).reshape(tokens.shape)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / T) per position. logits: (B, T, V) -> (B, T) fp32.

    H = -sum_v p_v log p_v with p = softmax(z), terms with p_v = 0 taken as 0 (so masked-out
    vocabulary entries with logit -inf are fine). Computed in fp32 chunks of CHUNK_TOKENS positions.
    """
    V = logits.shape[-1]
    flat = logits.reshape(-1, V)
    chunks = []
    for start in range(0, flat.shape[0], CHUNK_TOKENS):
        logp = torch.log_softmax(_scaled_fp32(flat[start : start + CHUNK_TOKENS], temperature), dim=-1)
        p = logp.exp()
        # Zero log p where p == 0 *before* the product, so the backward pass never forms 0 * -inf.
        logp = torch.where(p > 0, logp, torch.zeros((), device=logp.device))
        chunks.append(-(p * logp).sum(-1))
    if not chunks:
        return torch.zeros(logits.shape[:-1], dtype=torch.float32, device=logits.device)
    return torch.cat(chunks).reshape(logits.shape[:-1])
