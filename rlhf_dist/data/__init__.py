"""The data layer: read data files, format and tokenise them within length budgets, collate padded
batches, and split them into seeded minibatches and per-rank shards.

    load_sft / load_comparisons / load_prompts / load_texts / load_lm_data, source_exists  (readers.py; DataError)
    format_prompt, encode_response, tokenize_sft / tokenize_comparisons / tokenize_prompts / tokenize_texts /
    tokenize_demonstrations
    collate_sft, collate_lm, pack_lm, collate_comparisons, token counts                        (collate.py)
    minibatches, shard, split_eval, PromptSampler, PtxSampler                        (sampling.py)

Imports torch (and the models layer's padding helpers); pyarrow only when a Parquet file is read.
Tokenizers are passed in (transformers' PreTrainedTokenizerFast or any object with the same calls).
"""

from rlhf_dist.data.collate import (
    collate_comparisons,
    collate_lm,
    pack_lm,
    collate_sft,
    lm_token_count,
    ranked_prompt_count,
    sft_token_count,
    token_count,
)
from rlhf_dist.data.encode import (
    TRUNCATION_MODES,
    TokenizedComparison,
    encode_observation,
    encode_policy_turn,
    encode_response,
    encode_responses,
    format_prompt,
    format_prompts,
    has_chat_template,
    prompt_text,
    tokenize_comparisons,
    tokenize_demonstrations,
    tokenize_prompts,
    tokenize_sft,
    tokenize_texts,
    truncate_middle,
)
from rlhf_dist.data.readers import (
    Comparison,
    DataError,
    SFTExample,
    load_comparisons,
    load_prompts,
    load_records,
    load_sft,
    load_lm_data,
    load_texts,
    source_exists,
)
from rlhf_dist.data.sampling import PromptSampler, PtxSampler, epoch_permutation, minibatches, shard, split_eval

__all__ = [
    "PromptSampler",
    "PtxSampler",
    "TRUNCATION_MODES",
    "Comparison",
    "DataError",
    "SFTExample",
    "TokenizedComparison",
    "collate_comparisons",
    "collate_lm",
    "pack_lm",
    "collate_sft",
    "encode_observation",
    "encode_policy_turn",
    "encode_response",
    "encode_responses",
    "epoch_permutation",
    "format_prompt",
    "format_prompts",
    "has_chat_template",
    "prompt_text",
    "lm_token_count",
    "load_comparisons",
    "load_prompts",
    "load_records",
    "load_sft",
    "load_lm_data",
    "load_texts",
    "minibatches",
    "ranked_prompt_count",
    "sft_token_count",
    "shard",
    "source_exists",
    "split_eval",
    "token_count",
    "tokenize_comparisons",
    "tokenize_demonstrations",
    "tokenize_prompts",
    "tokenize_sft",
    "tokenize_texts",
    "truncate_middle",
]
