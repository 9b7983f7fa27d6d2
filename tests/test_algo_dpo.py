"""DPO's loss (Rafailov et al. 2023, eq. 7) on K-way rankings, against plain-Python references: loops
over prompts and over every ordered pair, in Python floats."""

from __future__ import annotations

import math
import random

import pytest
import torch

from rlhf_dist.algo.dpo import dpo_loss, sequence_logprobs
from tests.conftest import with_garbage

TOL = dict(rel=1e-5, abs=1e-5)  # fp32


def neg_logsigmoid(d: float) -> float:
    """-log sigmoid(d) = log(1 + e^-d), stable for either sign."""
    return max(-d, 0.0) + math.log1p(math.exp(-abs(d)))


def random_batch(seed: int, B: int, kmax: int):
    """B prompts with K_b in 2..kmax responses each (one prompt with exactly kmax), a random
    ranking per prompt (no ties), response rows in a shuffled order, padding slots pointing at a
    row of garbage (NaN) that no valid slot uses. -> (policy (N,), ref (N,), index, ranks, valid)."""
    rng = random.Random(seed)
    ks = [rng.randint(2, kmax) for _ in range(B)]
    ks[rng.randrange(B)] = kmax
    n = sum(ks)
    rows = list(range(n))
    rng.shuffle(rows)
    garbage_row = n  # row n: referenced by padding slots only
    index = torch.full((B, kmax), garbage_row, dtype=torch.long)
    ranks = torch.full((B, kmax), -1, dtype=torch.long)
    valid = torch.zeros((B, kmax), dtype=torch.bool)
    at = 0
    for b, k in enumerate(ks):
        order = list(range(k))
        rng.shuffle(order)
        for slot in range(k):
            index[b, slot] = rows[at]
            ranks[b, slot] = order[slot]
            valid[b, slot] = True
            at += 1
    policy = torch.tensor([-rng.uniform(1.0, 40.0) for _ in range(n)] + [float("nan")])
    ref = torch.tensor([-rng.uniform(1.0, 40.0) for _ in range(n)] + [float("nan")])
    return policy, ref, index, ranks, valid


def python_dpo(policy, ref, index, ranks, valid, beta):
    """Loops: per prompt, every ordered pair (i, j) with i ranked strictly better; the implicit reward
    r = beta * (log pi - log pi_ref) in Python floats. -> (loss, accuracy, margin, pairs, prompts)."""
    policy, ref = [float(x) for x in policy], [float(x) for x in ref]
    per_prompt, correct, margins = [], 0.0, []
    for b in range(index.shape[0]):
        slots = [k for k in range(index.shape[1]) if bool(valid[b, k])]
        reward = {k: beta * (policy[int(index[b, k])] - ref[int(index[b, k])]) for k in slots}
        terms = []
        for i in slots:
            for j in slots:
                if int(ranks[b, i]) < int(ranks[b, j]):
                    d = reward[i] - reward[j]
                    terms.append(neg_logsigmoid(d))
                    correct += 1.0 if d > 0 else 0.5 if d == 0 else 0.0
                    margins.append(d)
        if terms:
            per_prompt.append(math.fsum(terms) / len(terms))
    return (math.fsum(per_prompt) / len(per_prompt), correct / len(margins), math.fsum(margins) / len(margins),
            len(margins), len(per_prompt))


