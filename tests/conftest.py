"""Shared fixtures and helpers: tiny models built locally (no hub, built once per test run), a local
Ray instance per test module, padding garbage for the math tests, and an independent HF reward
function. Helpers are imported as `from tests.conftest import ...`."""

from __future__ import annotations

import os

import pytest

from rlhf_dist.runtime import apply_vllm_cpu_env

apply_vllm_cpu_env()  # vLLM's CPU backend defaults (rlhf_dist/runtime.py), for engines started by tests
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
    `tests/ppo_placeholders.py`."""
    from tests.ppo_placeholders import placeholder_ppo_models

    return placeholder_ppo_models(tmp_path_factory.mktemp("ppo_models"), tiny_model_dir)


@pytest.fixture(scope="session")
def zero3_model_dir(tmp_path_factory):
    """A random-init Llama with hidden 256 (2 layers, 4 heads, MLP 512) + BPE tokenizer: its MLP
    weights (256 x 512) exceed ZeRO-3's persistence threshold, so they really are partitioned
    across ranks. Read-only: tests that train it save elsewhere."""
    from rlhf_dist.models import TinyModelSpec, save_tiny_model
    from rlhf_dist.models.tiny import toy_corpus

    spec = TinyModelSpec(hidden_size=256, num_layers=2, num_heads=4, intermediate_size=512)
    return save_tiny_model(tmp_path_factory.mktemp("zero3_lm"), toy_corpus(), spec, vocab_size=384, seed=1)


@pytest.fixture(scope="module")
def ray_local(request):
    """A local Ray instance (2 CPUs, no dashboard) for one test module, namespaced by the module."""
    import ray

    namespace = request.module.__name__.rsplit(".", 1)[-1]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace=namespace)
    yield
    ray.shutdown()


GARBAGE = (float("nan"), 1e30, -1e30, float("inf"), 777.0)


def with_garbage(x, mask, gen, garbage=GARBAGE):
    """x where mask is True, a random pick of `garbage` (NaN, +-huge, inf, ...) at every padded position."""
    import torch

    pick = torch.randint(0, len(garbage), x.shape, generator=gen)
    return torch.where(mask, x, torch.tensor(garbage, dtype=x.dtype)[pick])


def hf_reward_fn(rm_dir):
    """An independent reward function of a reward-model folder: transformers' own sequence classifier
    on one unpadded sequence (its pooling reads the last token), minus the folder's reward_bias."""
    import torch
    from transformers import AutoModelForSequenceClassification

    hf = AutoModelForSequenceClassification.from_pretrained(rm_dir, num_labels=1, dtype=torch.float32).eval()
    bias = float(getattr(hf.config, "reward_bias", 0.0))

    def reward(ids):
        with torch.no_grad():
            return hf(torch.tensor([ids])).logits[0, 0].item() - bias

    return reward
