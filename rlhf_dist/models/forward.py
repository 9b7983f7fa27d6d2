"""Forward passes on padded prompt/response batches: response log-probs from a causal LM."""

from __future__ import annotations

import torch

from rlhf_dist.algo.logprobs import logprobs_from_logits
from rlhf_dist.models.batching import PaddedBatch


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
