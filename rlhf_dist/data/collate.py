"""Collation of tokenised examples into padded tensors, and loss-token counts.

Position ids always come from the attention mask (cumsum - 1), so logits do not depend on how
much padding a row has (ppo-details item 4). Layouts:

- SFT and RM rows: the prompt left-padded to P, the response right-padded to T (the rollout
  layout, `PaddedBatch`), so SFT, RM training and RM scoring of rollouts see the same thing;
- pretraining rows: right-padded, with labels already shifted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from rlhf_dist.data.encode import TokenizedComparison
from rlhf_dist.models.batching import PaddedBatch, pad_prompt_response, position_ids_from_mask


def collate_sft(examples: Sequence[Sequence[Sequence]], pad_id: int) -> PaddedBatch:
    """(prompt_ids, response_ids) pairs, or (prompt_ids, response_ids, loss_mask) triples of
    multi-turn episodes (`tokenize_sft`) -> PaddedBatch of shape (B, P + T).

    The SFT loss is over `response_mask` (B, T): every response token, EOS included, except the
    environment's tokens of an episode (loss_mask False): they are attended to (attention_mask,
    position ids) but are no target. With `rlhf_dist.models.forward.response_logits(model, batch)`
    -> (B, T, V): `lm_loss(logits, batch.response_ids, batch.response_mask)`. A batch of pairs
    only gives the tensors of plain padding.
    """
    if not examples:
        raise ValueError("collate_sft: empty batch")
    batch = pad_prompt_response([e[0] for e in examples], [e[1] for e in examples], pad_id)
    for i, e in enumerate(examples):
        if len(e) > 2:
            if len(e[2]) != len(e[1]):
                raise ValueError(f"collate_sft: item {i} has {len(e[1])} response tokens "
                                 f"but a loss mask of {len(e[2])}")
            batch.response_mask[i, : len(e[1])] &= torch.as_tensor(list(e[2]), dtype=torch.bool)
    return batch


def collate_lm(seqs: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pretraining sequences -> right-padded tensors for next-token prediction.

    -> input_ids (B, S) long, attention_mask (B, S) long, position_ids (B, S) long,
    labels (B, S) long, loss_mask (B, S) bool; S = the longest sequence.
    labels[:, t] = input_ids[:, t + 1] (PAD in the last column), so `logits[:, t]` of the model
    on input_ids predicts `labels[:, t]` with no further shift; loss_mask[:, t] is True where
    token t + 1 is real, i.e. len(seq) - 1 positions per row (pads never enter the loss).
    Use `lm_loss(logits, labels, loss_mask)`.
    """
    if not seqs:
        raise ValueError("collate_lm: empty batch")
    if any(len(s) == 0 for s in seqs):
        raise ValueError("collate_lm: empty sequence")
    B, S = len(seqs), max(len(s) for s in seqs)
    input_ids = torch.full((B, S), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, S), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        attention_mask[i, : len(s)] = 1
    labels = torch.full((B, S), pad_id, dtype=torch.long)
    labels[:, :-1] = input_ids[:, 1:]
    loss_mask = torch.zeros((B, S), dtype=torch.bool)
    loss_mask[:, :-1] = attention_mask[:, 1:].bool()
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids_from_mask(attention_mask),
        "labels": labels,
        "loss_mask": loss_mask,
    }


