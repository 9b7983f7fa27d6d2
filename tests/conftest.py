"""Shared fixtures: tiny models built locally (no hub), once per test session."""

from __future__ import annotations

import os

import pytest

# vLLM's CPU backend: a small KV cache and no thread pinning on shared machines (stack-facts).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random-init tiny Llama (hidden 128, 2 layers, head_dim 32) + BPE tokenizer in HF format."""
    from rlhf_dist.models import TINY_SIZES, save_tiny_model
    from rlhf_dist.models.tiny import toy_corpus

    return save_tiny_model(tmp_path_factory.mktemp("tiny_lm"), toy_corpus(), TINY_SIZES["tiny"], vocab_size=384, seed=0)


@pytest.fixture(scope="session")
def ppo_models(tiny_model_dir, tmp_path_factory):
    """What a PPO run needs, built in seconds: (sft_dir, rm_dir, data_dir); see
    `rlhf_dist.recipes.build_model.placeholder_ppo_models`."""
    from rlhf_dist.recipes.build_model import placeholder_ppo_models

    return placeholder_ppo_models(tmp_path_factory.mktemp("ppo_models"), tiny_model_dir)
