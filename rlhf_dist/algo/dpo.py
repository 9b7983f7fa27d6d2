"""Direct Preference Optimization (Rafailov et al. 2023, "Direct Preference Optimization: Your
Language Model is Secretly a Reward Model", arXiv 2305.18290), on the reward model's K-way layout.

The implicit reward of a response is r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x)) (section 5,
eq. 5 with the partition function cancelling in every pair), and the DPO loss of a pair is
-log sigmoid(r(x, y_w) - r(x, y_l)) (eq. 7). A K-way ranking enters as all its C(K, 2) pairs inside
one batch element, weighted 1/C(K, 2), exactly as the reward model's ranking loss does
(InstructGPT section 3.5; the Plackett-Luce form of DPO, section 5 and appendix A.3, would be the
alternative): so `dpo_loss` is `ranking_loss` applied to implicit rewards.
"""

from __future__ import annotations

import torch

from rlhf_dist.algo.ranking import _pair_weights, pairwise_accuracy, ranking_loss


def sequence_logprobs(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log pi(y|x) of each response: the sum of its token log-probs. (N, T), (N, T) -> (N,).

    logprobs: (N, T) log-prob of each response token (temperature 1 for DPO: the implicit reward is
    defined by the policy itself, not by a sampling distribution); mask: (N, T) bool/0-1, True on
    response tokens up to and including EOS. Padded positions may hold anything (NaN, inf): they
    are replaced before the sum, so neither the value nor the gradient sees them.
    """
    mask = mask.bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    return torch.where(mask, logprobs, zero).sum(dim=-1)


def dpo_loss(
    policy_seq_logps: torch.Tensor,
    ref_seq_logps: torch.Tensor,
    index: torch.Tensor,
    ranks: torch.Tensor,
    valid: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The DPO loss of a batch of ranked prompts. -> (scalar loss, stats).

    policy_seq_logps: (N,) log pi(y|x) of every response row (`sequence_logprobs`), with grad;
    ref_seq_logps: (N,) log pi_ref(y|x) of the same rows (frozen, no grad needed);
    index: (B, Kmax) long, the row of each of a prompt's response slots (any row in padding slots);
    ranks: (B, Kmax) long, 0 = best, equal ranks are ties; valid: (B, Kmax) bool, False in padding;
    beta: > 0, the KL strength of the implicit reward (eq. 7).

    loss: mean over prompts of the mean over the prompt's strictly ranked pairs of
    -log sigmoid(r_better - r_worse), r = beta * (policy - ref). Tied pairs are dropped and
    prompts with no strict pair (K = 1, or all tied) are left out of the mean, as in
    `ranking_loss` (which raises when no prompt has a strict pair).
    stats (detached): rewards (B, Kmax) implicit rewards (0 in padding slots); prompts (prompts in
    the mean); pairs (strict pairs); accuracy (share of strict pairs whose better response has the
    higher implicit reward, a tie counting one half); margin (mean over strict pairs of
    r_better - r_worse).
    """
    if not beta > 0:
        raise ValueError(f"dpo_loss: beta must be > 0, got {beta}")
    if policy_seq_logps.shape != ref_seq_logps.shape or policy_seq_logps.dim() != 1:
        raise ValueError(f"dpo_loss: policy {tuple(policy_seq_logps.shape)} and reference {tuple(ref_seq_logps.shape)} "
                         "log-probs must both be (N,)")
    valid = valid.bool()
    rewards = beta * (policy_seq_logps - ref_seq_logps.to(policy_seq_logps.dtype))
    scores = rewards[index]  # (B, Kmax)
    loss = ranking_loss(scores, ranks, valid)
    with torch.no_grad():
        zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
        clean = torch.where(valid, scores.detach(), zero)
        weights = _pair_weights(ranks, valid)
        pairs = weights.sum()
        diff = clean.unsqueeze(2) - clean.unsqueeze(1)  # [b, i, j] = r_i - r_j
        stats = {
            "rewards": clean,
            "prompts": (weights.sum(dim=(1, 2)) > 0).sum().to(scores.dtype),
            "pairs": pairs,
            "accuracy": pairwise_accuracy(clean, ranks, valid),
            "margin": torch.where(weights > 0, diff, zero).sum() / pairs,
        }
    return loss, stats
