"""Length-sorted forward groups (`length_groups`, `select_rows`, `by_length`): every row once, the
budget kept, and the outputs equal to per-row unpadded forwards (log-probs, gradients, RM scores)."""

from __future__ import annotations

import random

import pytest
import torch

from rlhf_dist.models import init_scalar_from_causal_lm, load_causal_lm, load_tokenizer, pad_prompt_response
from rlhf_dist.models.batching import length_groups, select_rows
from rlhf_dist.models.forward import by_length, response_logprobs


def _brute_padded_tokens(groups, p, r):
    return sum(len(g) * (max(p[i] for i in g) + max(r[i] for i in g)) for g in groups)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_tokens,max_rows", [(0, 3), (40, None), (100, 4), (7, None)])
def test_length_groups_cover_every_row_once_within_the_budget(seed, max_tokens, max_rows):
    rng = random.Random(seed)
    n = rng.randint(1, 30)
    p = [rng.randint(1, 12) for _ in range(n)]
    r = [rng.randint(0, 20) for _ in range(n)]
    groups = [g.tolist() for g in length_groups(torch.tensor(p), torch.tensor(r), max_tokens, max_rows)]
    assert sorted(i for g in groups for i in g) == list(range(n))
    for g in groups:
        padded = len(g) * (max(p[i] for i in g) + max(r[i] for i in g))
        if len(g) > 1 and max_tokens:
            assert padded <= max_tokens, (g, padded)
        if max_rows:
            assert len(g) <= max_rows
    totals = [[p[i] + r[i] for i in g] for g in groups]
    flat = [x for t in totals for x in t]
    assert flat == sorted(flat), "groups hold rows in order of total length"
    # never more padded tokens than padding the whole batch to its longest prompt + response
    assert _brute_padded_tokens(groups, p, r) <= n * (max(p) + max(r))


def test_select_rows_trims_to_the_groups_own_longest_prompt_and_response():
    batch = pad_prompt_response([[1, 5, 6, 7], [1], [1, 9]], [[7, 8, 2], [9], []], pad_id=0)
    sub = select_rows(batch, torch.tensor([2, 1]))
    assert sub.prompt_len == 2
    assert sub.input_ids.tolist() == [[1, 9, 0], [0, 1, 9]]
    assert sub.attention_mask.tolist() == [[1, 1, 0], [0, 1, 1]]
    assert sub.position_ids.tolist() == [[0, 1, 1], [0, 0, 1]]
    assert sub.response_mask.tolist() == [[False], [True]]


def _rows(tok, n, seed, max_response=9):
    rng = random.Random(seed)
    words = "the cat dog sat ran under over mat box red blue one two three".split()
    prompts = [tok(" ".join(rng.choices(words, k=rng.randint(1, 8)))).input_ids for _ in range(n)]
    responses = [[rng.randrange(5, len(tok)) for _ in range(rng.randint(0, max_response))] for _ in range(n)]
    return prompts, responses


def _naive_logprobs(model, prompt, response):
    """One row, no padding at all, float64 log-softmax: the reference."""
    logits = model(input_ids=torch.tensor([prompt + response])).logits[0].double()
    rows = logits[len(prompt) - 1 : len(prompt) + len(response) - 1]
    return (rows.log_softmax(-1).gather(1, torch.tensor(response)[:, None])[:, 0]).float()


@pytest.mark.parametrize("max_tokens,max_rows", [(30, None), (60, 3), (0, 2)])
def test_by_length_logprobs_and_gradients_equal_unpadded_per_row_forwards(tiny_model_dir, max_tokens, max_rows):
    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir)
    prompts, responses = _rows(tok, 11, seed=max_tokens)
    batch = pad_prompt_response(prompts, responses, tok.pad_token_id)
    calls = []

    def forward(b):
        calls.append(b.input_ids.numel())
        return response_logprobs(model, b), None

    lp, none = by_length(forward, batch, max_tokens, max_rows)
    assert none is None and lp.shape == batch.response_mask.shape
    assert len(calls) > 1 and sum(calls) < batch.input_ids.numel(), "grouped: less padding computed than one forward"
    weights = torch.randn(lp.shape, generator=torch.Generator().manual_seed(0))
    (lp * weights * batch.response_mask).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref_loss = 0.0
    for i, (p, r) in enumerate(zip(prompts, responses)):
        if not r:
            continue
        ref = _naive_logprobs(model, p, r)
        torch.testing.assert_close(lp[i, : len(r)].detach(), ref.detach(), atol=1e-5, rtol=0)
        ref_loss = ref_loss + (ref * weights[i, : len(r)]).sum()
    ref_loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)


def test_by_length_rm_scores_equal_unpadded_per_row_scores(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    rm = init_scalar_from_causal_lm(tiny_model_dir).eval()
    prompts, responses = _rows(tok, 9, seed=3)
    responses = [r + [tok.eos_token_id] for r in responses]
    batch = pad_prompt_response(prompts, responses, tok.pad_token_id)
    with torch.no_grad():
        (got,) = by_length(lambda b: (rm.reward(b.input_ids, b.attention_mask, b.position_ids),), batch, max_rows=2)
        ref = torch.stack([rm.reward(torch.tensor([p + r]), torch.ones(1, len(p) + len(r), dtype=torch.long))[0]
                           for p, r in zip(prompts, responses)])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
