"""Frozen models scoring trajectories: the reward model and the reference (SFT) policy.

Both read Arrow trajectory rows (rlhf_dist.buffer), pad them without per-row loops
(`to_padded`), run forward passes in micro-batches of rows of similar length (so that little
padding is computed: `rlhf_dist.models.forward.by_length`) and return one column for the same rows.
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


@torch.no_grad()
def _warm_up(forward) -> None:
    """One tiny padded forward at start-up: the first call's one-time costs (kernel selection, lazy
    initialisation: docs/results.md, "Start-up") are then paid while the other
    roles start rather than in the first iteration."""
    device = default_device()
    forward(torch.ones(2, 8, dtype=torch.long, device=device),
            torch.tensor([[0] * 2 + [1] * 6, [1] * 8], device=device))


class RewardEngine:
    """The frozen RM: r(x, y) read at the last response token, minus the saved reward bias."""

    def __init__(self, path: str, pad_id: int, micro_batch_size: int = 16, dtype: str = "float32") -> None:
        from rlhf_dist.models import load_scalar_model

        self.device = default_device()
        self.model = load_scalar_model(path, dtype=DTYPES[dtype]).to(self.device)
        self.pad_id, self.micro = pad_id, micro_batch_size
        _warm_up(lambda ids, mask: self.model.reward(ids, mask))

    @torch.no_grad()
    def score(self, table: pa.Table) -> np.ndarray:
        """(B,) float32 scores of the table's rows."""
        from rlhf_dist.models.forward import by_length

        if table.num_rows == 0:
            return np.zeros(0, np.float32)
        t = to_padded(table, self.pad_id, columns=[]).to(self.device)
        reward = by_length(lambda b: (self.model.reward(b.input_ids, b.attention_mask, b.position_ids).float(),), t,
                           max_rows=self.micro)[0]
        return reward.cpu().numpy()


class ReferenceEngine:
    """The frozen SFT policy: log pi_ref_T of every response token, at the sampling temperature
    (ppo-details 14: the reference log-probs are divided by the same T as the old and new ones)."""

    def __init__(self, path: str, pad_id: int, temperature: float, micro_batch_size: int = 16, dtype: str = "float32") -> None:
        from rlhf_dist.models import load_causal_lm

        self.device = default_device()
        self.model = load_causal_lm(path, dtype=DTYPES[dtype]).to(self.device)
        self.pad_id, self.temperature, self.micro = pad_id, temperature, micro_batch_size
        _warm_up(lambda ids, mask: self.model(input_ids=ids, attention_mask=mask, use_cache=False))

    @torch.no_grad()
    def logprobs(self, table: pa.Table) -> pa.ListArray:
        """One list<float32> of response-token log-probs per row."""
        from rlhf_dist.models.forward import by_length, response_logprobs

        if table.num_rows == 0:
            return pa.array([], pa.list_(pa.float32()))
        t = to_padded(table, self.pad_id, columns=[]).to(self.device)
        lp = by_length(lambda b: (response_logprobs(self.model, b, self.temperature),), t, max_rows=self.micro)[0]
        return per_token_column(lp.cpu(), t.response_mask.sum(1).cpu().numpy())