@pytest.mark.parametrize("kmax", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5])
def test_loss_accuracy_and_margin_match_python_loops_over_pairs(kmax, beta):
    for seed in range(4):
        policy, ref, index, ranks, valid = random_batch(1000 * kmax + seed, B=5, kmax=kmax)
        loss, stats = dpo_loss(policy, ref, index, ranks, valid, beta)
        want_loss, want_acc, want_margin, pairs, prompts = python_dpo(policy, ref, index, ranks, valid, beta)
        assert math.isfinite(loss.item())  # the NaN row of the padding slots never enters
        assert loss.item() == pytest.approx(want_loss, **TOL)
        assert stats["accuracy"].item() == pytest.approx(want_acc, **TOL)
        assert stats["margin"].item() == pytest.approx(want_margin, **TOL)
        assert stats["pairs"].item() == pairs == sum(k * (k - 1) // 2 for k in valid.sum(1).tolist())
        assert stats["prompts"].item() == prompts == 5
        for b in range(5):
            for k in range(kmax):
                want = beta * (policy[index[b, k]] - ref[index[b, k]]).item() if valid[b, k] else 0.0
                assert stats["rewards"][b, k].item() == pytest.approx(want, **TOL)


def test_chosen_rejected_pairs_match_the_closed_form():
    """K = 2: -log sigmoid(beta * ((pc - rc) - (pr - rr))), averaged over prompts; the chosen
    response sits in either slot (ranks [0, 1] or [1, 0])."""
    gen = torch.Generator().manual_seed(0)
    B, beta = 7, 0.3
    policy = -torch.rand(2 * B, generator=gen) * 30
    ref = -torch.rand(2 * B, generator=gen) * 30
    index = torch.arange(2 * B).reshape(B, 2)
    chosen_first = torch.rand(B, generator=gen) < 0.5
    chosen_first[0], chosen_first[1] = True, False
    ranks = torch.where(chosen_first.unsqueeze(1), torch.tensor([0, 1]), torch.tensor([1, 0]))
    valid = torch.ones(B, 2, dtype=torch.bool)
    terms, margins = [], []
    for b in range(B):
        c, r = (2 * b, 2 * b + 1) if chosen_first[b] else (2 * b + 1, 2 * b)
        margin = beta * ((float(policy[c]) - float(ref[c])) - (float(policy[r]) - float(ref[r])))
        terms.append(-math.log(1.0 / (1.0 + math.exp(-margin))))
        margins.append(margin)
    loss, stats = dpo_loss(policy, ref, index, ranks, valid, beta)
    assert loss.item() == pytest.approx(sum(terms) / B, **TOL)
    assert stats["margin"].item() == pytest.approx(sum(margins) / B, **TOL)
    assert stats["accuracy"].item() == pytest.approx(sum(m > 0 for m in margins) / B, **TOL)


def test_policy_equal_to_reference_gives_log_2_and_half_accuracy():
    """At the start of training (policy = reference) every implicit reward is 0: loss log 2, every
    pair a tie in reward (one half each), margin 0."""
    policy, _, index, ranks, valid = random_batch(5, B=4, kmax=5)
    loss, stats = dpo_loss(policy, policy.clone(), index, ranks, valid, 0.1)
    assert loss.item() == pytest.approx(math.log(2.0), abs=1e-6)
    assert stats["accuracy"].item() == 0.5 and stats["margin"].item() == 0.0


def test_gradient_matches_finite_differences_and_the_closed_form():
    policy, ref, index, ranks, valid = random_batch(11, B=4, kmax=4)
    clean = torch.nan_to_num(policy, nan=0.0).double()  # gradcheck perturbs every input, the padding row included
    ref = torch.nan_to_num(ref, nan=0.0).double()
    x = clean.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: dpo_loss(p, ref, index, ranks, valid, 0.2)[0], (x,), eps=1e-6, atol=1e-7)
    # K = 2, one prompt: d/d log pi(chosen) = -beta * sigmoid(-margin), d/d log pi(rejected) = +beta * sigmoid(-margin)
    p = torch.tensor([-3.0, -5.0], requires_grad=True)
    q = torch.tensor([-4.0, -4.5])
    beta = 0.5
    loss, _ = dpo_loss(p, q, torch.tensor([[0, 1]]), torch.tensor([[0, 1]]), torch.ones(1, 2, dtype=torch.bool), beta)
    loss.backward()
    margin = beta * ((-3.0 + 4.0) - (-5.0 + 4.5))
    s = 1.0 / (1.0 + math.exp(margin))
    assert p.grad.tolist() == pytest.approx([-beta * s, beta * s], **TOL)


