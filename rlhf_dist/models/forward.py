"""Forward passes on padded prompt/response batches: response log-probs from a causal LM, and any
forward split into length-sorted groups so that little padding is computed (`by_length`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from rlhf_dist.algo.logprobs import logprobs_from_logits
from rlhf_dist.models.batching import PaddedBatch, length_groups, select_rows


def response_logits(model, batch: PaddedBatch) -> torch.Tensor:
    """Logits that predict each response token. -> (B, T, V).

    Column P + t - 1 predicts response token t (the causal shift).
    """
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    )
    P, T = batch.prompt_len, batch.response_mask.shape[1]
    return out.logits[:, P - 1 : P + T - 1]


def response_logprobs(model, batch: PaddedBatch, temperature: float = 1.0) -> torch.Tensor:
    """log pi_T of each response token under `model`. -> (B, T) fp32; padded positions hold garbage (mask them).

    The learner, the reference actor and the consistency checks all compute log-probs here, so
    the temperature is applied the same way everywhere.
    """
    logits = response_logits(model, batch)
    return logprobs_from_logits(logits, batch.response_ids, temperature)


def by_length(fn: Callable[[PaddedBatch], tuple], batch, max_tokens: int = 0, max_rows: int | None = None) -> tuple:
    """`fn` applied to length-sorted groups of the batch's rows (`length_groups`: at most `max_tokens`
    padded tokens and `max_rows` rows per forward), its outputs put back in row order: the same
    values as `fn(batch)` with less padding computed.

    batch: PaddedBatch or TrajectoryTensors (B, P + T). fn: PaddedBatch (b, P' + T') -> a tuple of
    (b, T') per-token tensors, (b,) per-row tensors, or None. -> the same tuple with B rows, per-token
    ones (B, T) with 0 beyond each group's T'. Autograd flows through (the learner's forwards).
    A batch within both limits is one call on the batch as it is.
    """
    B, T = batch.response_mask.shape
    if (not max_tokens or B * batch.input_ids.shape[1] <= max_tokens) and (not max_rows or B <= max_rows):
        return fn(batch)
    prompt_lens = batch.attention_mask[:, : batch.prompt_len].sum(1)
    groups = length_groups(prompt_lens.cpu(), batch.response_mask.sum(1).cpu(), max_tokens, max_rows)
    parts = [fn(select_rows(batch, g.to(batch.input_ids.device))) for g in groups]
    inverse = torch.argsort(torch.cat(groups)).to(batch.input_ids.device)
    out = []
    for k in range(len(parts[0])):
        if parts[0][k] is None:
            out.append(None)
            continue
        pieces = [p[k] if p[k].dim() == 1 else F.pad(p[k], (0, T - p[k].shape[1])) for p in parts]
        out.append(torch.cat(pieces)[inverse])
    return tuple(out)
