"""Sampling model folders in a child process: checkpoints of one model share one real vLLM engine
(weights swapped), and their samples equal a fresh engine's on each folder."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from rlhf_dist.engines.vllm_rollout import SampleJob, engine_key, sample_jobs_in_subprocess


def sample_in_subprocess(model_dir, prompt_ids, temperature: float, max_new_tokens: int, seed: int):
    """A fresh engine on one folder: one sample per prompt, request i seeded seed + i, in its own child process."""
    return sample_jobs_in_subprocess([SampleJob(str(model_dir), [list(p) for p in prompt_ids], temperature,
                                                max_new_tokens, seed)])[0]


def _perturbed_copy(src, dst, seed: int):
    """`src` with every weight moved by noise: same architecture and tokenizer, other samples."""
    from transformers import AutoModelForCausalLM

    shutil.copytree(src, dst)
    model = AutoModelForCausalLM.from_pretrained(str(src), torch_dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * p.std() * torch.randn(p.shape, generator=gen))
    model.save_pretrained(str(dst))
    return dst


@pytest.fixture(scope="module")
def folders(tiny_model_dir, tmp_path_factory):
    """A (the tiny model), B (A perturbed), C (another architecture, A's tokenizer)."""
    from rlhf_dist.models import TINY_SIZES, save_tiny_model
    from rlhf_dist.models.tiny import toy_corpus

    root = tmp_path_factory.mktemp("sample_jobs")
    b = _perturbed_copy(tiny_model_dir, root / "b", seed=1)
    c = save_tiny_model(root / "c", toy_corpus(), dataclasses.replace(TINY_SIZES["tiny"], num_layers=3), vocab_size=384,
                        seed=2)
    return tiny_model_dir, b, c


def test_engine_key_groups_checkpoints_of_one_model(tiny_model_dir, tmp_path):
    b = _perturbed_copy(tiny_model_dir, tmp_path / "b", seed=1)
    assert engine_key(b) == engine_key(tiny_model_dir)  # other weights, same model
    renamed = shutil.copytree(tiny_model_dir, tmp_path / "renamed")
    cfg = json.loads((renamed / "config.json").read_text())
    cfg.update(_name_or_path="elsewhere", transformers_version="0.0.1")
    (renamed / "config.json").write_text(json.dumps(cfg))
    assert engine_key(renamed) == engine_key(tiny_model_dir)  # bookkeeping fields do not count
    for name, change in [("config.json", {"num_hidden_layers": cfg["num_hidden_layers"] + 1}),
                         ("generation_config.json", {"eos_token_id": 5})]:
        other = shutil.copytree(tiny_model_dir, tmp_path / f"other_{name}")
        f = other / name
        f.write_text(json.dumps({**(json.loads(f.read_text()) if f.is_file() else {}), **change}))
        assert engine_key(other) != engine_key(tiny_model_dir), name
    tok = shutil.copytree(tiny_model_dir, tmp_path / "tok")
    tc = json.loads((tok / "tokenizer_config.json").read_text())
    (tok / "tokenizer_config.json").write_text(json.dumps({**tc, "model_max_length": 7}))
    assert engine_key(tok) != engine_key(tiny_model_dir)
    no_weights = shutil.copytree(tiny_model_dir, tmp_path / "bin")
    for f in no_weights.glob("*.safetensors"):
        f.unlink()
    assert engine_key(no_weights) != engine_key(tiny_model_dir) and engine_key(no_weights) != engine_key(tmp_path / "x")


def _as_tuples(rollouts):
    return [(r.response_ids, r.logprobs, r.finished_with_eos) for r in rollouts]


def test_shared_engine_samples_equal_fresh_engines(folders):
    from rlhf_dist.models import load_tokenizer

    a, b, c = folders
    tok = load_tokenizer(a)
    prompts = [tok(t).input_ids for t in ["the cat", "a red box is under the mat and", "count one two", "list", "blue"]] * 3
    jobs = [SampleJob(str(a), prompts, 1.0, 12, 7), SampleJob(str(c), prompts, 1.0, 12, 7),
            SampleJob(str(b), prompts, 1.0, 12, 7), SampleJob(str(a), prompts, 1.0, 12, 7)]
    got = sample_jobs_in_subprocess(jobs)
    assert [len(r) for r in got] == [len(prompts)] * 4
    fresh_b = sample_in_subprocess(str(b), prompts, 1.0, 12, 7)
    # B sampled by the engine that started on A equals a fresh engine on B, token for token.
    assert [r.response_ids for r in got[2]] == [r.response_ids for r in fresh_b]
    for x, y in zip(got[2], fresh_b):
        assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-5)
    # The swap happened: B's samples are not A's (same seeds), nor C's (own engine, own child).
    assert _as_tuples(got[2]) != _as_tuples(got[0]) and _as_tuples(got[1]) != _as_tuples(got[0])
    # Back on A's weights, the engine samples what it sampled first on A.
    assert [r.response_ids for r in got[3]] == [r.response_ids for r in got[0]]
    for x, y in zip(got[3], got[0]):
        assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-5)
