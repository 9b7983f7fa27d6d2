"""What a learner rank computes on one micro-batch, for each training stage.

An objective bundles: how to collate tokenised items into tensors, how many units (tokens or
prompts) the loss averages over, and the loss itself. The loss is normalised by the GLOBAL unit
count of the optimizer step, so summing micro-batch gradients over accumulation steps and ranks
gives exactly the gradient of the full-batch mean (ppo-details item 32).

Each loss returns (loss to back-propagate, sums for metrics): sums are additive over
micro-batches and ranks, so the driver reports exact means whatever the split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from rlhf_dist.algo import lm_loss, masked_sum, pairwise_accuracy, ranking_loss
from rlhf_dist.algo.dpo import dpo_loss, sequence_logprobs
from rlhf_dist.data.collate import (
    collate_comparisons,
    collate_sft,
    lm_token_count,
    pack_lm,
    ranked_prompt_count,
    sft_token_count,
)
from rlhf_dist.data.encode import TokenizedComparison
from rlhf_dist.models.batching import PaddedBatch
from rlhf_dist.models.forward import response_logits, response_logprobs
from rlhf_dist.models.scalar import reward_from_values


@dataclass(frozen=True)
class Objective:
    collate: Callable  # (items, pad_id) -> batch
    count: Callable  # (items) -> float: loss units in these items
    loss: Callable  # (model, batch, normalizer) -> (loss, {name: sum})
    model_kind: str  # "causal_lm" or "scalar"
    length: Callable  # (item) -> int: the padded length the item forces on its micro-batch


def _to(batch, device):
    if hasattr(batch, "to") and not isinstance(batch, dict):
        return batch.to(device)
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def lm_objective_loss(model, batch: dict, normalizer: float):
    """Next-token NLL over all real tokens (pretraining, and the ptx term of PPO-ptx). `batch` comes
    from `pack_lm` (padding-free rows, attention_mask None) or `collate_lm` (padded rows)."""
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"], use_cache=False,
    ).logits
    nll = lm_loss(logits, batch["labels"], batch["loss_mask"])
    nll_sum = masked_sum(nll, batch["loss_mask"])
    return nll_sum / normalizer, {"nll_sum": nll_sum.item(), "tokens": float(batch["loss_mask"].sum())}


def sft_objective_loss(model, batch, normalizer: float):
    """NLL of the response tokens only (EOS included); prompt tokens carry no loss."""
    logits = response_logits(model, batch)
    nll = lm_loss(logits, batch.response_ids, batch.response_mask)
    nll_sum = masked_sum(nll, batch.response_mask)
    return nll_sum / normalizer, {"nll_sum": nll_sum.item(), "tokens": float(batch.response_mask.sum())}


def rm_objective_loss(model, batch: dict, normalizer: float):
    """InstructGPT's ranking loss: every response forwarded once, all C(K,2) pairs of a prompt together."""
    # Call forward (the per-token values), not .reward(): under ZeRO-3 the DeepSpeed engine must
    # run the forward pass itself.
    values = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    rewards = reward_from_values(values, batch["attention_mask"])
    scores = rewards[batch["index"]]  # (B, Kmax)
    prompts = float(ranked_prompt_count(batch))
    loss_mean = ranking_loss(scores, batch["ranks"], batch["valid"])
    with torch.no_grad():
        weights = (batch["ranks"].unsqueeze(2) < batch["ranks"].unsqueeze(1)) & batch["valid"].unsqueeze(2) & batch["valid"].unsqueeze(1)
        pairs = float(weights.sum())
        accuracy = pairwise_accuracy(scores, batch["ranks"], batch["valid"]).item()
    return loss_mean * prompts / normalizer, {
        "loss_sum": loss_mean.item() * prompts,
        "prompts": prompts,
        "correct_pairs": accuracy * pairs,
        "pairs": pairs,
        "reward_sum": float(rewards.sum()),
        "reward_sq_sum": float((rewards**2).sum()),
        "responses": float(rewards.numel()),
    }


OBJECTIVES: dict[str, Objective] = {
    "lm": Objective(pack_lm, lm_token_count, lm_objective_loss, "causal_lm", len),
    "sft": Objective(collate_sft, sft_token_count, sft_objective_loss, "causal_lm", lambda item: len(item[0]) + len(item[1])),
    "rm": Objective(collate_comparisons, ranked_prompt_count, rm_objective_loss, "scalar",
                    lambda item: len(item.prompt_ids) + max(map(len, item.response_ids))),
}


# ---------------------------------------------------------------------------------------------
# DPO (Rafailov et al. 2023, eq. 7) on the reward model's layout: every response of a ranked prompt
# forwarded once, all its C(K,2) pairs in one batch element (rlhf_dist.algo.dpo).


