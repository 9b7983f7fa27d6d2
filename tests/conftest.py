"""Shared fixtures: tiny models built locally (no hub), once per test session."""

from __future__ import annotations

import os
import random

import pytest

# vLLM's CPU backend: a small KV cache and no thread pinning on shared machines (stack-facts).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = (
    "the a cat dog bird sat ran on under mat box cup red blue green one two three four five "
    "list count avoid facts question answer is are and not"
).split()


def toy_corpus(n: int = 2000, seed: int = 0) -> list[str]:
    """Random sentences over a small vocabulary: enough to train a BPE tokenizer for tests."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 16))) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random-init tiny Llama (hidden 128, 2 layers, head_dim 32) + BPE tokenizer in HF format."""
    from rlhf_dist.models import TINY_SIZES, save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny_lm"), toy_corpus(), TINY_SIZES["tiny"], vocab_size=384, seed=0)
