"""Models: a local byte-level BPE tokenizer, tiny Llama causal LMs, and scalar-head (reward/value) models.

Everything loads from local folders in Hugging Face format; nothing is downloaded. The same
folder loads in transformers, vLLM and DeepSpeed.
"""

from rlhf_dist.models.batching import PaddedBatch, pad_prompt_response, position_ids_from_mask
from rlhf_dist.models.forward import response_logprobs
from rlhf_dist.models.loading import check_model_dir, load_causal_lm, load_scalar_model, load_tokenizer
from rlhf_dist.models.scalar import ScalarHeadModel, init_scalar_from_causal_lm
from rlhf_dist.models.tiny import TINY_SIZES, TinyModelSpec, build_tiny_causal_lm, save_tiny_model
from rlhf_dist.models.tokenizer import SPECIAL_TOKENS, train_bpe_tokenizer

__all__ = [
    "SPECIAL_TOKENS",
    "TINY_SIZES",
    "PaddedBatch",
    "ScalarHeadModel",
    "TinyModelSpec",
    "build_tiny_causal_lm",
    "check_model_dir",
    "init_scalar_from_causal_lm",
    "load_causal_lm",
    "load_scalar_model",
    "load_tokenizer",
    "pad_prompt_response",
    "position_ids_from_mask",
    "response_logprobs",
    "save_tiny_model",
    "train_bpe_tokenizer",
]