@dataclass(frozen=True)
class ReferencedComparison(TokenizedComparison):
    """A ranked prompt with the frozen reference's sequence log-prob of each response:
    ref_logps[k] = log pi_ref(response k | prompt), summed over its tokens (EOS included). Computed
    once before training (`frozen_sequence_logprobs`), so no step forwards the reference."""

    ref_logps: tuple = ()


def collate_dpo(items: Sequence[ReferencedComparison], pad_id: int) -> dict:
    """`collate_comparisons` plus ref_logps: (N,) fp32, in the same row order as input_ids."""
    for b, it in enumerate(items):
        if len(it.ref_logps) != len(it.response_ids):
            raise ValueError(f"collate_dpo: item {b} has {len(it.response_ids)} responses but "
                             f"{len(it.ref_logps)} reference log-probs")
    batch = collate_comparisons(items, pad_id)
    batch["ref_logps"] = torch.tensor([lp for it in items for lp in it.ref_logps], dtype=torch.float32)
    return batch


def _sequence_logps(model, batch: dict) -> torch.Tensor:
    """(N,) log pi(y|x) of every row of a `collate_comparisons` batch, at temperature 1 (DPO's
    implicit reward is defined by the policy itself, not a sampling distribution)."""
    padded = PaddedBatch(batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["response_mask"],
                         batch["prompt_len"])
    return sequence_logprobs(response_logprobs(model, padded), batch["response_mask"])


@torch.no_grad()
def frozen_sequence_logprobs(model, items: Sequence[TokenizedComparison], pad_id: int, micro_batch_size: int,
                             device) -> list[tuple[float, ...]]:
    """The reference pass: per item, the tuple of its responses' log pi_ref(y|x) (the `ref_logps`
    of a ReferencedComparison), in micro-batches of `micro_batch_size` items."""
    out = []
    for start in range(0, len(items), micro_batch_size):
        chunk = items[start : start + micro_batch_size]
        batch = _to(collate_comparisons(chunk, pad_id), device)
        logps = _sequence_logps(model, batch).float().cpu().tolist()
        for b, it in enumerate(chunk):
            out.append(tuple(logps[i] for i in batch["index"][b, : len(it.response_ids)].tolist()))
    return out


def dpo_objective_loss(model, batch: dict, normalizer: float, beta: float):
    """The DPO loss of the batch's ranked prompts; normalised by the global count of prompts with a
    strict pair (`ranked_prompt_count`), as the reward model's loss is."""
    policy = _sequence_logps(model, batch)
    loss_mean, stats = dpo_loss(policy, batch["ref_logps"], batch["index"], batch["ranks"], batch["valid"], beta)
    prompts, pairs = float(stats["prompts"]), float(stats["pairs"])
    return loss_mean * prompts / normalizer, {
        "loss_sum": loss_mean.item() * prompts,
        "prompts": prompts,
        "correct_pairs": float(stats["accuracy"]) * pairs,
        "pairs": pairs,
        "margin_sum": float(stats["margin"]) * pairs,
    }


DPO_OBJECTIVE = "dpo:beta="


def dpo_objective(beta: float) -> str:
    """The objective name of DPO at `beta`, e.g. "dpo:beta=0.1". The learner ranks look objectives
    up by name, so beta travels in it (repr: the float round-trips exactly)."""
    return f"{DPO_OBJECTIVE}{float(beta)!r}"


def _dpo(beta: float) -> Objective:
    return Objective(collate_dpo, ranked_prompt_count, partial(dpo_objective_loss, beta=beta), "causal_lm",
                     lambda item: len(item.prompt_ids) + max(map(len, item.response_ids)))


class _Objectives(dict):
    """The fixed objectives by name, plus "dpo:beta=B" built on first use."""

    def __missing__(self, name: str) -> Objective:
        if not name.startswith(DPO_OBJECTIVE):
            raise KeyError(name)
        beta = float(name[len(DPO_OBJECTIVE):])
        if not beta > 0:
            raise ValueError(f"objective {name!r}: beta must be > 0")
        self[name] = objective = _dpo(beta)
        return objective


OBJECTIVES = _Objectives(OBJECTIVES)
OBJECTIVES["dpo"] = _dpo(0.1)  # the DPO paper's default beta (appendix B)


def run_micro_batches(
    objective: Objective, model, items_per_micro: Sequence[Sequence], pad_id: int, normalizer: float, device, backward: Callable | None
) -> dict[str, float]:
    """Forward (and backward, if given) every micro-batch; returns the summed metrics.

    `model` is the DeepSpeed engine (or any module): losses call it, never a submodule, because
    under ZeRO-3 the engine's own forward coordinates parameter gathering and gradient
    accumulation (calling engine.module directly gave wrong updates with accumulation).
    """
    sums: dict[str, float] = {}
    for items in items_per_micro:
        batch = _to(objective.collate(items, pad_id), device)
        if backward is None:
            with torch.no_grad():
                loss, stats = objective.loss(model, batch, normalizer)
        else:
            loss, stats = objective.loss(model, batch, normalizer)
            backward(loss)
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v
    return sums