def pack_lm(seqs: Sequence[Sequence[int]], pad_id: int, row_len: int | None = None) -> dict[str, torch.Tensor | None]:
    """Pretraining sequences packed into rows without padding between them (padding-free batches).

    -> the `collate_lm` keys with shapes (R, S), S = `row_len` (default: the longest sequence),
    R rows filled first-fit in decreasing length. `attention_mask` is None: position ids restart
    at 0 for every sequence, and transformers then builds a block-diagonal causal mask from them
    (`masking_utils.find_packed_sequence_indices`; only when no attention mask and no KV cache are
    given), so no token attends to another sequence. The logits of every sequence, and so the loss,
    are those of `collate_lm` up to float summation order; only the padding (and its compute) goes.
    Each row's tail of padding is its own segment (positions 0, 1, ...) and carries no loss.
    """
    if not seqs:
        raise ValueError("pack_lm: empty batch")
    if any(len(s) == 0 for s in seqs):
        raise ValueError("pack_lm: empty sequence")
    S = row_len or max(len(s) for s in seqs)
    if max(len(s) for s in seqs) > S:
        raise ValueError(f"pack_lm: a sequence of {max(len(s) for s in seqs)} tokens does not fit rows of {S}")
    rows: list[list[Sequence[int]]] = []
    free: list[int] = []
    for s in sorted(seqs, key=len, reverse=True):
        i = next((i for i, f in enumerate(free) if f >= len(s)), None)
        if i is None:
            rows.append([])
            free.append(S)
            i = len(rows) - 1
        rows[i].append(s)
        free[i] -= len(s)
    input_ids = torch.full((len(rows), S), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), S), dtype=torch.long)
    labels = torch.full((len(rows), S), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((len(rows), S), dtype=torch.bool)
    for r, row in enumerate(rows):
        at = 0
        for s in row:
            n = len(s)
            ids = torch.as_tensor(list(s), dtype=torch.long)
            input_ids[r, at : at + n] = ids
            position_ids[r, at : at + n] = torch.arange(n)
            labels[r, at : at + n - 1] = ids[1:]
            loss_mask[r, at : at + n - 1] = True  # the last token predicts nothing of its sequence
            at += n
        position_ids[r, at:] = torch.arange(S - at)
    return {"input_ids": input_ids, "attention_mask": None, "position_ids": position_ids, "labels": labels,
            "loss_mask": loss_mask}


def collate_comparisons(items: Sequence[TokenizedComparison], pad_id: int) -> dict:
    """Ranked prompts -> one row per response (each forwarded once, InstructGPT section 3.5).

    N = sum of K_b over the B prompts; rows are in order (prompt 0's responses, prompt 1's, ...).
    -> input_ids, attention_mask, position_ids: (N, S) long, S = P + T (prompt left-padded to P,
       response right-padded to T; the reward is read at the last real token, the EOS);
       response_mask (N, T) bool; prompt_len: P (int);
       ranks (B, Kmax) long: rank of each response, 0 = best, -1 in padding slots;
       valid (B, Kmax) bool: False in padding slots (prompts with K_b < Kmax);
       index (B, Kmax) long: the row of each slot in the N rows, 0 in padding slots.
    The learner: scores = rm.reward(input_ids, attention_mask, position_ids) -> (N,);
    ranking_loss(scores[index], ranks, valid).
    """
    if not items:
        raise ValueError("collate_comparisons: empty batch")
    B, kmax = len(items), max(len(it.response_ids) for it in items)
    ranks = torch.full((B, kmax), -1, dtype=torch.long)
    valid = torch.zeros((B, kmax), dtype=torch.bool)
    index = torch.zeros((B, kmax), dtype=torch.long)
    prompts, responses = [], []
    for b, it in enumerate(items):
        if len(it.ranks) != len(it.response_ids):
            raise ValueError(f"collate_comparisons: item {b} has {len(it.response_ids)} responses but {len(it.ranks)} ranks")
        for k, response in enumerate(it.response_ids):
            index[b, k] = len(prompts)
            prompts.append(it.prompt_ids)
            responses.append(response)
        K = len(it.response_ids)
        ranks[b, :K] = torch.as_tensor(list(it.ranks), dtype=torch.long)
        valid[b, :K] = True
    batch = pad_prompt_response(prompts, responses, pad_id)
    return {
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "position_ids": batch.position_ids,
        "response_mask": batch.response_mask,
        "prompt_len": batch.prompt_len,
        "ranks": ranks,
        "valid": valid,
        "index": index,
    }


# ---------------------------------------------------------------------------------------------
# Counts for exact means across micro-batches and ranks (ppo-details item 32)


def token_count(batch: PaddedBatch | Mapping) -> int:
    """Loss tokens in a collated batch: response_mask.sum() of a PaddedBatch (SFT), loss_mask.sum()
    of a `collate_lm` dict. Sum it over the micro-batches of a minibatch (and all-reduce over ranks)
    for the global normalizer of a token-mean."""
    if isinstance(batch, PaddedBatch):
        return int(batch.response_mask.sum())
    if "loss_mask" in batch:
        return int(batch["loss_mask"].sum())
    raise TypeError("token_count: expected a PaddedBatch (SFT) or a collate_lm dict (with 'loss_mask')")


def sft_token_count(examples: Sequence[Sequence[Sequence]]) -> int:
    """Loss tokens of uncollated SFT items: sum of response lengths (EOS included), counting only
    the policy tokens (loss_mask) of a multi-turn triple. Every rank can compute a minibatch's
    global count from its index list without communication."""
    return sum(sum(map(bool, e[2])) if len(e) > 2 else len(e[1]) for e in examples)


def lm_token_count(seqs: Sequence[Sequence[int]]) -> int:
    """Loss tokens of uncollated pretraining sequences: sum of len - 1 (what `collate_lm` masks in)."""
    return sum(max(len(s) - 1, 0) for s in seqs)


def ranked_prompt_count(items: Sequence[TokenizedComparison] | Mapping) -> int:
    """Prompts that enter `ranking_loss`'s mean: those with at least one strictly ranked pair.

    Accepts TokenizedComparison items or a `collate_comparisons` dict. ranking_loss returns the
    mean over these prompts, so a global mean over a minibatch split across micro-batches/ranks is
    sum of (local loss * local count) / global count.
    """
    if isinstance(items, Mapping):
        ranks, valid = items["ranks"], items["valid"]
        counts = []
        for r, v in zip(ranks.tolist(), valid.tolist()):
            counts.append(len({x for x, ok in zip(r, v) if ok}))
        return sum(c >= 2 for c in counts)
    return sum(len(set(it.ranks)) >= 2 for it in items)
