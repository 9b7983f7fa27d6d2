"""Causal LMs beyond Llama, tiny random configs built here from transformers' config classes:
Llama, Qwen2 (tied embeddings, attention biases), Mistral, Gemma (tied), GPT-2 (tied) and Phi-3.

- the scalar head (reward model and critic) reads each architecture's backbone: its last-token
  value equals transformers' own sequence-classification logit;
- vLLM's sampling log-probs equal transformers' for each, from its folder and after a weight push
  into a running engine (`sample_jobs_in_subprocess` swaps the second folder's weights in through
  the weight-sync receiver): the push maps each architecture's names, tied embeddings included."""

from __future__ import annotations

import pytest
import torch

from rlhf_dist.models import load_tokenizer


def _configs(tok) -> dict:
    from transformers import GemmaConfig, GPT2Config, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    layers = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=512)
    return {
        "llama": LlamaConfig(num_key_value_heads=4, **layers, **ids),
        "qwen2": Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True, **layers, **ids),
        "mistral": MistralConfig(num_key_value_heads=2, sliding_window=None, **layers, **ids),
        "gemma": GemmaConfig(num_key_value_heads=1, head_dim=32, **layers, **ids),
        "gpt2": GPT2Config(n_embd=128, n_layer=2, n_head=4, n_positions=512, **ids),
        "phi3": Phi3Config(num_key_value_heads=4, **layers, **ids),
    }


@pytest.fixture(scope="module")
def arch_dirs(tiny_model_dir, tmp_path_factory):
    """{arch: (folder of seed 0, folder of seed 1)}, each with the tiny BPE tokenizer."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(tiny_model_dir)
    root, out = tmp_path_factory.mktemp("archs"), {}
    for name, cfg in _configs(tok).items():
        dirs = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            d = root / f"{name}_{seed}"
            AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
            tok.save_pretrained(d)
            dirs.append(str(d))
        out[name] = tuple(dirs)
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma", "gpt2", "phi3"])
def test_scalar_head_reads_every_backbone(arch, arch_dirs):
    from transformers import AutoModelForSequenceClassification

    from rlhf_dist.models.scalar import ScalarHeadModel

    torch.manual_seed(0)
    hf = AutoModelForSequenceClassification.from_pretrained(arch_dirs[arch][0], num_labels=1)
    model = ScalarHeadModel(hf).eval()
    ids = torch.tensor([[1, 20, 31, 45, 7, 9]])
    with torch.no_grad():
        values = model.values(ids, torch.ones_like(ids))
        want = hf(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, 0]
    assert values.shape == (1, 6) and torch.allclose(values[:, -1], want.float(), atol=1e-5)


@pytest.mark.slow
def test_vllm_logprobs_equal_transformers_from_the_folder_and_after_a_weight_push(arch_dirs):
    """Sampled at T = 1: vLLM's log-prob of every sampled token equals transformers' for the model
    it holds, and is far from the other folder's (so the push really changed the weights)."""
    from transformers import AutoModelForCausalLM

    from rlhf_dist.engines.vllm_rollout import SampleJob, sample_jobs_in_subprocess
    from rlhf_dist.models import pad_prompt_response, response_logprobs

    tok = load_tokenizer(arch_dirs["llama"][0])
    prompts = [tok(t).input_ids for t in ["the cat", "count one two", "a red box"]]
    folders = [d for dirs in arch_dirs.values() for d in dirs]
    results = dict(zip(folders, sample_jobs_in_subprocess([SampleJob(d, prompts, 1.0, 12, 0) for d in folders])))

    def gap(rollouts, folder) -> float:
        batch = pad_prompt_response([r.prompt_ids for r in rollouts], [r.response_ids for r in rollouts], tok.pad_token_id)
        with torch.no_grad():
            hf = response_logprobs(AutoModelForCausalLM.from_pretrained(folder), batch, temperature=1.0)
        engine = torch.zeros(batch.response_mask.shape)
        for i, r in enumerate(rollouts):
            engine[i, : len(r.logprobs)] = torch.tensor(r.logprobs)
        return (hf - engine).abs()[batch.response_mask].max().item()

    for arch, (first, pushed) in arch_dirs.items():
        for d, other in ((first, pushed), (pushed, first)):
            where = "from the folder" if d == first else "after a weight push"
            assert gap(results[d], d) < 1e-3, (arch, where)
            assert gap(results[d], other) > 1e-2, (arch, where, "the other folder's weights give the same log-probs")