def test_padding_rows_get_zero_gradient_and_real_rows_the_python_one():
    policy, ref, index, ranks, valid = random_batch(3, B=3, kmax=6)
    x = policy.clone().requires_grad_(True)
    dpo_loss(x, ref, index, ranks, valid, 0.1)[0].backward()
    assert torch.isfinite(x.grad).all() and x.grad[-1].item() == 0.0  # the NaN row
    h = 1e-3  # central differences of the Python reference (float64) for a few real rows
    for row in (0, 5, len(policy) - 2):
        up, down = policy.double().clone(), policy.double().clone()
        up[row] += h
        down[row] -= h
        numeric = (python_dpo(up, ref, index, ranks, valid, 0.1)[0] - python_dpo(down, ref, index, ranks, valid, 0.1)[0]) / (2 * h)
        assert x.grad[row].item() == pytest.approx(numeric, rel=1e-4, abs=1e-6)
        assert x.grad[row].item() != 0.0


def test_ties_and_single_response_prompts_are_left_out_and_a_batch_without_pairs_raises():
    """As in ranking_loss: a tied pair is dropped, a prompt with no strict pair (K = 1, all tied)
    leaves the mean over prompts."""
    policy = torch.tensor([-1.0, -2.0, -3.0, -4.0, -5.0, -6.0])
    ref = torch.tensor([-1.5, -1.0, -3.5, -2.0, -5.0, -6.5])
    index = torch.tensor([[0, 1, 2], [3, 0, 0], [4, 5, 0]])
    ranks = torch.tensor([[0, 1, 1], [0, -1, -1], [0, 0, -1]])  # prompt 0: one tie; 1: K = 1; 2: all tied
    valid = torch.tensor([[True, True, True], [True, False, False], [True, True, False]])
    loss, stats = dpo_loss(policy, ref, index, ranks, valid, 1.0)
    r = [p - q for p, q in zip(policy.tolist(), ref.tolist())]
    want = (neg_logsigmoid(r[0] - r[1]) + neg_logsigmoid(r[0] - r[2])) / 2
    assert loss.item() == pytest.approx(want, **TOL)
    assert stats["prompts"].item() == 1 and stats["pairs"].item() == 2
    with pytest.raises(ValueError, match="no strictly ranked pair"):
        dpo_loss(policy, ref, index[1:], ranks[1:], valid[1:], 1.0)


@pytest.mark.parametrize("beta", [0.0, -0.1, float("nan")])
def test_beta_must_be_positive(beta):
    policy, ref, index, ranks, valid = random_batch(0, B=2, kmax=2)
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(policy, ref, index, ranks, valid, beta)


def test_sequence_logprobs_sum_the_response_tokens_and_ignore_padding_garbage():
    gen = torch.Generator().manual_seed(0)
    N, T = 9, 7
    lengths = [0, 1, 7, 3, 5, 2, 7, 4, 6]
    mask = torch.tensor([[t < n for t in range(T)] for n in lengths])
    clean = -torch.rand(N, T, generator=gen) * 5
    logprobs = with_garbage(clean, mask, gen).requires_grad_(True)
    assert not torch.isfinite(logprobs[~mask]).all()  # the garbage is really there
    out = sequence_logprobs(logprobs, mask)
    assert out.shape == (N,)
    for i, n in enumerate(lengths):
        want = math.fsum(float(clean[i, t]) for t in range(n))
        assert out[i].item() == pytest.approx(want, **TOL)
    out.sum().backward()
    assert torch.equal(logprobs.grad, mask.float())  # 1 on response tokens, exactly 0 on padding
    assert sequence_logprobs(clean, mask.long()).tolist() == pytest.approx(out.tolist(), **TOL)  # a 0/1 mask too
