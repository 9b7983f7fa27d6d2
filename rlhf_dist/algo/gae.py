"""Generalised advantage estimation (Schulman et al. 2015, arXiv 1506.02438) on padded responses."""

from __future__ import annotations

import torch


def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over right-padded responses. rewards, values, mask: (B, T) -> (advantages, returns), each (B, T) fp32.

    delta_t = r_t + gamma * V_{t+1} - V_t, with V = 0 after the last response token L (the
    episode ends at L: the score sits on L and there is no bootstrap past it);
    A_t = delta_t + gamma * lam * A_{t+1}; returns = A + V (the TD(lambda) value target).
    Whatever `rewards` and `values` hold at padded positions is ignored; the outputs are 0 there.
    InstructGPT uses gamma = 1 ("no discount", App. C.4); N+ and Secrets-I use lam = 0.95.
    """
    mask = mask.bool()
    zero = torch.zeros((), dtype=torch.float32, device=rewards.device)
    rewards = torch.where(mask, rewards.float(), zero)
    values = torch.where(mask, values.float(), zero)
    T = rewards.shape[1]
    # All TD errors at once (V_{T} = 0 and V = 0 past L), then the one sequential recursion:
    # a single multiply-add per step keeps the Python loop cheap (benchmarks/bench_algo.py).
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = rewards + gamma * next_values - values
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_advantage = deltas[:, t] + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
    # A padded tail contributes zeros to delta, so valid positions are exact; zero the padding.
    advantages = torch.where(mask, advantages, zero)
    return advantages, torch.where(mask, advantages + values, zero)
