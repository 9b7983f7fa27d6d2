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
    """What a PPO run needs, built in seconds: (sft_dir, rm_dir, data_dir).

    sft: the random-init tiny Llama (stands in for an SFT model); rm: its backbone with a fresh
    scalar head (a random reward model), tokenizer included; data: the built-in task's files
    written with small counts. Quality is irrelevant here: these exercise the machinery.
    """
    from rlhf_dist.models import init_scalar_from_causal_lm, load_tokenizer
    from rlhf_dist.tasks.generate import main as task_data

    root = tmp_path_factory.mktemp("ppo_models")
    rm_dir = root / "rm"
    init_scalar_from_causal_lm(tiny_model_dir, seed=1).save_pretrained(rm_dir)
    load_tokenizer(tiny_model_dir).save_pretrained(rm_dir)
    data = root / "data"
    rc = task_data(["--out", str(data), "seed=0", "n_pretrain=400", "n_pretrain_heldout=50", "n_sft=50", "n_rl_prompts=200",
                    "n_eval_prompts=40", "n_comparisons=20", "n_comparisons_heldout=10", "n_agreement_pairs=100", "probe=0"])
    assert rc == 0
    return str(tiny_model_dir), str(rm_dir), str(data)
