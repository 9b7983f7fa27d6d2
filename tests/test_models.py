"""Tokenizer, tiny causal LM and scalar-head model: special tokens, loading, padding invariance."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_dist.models import (
    init_scalar_from_causal_lm,
    load_causal_lm,
    load_scalar_model,
    load_tokenizer,
    pad_prompt_response,
    position_ids_from_mask,
    response_logprobs,
)


def test_tokenizer_special_tokens_distinct_and_bos_prepended(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    ids = {tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id}
    assert len(ids) == 4, f"special tokens must be distinct, got {ids}"
    enc = tok("the cat sat").input_ids
    assert enc[0] == tok.bos_token_id and tok.eos_token_id not in enc
    # Byte-level: unseen characters still round-trip.
    text = "zebra ÿ 42!"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


def test_tokenizer_gives_a_word_one_id_wherever_it_stands():
    """A response's first word, encoded on its own or after the prompt's newline, gets the id the
    same word has inside the prompt; decoding gives back the original text, byte for byte."""
    from rlhf_dist.models import train_bpe_tokenizer

    corpus = ["sort 13 54 33.\n13 33 54.", "repeat: red cat box.\nred box.", "count from 3 to 5.\n3 4 5."] * 50
    tok = train_bpe_tokenizer(corpus, vocab_size=400)
    prompt = tok("repeat: red cat box.\n", add_special_tokens=False).input_ids
    alone = tok("red box.", add_special_tokens=False).input_ids
    joined = tok("repeat: red cat box.\nred box.", add_special_tokens=False).input_ids
    pieces = [tok.convert_ids_to_tokens(i) for i in prompt]
    red_in_prompt = prompt[pieces.index("Ġred")]
    assert alone[0] == red_in_prompt, (tok.convert_ids_to_tokens(alone), pieces)
    assert joined == prompt + alone, "prompt + response encode the same jointly and apart"
    numbers = tok("sort 13 54 33.\n13 33 54.", add_special_tokens=False).input_ids
    assert numbers.count(tok.convert_tokens_to_ids("Ġ13")) == 2, tok.convert_ids_to_tokens(numbers)
    for text in ["red box.", "sort 13 54 33.\n13 33 54.", "a\n\nb  c.", "zebra ÿ 42!\n"]:
        assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    assert tok.decode(tok("red box.").input_ids, skip_special_tokens=True) == "red box."


def test_position_ids_ignore_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]


def test_pad_prompt_response_layout():
    batch = pad_prompt_response([[1, 5, 6], [1]], [[7, 8, 2], [9]], pad_id=0)
    assert batch.prompt_len == 3
    assert batch.input_ids.tolist() == [[1, 5, 6, 7, 8, 2], [0, 0, 1, 9, 0, 0]]
    assert batch.response_mask.tolist() == [[True, True, True], [True, False, False]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 1, 1]]


def _with_left_pads(prompt, response, n_pads, pad_id):
    ids = [pad_id] * n_pads + prompt + response
    mask = [0] * n_pads + [1] * (len(prompt) + len(response))
    input_ids, attention_mask = torch.tensor([ids]), torch.tensor([mask])
    return input_ids, attention_mask, position_ids_from_mask(attention_mask)


def _naive_response_logprobs(model, prompt, response, temperature):
    """Unpadded forward, log-softmax per position in float64: an independent reference."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    out = []
    for t, token in enumerate(response):
        row = logits[len(prompt) + t - 1] / temperature
        out.append((row[token] - torch.logsumexp(row, 0)).item())
    return out


def test_response_logprobs_padding_invariant_and_match_unpadded_reference(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir)
    prompts = [tok("the cat").input_ids, tok("a red box is under the mat and").input_ids, [tok.bos_token_id]]
    responses = [[11, 12, 13, tok.eos_token_id], [20], [30, 31, 32, 33, 34, 35]]
    batch = pad_prompt_response(prompts, responses, tok.pad_token_id)
    with torch.no_grad():
        lp = response_logprobs(model, batch, temperature=0.7)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ref = torch.tensor(_naive_response_logprobs(model, p, r, 0.7), dtype=torch.float32)
        torch.testing.assert_close(lp[i, : len(r)], ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("n_pads", [3, 7])
def test_scalar_model_padding_invariance(tiny_model_dir, n_pads):
    tok = load_tokenizer(tiny_model_dir)
    rm = init_scalar_from_causal_lm(tiny_model_dir).eval()
    prompt, response = tok("two dogs sat on the mat").input_ids, tok("one cat", add_special_tokens=False).input_ids + [tok.eos_token_id]
    ref_ids, ref_mask, ref_pos = _with_left_pads(prompt, response, 0, tok.pad_token_id)
    ids, mask, pos = _with_left_pads(prompt, response, n_pads, tok.pad_token_id)
    with torch.no_grad():
        v0 = rm.values(ref_ids, ref_mask, ref_pos)[0]
        v = rm.values(ids, mask, pos)[0, n_pads:]
        r0, r = rm.reward(ref_ids, ref_mask), rm.reward(ids, mask)
    torch.testing.assert_close(v, v0, atol=1e-5, rtol=0)
    torch.testing.assert_close(r, r0, atol=1e-5, rtol=0)
    # The reward is the value at the last real token (the EOS).
    assert abs(r0.item() - v0[-1].item()) < 1e-6


def test_reward_read_at_last_non_pad_token_mixed_padding(tiny_model_dir):
    rm = init_scalar_from_causal_lm(tiny_model_dir).eval()
    # Row 0 right-padded, row 1 left- and right-padded, row 2 unpadded.
    ids = torch.tensor([[1, 40, 41, 2, 0, 0], [0, 1, 50, 2, 0, 0], [1, 60, 61, 62, 63, 2]])
    mask = (ids != 0).long()
    with torch.no_grad():
        values = rm.values(ids, mask)
        reward = rm.reward(ids, mask)
    expected = torch.stack([values[0, 3], values[1, 3], values[2, 5]])
    torch.testing.assert_close(reward, expected, atol=0, rtol=0)


def test_scalar_head_init_std_and_save_load_roundtrip(tiny_model_dir, tmp_path):
    rm = init_scalar_from_causal_lm(tiny_model_dir, seed=1)
    d = rm.config.hidden_size
    std = rm.hf.score.weight.std().item()
    # d = 128 weights: the sample std of 128 normals is within ~20% of sigma with overwhelming probability.
    assert abs(std * math.sqrt(d + 1) - 1) < 0.2, std
    # The backbone is the causal LM's own.
    lm = load_causal_lm(tiny_model_dir)
    torch.testing.assert_close(rm.hf.model.embed_tokens.weight, lm.model.embed_tokens.weight, atol=0, rtol=0)
    rm.config.reward_bias = 0.25
    rm.save_pretrained(tmp_path)
    loaded = load_scalar_model(tmp_path)
    ids = torch.tensor([[1, 40, 41, 2]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(loaded.reward(ids, mask), rm.reward(ids, mask), atol=1e-6, rtol=0)
        raw = rm.hf.score(rm.hf.model(input_ids=ids, attention_mask=mask).last_hidden_state)[0, -1, 0]
    assert abs(loaded.reward(ids, mask).item() - (raw.item() - 0.25)) < 1e-5


def test_dropout_is_off_and_forward_is_deterministic_in_train_mode(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir).train()
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    ids = torch.tensor([[1, 40, 41, 42]])
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=ids).logits
    assert torch.equal(a, b)


def test_loading_rejects_non_local_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="local"):
        load_causal_lm(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="local"):
        load_tokenizer("some-org/some-model")
