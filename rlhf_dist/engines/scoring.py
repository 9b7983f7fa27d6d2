"""Frozen models scoring trajectories: the reward model and the reference (SFT) policy.

Both read Arrow trajectory rows (rlhf_dist.buffer), pad them without per-row loops
(`to_padded`), run forward passes in micro-batches and return one column for the same rows.
The Ray actors in rlhf_dist.actors.scorers are thin shells around these engines.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from rlhf_dist.buffer import per_token_column, to_padded

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _micro_slices(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(size, n - start)


class RewardEngine:
    """The frozen RM: r(x, y) read at the last response token, minus the saved reward bias."""

    def __init__(self, path: str, pad_id: int, micro_batch_size: int = 16, dtype: str = "float32") -> None:
        from rlhf_dist.models import load_scalar_model

        self.device = default_device()
        self.model = load_scalar_model(path, dtype=DTYPES[dtype]).to(self.device)
        self.pad_id, self.micro = pad_id, micro_batch_size

    @torch.no_grad()
    def score(self, table: pa.Table) -> np.ndarray:
        """(B,) float32 scores of the table's rows."""
        out = []
        for start, n in _micro_slices(table.num_rows, self.micro):
            t = to_padded(table.slice(start, n), self.pad_id, columns=[]).to(self.device)
            out.append(self.model.reward(t.input_ids, t.attention_mask, t.position_ids).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


class ReferenceEngine:
    """The frozen SFT policy: log pi_ref_T of every response token, at the sampling temperature
    (ppo-details 14: the reference log-probs are divided by the same T as the old and new ones)."""

    def __init__(self, path: str, pad_id: int, temperature: float, micro_batch_size: int = 16, dtype: str = "float32") -> None:
        from rlhf_dist.models import load_causal_lm

        self.device = default_device()
        self.model = load_causal_lm(path, dtype=DTYPES[dtype]).to(self.device)
        self.pad_id, self.temperature, self.micro = pad_id, temperature, micro_batch_size

    @torch.no_grad()
    def logprobs(self, table: pa.Table) -> pa.ListArray:
        """One list<float32> of response-token log-probs per row."""
        from rlhf_dist.models.forward import response_logprobs

        chunks = []
        for start, n in _micro_slices(table.num_rows, self.micro):
            t = to_padded(table.slice(start, n), self.pad_id, columns=[]).to(self.device)
            lp = response_logprobs(self.model, t.padded_batch(), self.temperature).cpu()
            chunks.append(per_token_column(lp, t.response_mask.sum(1).cpu().numpy()))
        return pa.chunked_array(chunks, type=pa.list_(pa.float32())).combine_chunks() if chunks else pa.array([], pa.list_(pa.float32()))
