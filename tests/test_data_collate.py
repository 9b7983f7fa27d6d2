"""Collation layouts (exact tensors on hand examples), the ranking loss through collate_comparisons
against a brute-force pair loop, losses against transformers' own label loss, token counts."""

from __future__ import annotations

import math
import random

import pytest
import torch

from rlhf_dist.algo import aggregate_loss, lm_loss, ranking_loss, ranks_from_ordering
from rlhf_dist.data import (
    TokenizedComparison,
    collate_comparisons,
    collate_lm,
    pack_lm,
    collate_sft,
    lm_token_count,
    ranked_prompt_count,
    sft_token_count,
    token_count,
)

PAD, BOS, EOS = 0, 1, 2


def T(rows, dtype=torch.long):
    return torch.tensor(rows, dtype=dtype)


def test_collate_sft_layout():
    batch = collate_sft([([BOS, 11, 3], [15, EOS]), ([BOS, 3], [15, 16, 17, EOS])], pad_id=PAD)
    assert batch.prompt_len == 3
    assert torch.equal(batch.input_ids, T([[BOS, 11, 3, 15, EOS, PAD, PAD], [PAD, BOS, 3, 15, 16, 17, EOS]]))
    assert torch.equal(batch.attention_mask, T([[1, 1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1]]))
    assert torch.equal(batch.position_ids, T([[0, 1, 2, 3, 4, 4, 4], [0, 0, 1, 2, 3, 4, 5]]))
    assert torch.equal(batch.response_mask, T([[1, 1, 0, 0], [1, 1, 1, 1]], torch.bool))
    assert token_count(batch) == 6 == sft_token_count([([BOS, 11, 3], [15, EOS]), ([BOS, 3], [15, 16, 17, EOS])])


def test_collate_lm_layout():
    out = collate_lm([[BOS, 11, 12, EOS], [BOS, 13, EOS]], pad_id=PAD)
    assert torch.equal(out["input_ids"], T([[BOS, 11, 12, EOS], [BOS, 13, EOS, PAD]]))
    assert torch.equal(out["attention_mask"], T([[1, 1, 1, 1], [1, 1, 1, 0]]))
    assert torch.equal(out["position_ids"], T([[0, 1, 2, 3], [0, 1, 2, 2]]))
    assert torch.equal(out["labels"], T([[11, 12, EOS, PAD], [13, EOS, PAD, PAD]]))
    assert torch.equal(out["loss_mask"], T([[1, 1, 1, 0], [1, 1, 0, 0]], torch.bool))
    assert token_count(out) == 5 == lm_token_count([[BOS, 11, 12, EOS], [BOS, 13, EOS]])


def test_collate_comparisons_layout_mixed_k():
    items = [
        TokenizedComparison([BOS, 11, 3], [[15, EOS], [16, 17, EOS], [18, EOS]], [1, 2, 0]),
        TokenizedComparison([BOS, 3], [[19, EOS], [20, EOS]], [0, 1]),
    ]
    out = collate_comparisons(items, pad_id=PAD)
    assert out["prompt_len"] == 3
    assert torch.equal(
        out["input_ids"],
        T([
            [BOS, 11, 3, 15, EOS, PAD],
            [BOS, 11, 3, 16, 17, EOS],
            [BOS, 11, 3, 18, EOS, PAD],
            [PAD, BOS, 3, 19, EOS, PAD],
            [PAD, BOS, 3, 20, EOS, PAD],
        ]),
    )  # fmt: skip
    assert torch.equal(out["attention_mask"], (out["input_ids"] != PAD).long())
    assert torch.equal(out["position_ids"][3], T([0, 0, 1, 2, 3, 3]))
    assert torch.equal(out["ranks"], T([[1, 2, 0], [0, 1, -1]]))
    assert torch.equal(out["valid"], T([[1, 1, 1], [1, 1, 0]], torch.bool))
    assert torch.equal(out["index"], T([[0, 1, 2], [3, 4, 0]]))
    assert ranked_prompt_count(out) == 2 == ranked_prompt_count(items)


def brute_force_loss(comparisons, scores_per_prompt):
    """Mean over prompts of the mean over (better, worse) pairs of the ranking (best first)."""
    per_prompt = []
    for ranking, scores in zip(comparisons, scores_per_prompt):
        terms = []
        for a in range(len(ranking)):
            for b in range(a + 1, len(ranking)):
                d = scores[ranking[a]] - scores[ranking[b]]
                terms.append(math.log1p(math.exp(-d)))  # -log sigmoid(d)
        per_prompt.append(sum(terms) / len(terms))
    return sum(per_prompt) / len(per_prompt)


def test_ranking_loss_through_collation_equals_brute_force():
    rng = random.Random(0)
    rankings, items, responses_per_prompt = [], [], []
    for b in range(7):
        K = rng.choice([2, 3, 4, 5])
        ranking = list(range(K))
        rng.shuffle(ranking)
        prompt = [BOS] + [rng.randint(10, 50) for _ in range(rng.randint(0, 5))]
        responses = [[rng.randint(10, 50) for _ in range(rng.randint(0, 4))] + [EOS] for _ in range(K)]
        rankings.append(ranking)
        responses_per_prompt.append((prompt, responses))
        items.append(TokenizedComparison(prompt, responses, ranks_from_ordering(ranking)))
    out = collate_comparisons(items, pad_id=PAD)
    N = sum(len(r) for _, r in responses_per_prompt)
    assert out["input_ids"].shape[0] == N  # each response forwarded once
    # every (prompt, response) is the row index points at, and its last real token is EOS
    for b, (prompt, responses) in enumerate(responses_per_prompt):
        for k, response in enumerate(responses):
            row = int(out["index"][b, k])
            real = out["input_ids"][row][out["attention_mask"][row].bool()].tolist()
            assert real == prompt + response and real[-1] == EOS
    scores = torch.randn(N, dtype=torch.float64)
    got = ranking_loss(scores[out["index"]], out["ranks"], out["valid"])
    # brute force: rows are laid out prompt by prompt, in response order
    offsets = [0]
    for _, r in responses_per_prompt:
        offsets.append(offsets[-1] + len(r))
    scores_per_prompt = [scores[offsets[b] : offsets[b + 1]].tolist() for b in range(len(items))]
    assert float(got) == pytest.approx(brute_force_loss(rankings, scores_per_prompt), rel=1e-12)


