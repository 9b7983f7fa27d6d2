"""LoRA adapters (rlhf_dist/models/lora.py) against independent references:

- the merged weight stream, loaded into a plain model of the original architecture, gives the
  logits of the model with adapters (Llama's Linear and GPT-2's transposed Conv1D, a scalar head);
- the adapter folder loads with `peft.PeftModel.from_pretrained` on the base folder and gives the
  same logits;
- only adapters (and a scalar model's head) require gradients;
- unknown module names are refused in one line naming the key and the layers that exist.
"""

from __future__ import annotations

import pytest
import torch

from rlhf_dist.models.lora import (
    adapter_state,
    add_lora,
    check_lora_targets,
    lora_layers,
    merged_named_tensors,
    save_adapter,
)

LORA = dict(rank=4, alpha=8.0, dropout=0.0)


def _configs():
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    ids = dict(vocab_size=97, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return {
        "llama": LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=2, **ids),
        "qwen2": Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=1, tie_word_embeddings=True, **ids),
        "gpt2": GPT2Config(n_embd=64, n_layer=2, n_head=2, n_positions=64, **ids),
    }


def _randomize_adapters(model, seed=0):
    """peft starts B at 0 (the adapter adds nothing); give every adapter weight a real value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding on one row
    return ids, mask


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_merged_stream_gives_the_adapted_models_logits(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(_configs()[arch]).eval()
    base.save_pretrained(tmp_path / "base")
    model = add_lora(AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval(), targets="all-linear", **LORA)
    _randomize_adapters(model)
    ids, mask = _inputs()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        plain = base(input_ids=ids, attention_mask=mask).logits
    assert (want - plain).abs().max() > 1e-3  # the adapters change the model: the check below can fail

    layers = lora_layers(model)
    assert layers and all(s == pytest.approx(2.0) for s, _ in layers.values())  # alpha / r
    assert all(f == (arch == "gpt2") for _, f in layers.values())  # GPT-2's Conv1D stores W as (in, out)
    merged = dict(merged_named_tensors(((n, p.detach().clone()) for n, p in model.named_parameters()), layers))
    assert set(merged) == {n for n, _ in base.named_parameters()}  # the base model's names, nothing else
    fresh = AutoModelForCausalLM.from_config(_configs()[arch]).eval()
    missing, unexpected = fresh.load_state_dict(merged, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing)  # a tied head is the embedding
    with torch.no_grad():
        got = fresh(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()


def test_only_adapters_and_a_scalar_head_train(tmp_path):
    from transformers import AutoModelForCausalLM

    from rlhf_dist.models.scalar import init_scalar_from_causal_lm

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(_configs()["llama"]).save_pretrained(tmp_path / "base")
    lm = add_lora(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), targets="all-linear", **LORA)
    trained = {n for n, p in lm.named_parameters() if p.requires_grad}
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    assert not any("lm_head" in n for n in trained)  # all-linear leaves the LM head alone
    # 2 layers x 7 linear layers (q, k, v, o, gate, up, down) x (A, B)
    assert len(trained) == 2 * 7 * 2

    scalar = add_lora(init_scalar_from_causal_lm(tmp_path / "base"), targets=["q_proj", "v_proj"], **LORA)
    trained = {n for n, p in scalar.named_parameters() if p.requires_grad}
    assert "hf.score.weight" in trained and not any(".lora_" in n and "score" in n for n in trained)
    assert {n.split(".")[-4] for n in trained if ".lora_" in n} == {"q_proj", "v_proj"}
    assert sum(p.numel() for n, p in scalar.named_parameters() if p.requires_grad) == \
        64 + 2 * 2 * (4 * 64 + 64 * 4)  # head + 2 layers x {q, v} x (A + B)


def test_adapter_folder_loads_in_peft(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhf_dist.models.scalar import ScalarHeadModel, init_scalar_from_causal_lm

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(_configs()["llama"]).save_pretrained(tmp_path / "base")
    ids, mask = _inputs()

    lm = add_lora(AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval(), targets="all-linear", **LORA)
    _randomize_adapters(lm)
    state = {n: p.detach().clone() for n, p in lm.named_parameters()}
    save_adapter(tmp_path / "adapter", adapter_state(state.items()), targets="all-linear", scalar=False,
                 base_model=str(tmp_path / "base"), **LORA)
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids, attention_mask=mask).logits,
                              lm(input_ids=ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-5)

    rm = add_lora(init_scalar_from_causal_lm(tmp_path / "base", seed=3).eval(), targets="all-linear", **LORA)
    _randomize_adapters(rm, seed=1)
    state = {n: p.detach().clone() for n, p in rm.named_parameters()}
    save_adapter(tmp_path / "rm_adapter", adapter_state(state.items(), "hf."), targets="all-linear", scalar=True,
                 base_model=str(tmp_path / "base"), **LORA)
    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=1)
    peft_rm = PeftModel.from_pretrained(base, tmp_path / "rm_adapter").eval()
    with torch.no_grad():
        want = rm.values(ids, mask)
        got = ScalarHeadModel(peft_rm.merge_and_unload()).values(ids, mask)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()


def test_merge_refuses_a_stream_missing_an_adapter():
    layers = {"m": (2.0, False)}
    stream = [("m.base_layer.weight", torch.zeros(3, 3)), ("m.lora_A.default.weight", torch.zeros(1, 3))]
    with pytest.raises(RuntimeError, match="LoRA layers without"):
        list(merged_named_tensors(stream, layers))


def test_unknown_target_is_one_line_naming_the_key(tmp_path):
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_config(_configs()["llama"]).save_pretrained(tmp_path / "base")
    check_lora_targets(tmp_path / "base", ["q_proj", "down_proj"], "learner.lora_targets")  # exist: no error
    check_lora_targets(tmp_path / "base", "all-linear", "learner.lora_targets")
    with pytest.raises(ValueError) as e:
        check_lora_targets(tmp_path / "base", "q_proj,c_attn", "learner.lora_targets")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("learner.lora_targets=q_proj,c_attn: no linear layer named c_attn")
    assert "q_proj" in msg.split("its linear layers:")[1]
