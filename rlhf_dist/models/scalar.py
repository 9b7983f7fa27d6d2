"""Scalar-head models: the reward model and the critic (value network).

A backbone plus Linear(d, 1) on every position (InstructGPT section 3.5; N+ `ScalarModel`).
Stored as a standard `LlamaForSequenceClassification` folder (num_labels=1) so transformers and
vLLM load it; we read the head per token ourselves:
- values: the head at every position (the critic's V_t);
- reward: the head at the last non-pad token (the EOS of a finished response), minus
  `config.reward_bias`, the offset that normalises rewards after training (InstructGPT 3.5).
The critic is initialised from the reward model (InstructGPT C.4), so both share this class.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rlhf_dist.models.batching import position_ids_from_mask


class ScalarHeadModel(nn.Module):
    """Wraps an HF `*ForSequenceClassification` model with one output."""

    def __init__(self, hf_model) -> None:
        super().__init__()
        if hf_model.config.num_labels != 1:
            raise ValueError(f"a scalar head needs num_labels=1, got {hf_model.config.num_labels}")
        self.hf = hf_model
        self.config = hf_model.config

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "ScalarHeadModel":
        from transformers import AutoModelForSequenceClassification

        return cls(AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs))

    def save_pretrained(self, path, **kwargs) -> None:
        self.hf.save_pretrained(path, **kwargs)

    @property
    def reward_bias(self) -> float:
        return float(getattr(self.config, "reward_bias", 0.0))

    def values(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Head output at every position, minus the reward bias. (B, S) -> (B, S) fp32."""
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        hidden = self.hf.base_model(  # the backbone of any architecture (`model`, `transformer`, ...)
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        return self.hf.score(hidden).squeeze(-1).float() - self.reward_bias

    def forward(self, input_ids, attention_mask, position_ids=None) -> torch.Tensor:
        return self.values(input_ids, attention_mask, position_ids)

    def reward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Reward read at the last non-pad token of each row. (B, S) -> (B,) fp32.

        Works for left padding, right padding or both: the last position where the attention
        mask is 1 (N+ detail 12; the other positions are not trained).
        """
        return reward_from_values(self.values(input_ids, attention_mask, position_ids), attention_mask)


def reward_from_values(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The value at the last position where the attention mask is 1. (B, S), (B, S) -> (B,)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = torch.where(attention_mask.bool(), positions, -1).max(dim=1).values
    return values.gather(1, last.unsqueeze(1)).squeeze(1)


def init_scalar_from_causal_lm(path, seed: int = 0, **kwargs) -> ScalarHeadModel:
    """A reward model initialised from a causal-LM folder (e.g. the SFT model) with a fresh head.

    The head is drawn from N(0, 1/sqrt(d + 1)), bias-free, as OpenAI's reward models (N+ blog,
    RM detail 2); the backbone keeps the causal LM's weights (the LM head is dropped).
    """
    import transformers

    # The head is re-initialised below, so the "newly initialized weights" warning is expected.
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model = ScalarHeadModel.from_pretrained(path, **kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)
    d = model.config.hidden_size
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.hf.score.weight.copy_(torch.randn(model.hf.score.weight.shape, generator=generator) / math.sqrt(d + 1))
    model.config.reward_bias = 0.0
    return model