def test_losses_match_transformers_label_loss(tiny_model_dir):
    """The collated masks select exactly the tokens HF's shifted-label loss uses (independent reference)."""
    from rlhf_dist.models import load_causal_lm
    from rlhf_dist.models.forward import response_logits

    model = load_causal_lm(tiny_model_dir)
    # pretraining
    out = collate_lm([[BOS, 11, 12, 13, EOS], [BOS, 14, EOS]], pad_id=PAD)
    hf_labels = out["input_ids"].masked_fill(out["attention_mask"] == 0, -100)
    with torch.no_grad():
        res = model(input_ids=out["input_ids"], attention_mask=out["attention_mask"], position_ids=out["position_ids"], labels=hf_labels)
    ours = aggregate_loss(lm_loss(res.logits, out["labels"], out["loss_mask"]), out["loss_mask"])
    assert float(ours) == pytest.approx(float(res.loss), abs=1e-5)
    # SFT: loss on the response tokens (EOS included) only
    batch = collate_sft([([BOS, 11, 3], [15, EOS]), ([BOS, 3], [15, 16, 17, EOS])], pad_id=PAD)
    hf_labels = batch.input_ids.clone()
    hf_labels[:, : batch.prompt_len] = -100
    hf_labels[batch.attention_mask == 0] = -100
    with torch.no_grad():
        res = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids, labels=hf_labels)
        logits = response_logits(model, batch)
    ours = aggregate_loss(lm_loss(logits, batch.response_ids, batch.response_mask), batch.response_mask)
    assert float(ours) == pytest.approx(float(res.loss), abs=1e-5)


def test_empty_batches_raise():
    for fn in (collate_sft, collate_lm, collate_comparisons):
        with pytest.raises(ValueError, match="empty batch"):
            fn([], PAD)


def test_pack_lm_layout():
    out = pack_lm([[BOS, 11, EOS], [BOS, 12, 13, 14, EOS], [BOS, EOS]], pad_id=PAD)
    # rows of 5 (the longest), first-fit in decreasing length: [5 tokens], [3 + 2 tokens]
    assert out["attention_mask"] is None
    assert torch.equal(out["input_ids"], T([[BOS, 12, 13, 14, EOS], [BOS, 11, EOS, BOS, EOS]]))
    assert torch.equal(out["position_ids"], T([[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]))
    assert torch.equal(out["labels"][0, :4], T([12, 13, 14, EOS]))
    assert torch.equal(out["labels"][1, [0, 1, 3]], T([11, EOS, EOS]))
    assert torch.equal(out["loss_mask"], T([[1, 1, 1, 1, 0], [1, 1, 0, 1, 0]], torch.bool))
    padded = pack_lm([[BOS, 11, EOS], [BOS, 12, EOS]], pad_id=PAD, row_len=8)
    assert torch.equal(padded["position_ids"], T([[0, 1, 2, 0, 1, 2, 0, 1]]))  # the padding tail: its own segment
    assert int(padded["loss_mask"].sum()) == lm_token_count([[BOS, 11, EOS], [BOS, 12, EOS]])
    with pytest.raises(ValueError, match="does not fit"):
        pack_lm([[BOS, 11, 12, EOS]], pad_id=PAD, row_len=3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pack_lm_logits_equal_each_sequence_alone(tiny_model_dir, seed):
    """transformers' block-diagonal mask from restarting position ids: every packed token's logits
    equal those of its sequence forwarded alone (batch 1, no padding), and the NLL sum equals the
    padded `collate_lm` batch's."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    rng = random.Random(seed)
    V = model.config.vocab_size
    seqs = [[BOS] + [rng.randrange(3, V) for _ in range(rng.randint(0, 30))] for _ in range(rng.randint(5, 12))]
    packed = pack_lm(seqs, PAD, row_len=rng.choice([None, 48]))
    with torch.no_grad():
        logits = model(input_ids=packed["input_ids"], attention_mask=None, position_ids=packed["position_ids"],
                       use_cache=False).logits
        seen = 0
        for r in range(logits.shape[0]):
            starts = (packed["position_ids"][r] == 0).nonzero().flatten().tolist() + [logits.shape[1]]
            for a, b in zip(starts, starts[1:]):
                ids = packed["input_ids"][r, a:b]
                if packed["loss_mask"][r, a:b].any() or (ids != PAD).all():  # a real sequence, not the padding tail
                    alone = model(input_ids=ids[None], use_cache=False).logits[0]
                    torch.testing.assert_close(logits[r, a:b], alone, atol=1e-5, rtol=1e-5)
                    seen += 1
        assert seen == len(seqs)
        padded = collate_lm(seqs, PAD)
        padded_logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"],
                              position_ids=padded["position_ids"], use_cache=False).logits
        nll_packed = (lm_loss(logits, packed["labels"], packed["loss_mask"])).sum()
        nll_padded = (lm_loss(padded_logits, padded["labels"], padded["loss_mask"])).sum()
    torch.testing.assert_close(nll_packed, nll_padded, atol=1e-4, rtol=1e-5)
