"""The K-wise InstructGPT ranking loss and pairwise accuracy against brute force over pairs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rlhf_dist.algo.ranking import pairwise_accuracy, ranking_loss, ranks_from_ordering


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x), stable."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def neg_logsigmoid(d: float) -> float:
    return softplus(-d)


def strict_pairs(ranks_row, valid_row):
    """(better, worse) index pairs among valid slots with different ranks."""
    K = len(ranks_row)
    pairs = []
    for i, j in itertools.combinations(range(K), 2):
        if not (valid_row[i] and valid_row[j]) or ranks_row[i] == ranks_row[j]:
            continue
        pairs.append((i, j) if ranks_row[i] < ranks_row[j] else (j, i))
    return pairs


def brute_loss(scores, ranks, valid):
    per_prompt = []
    for b in range(scores.shape[0]):
        pairs = strict_pairs(ranks[b].tolist(), valid[b].tolist())
        if not pairs:
            continue  # all tied / fewer than 2 responses: left out of the mean
        terms = [neg_logsigmoid(float(scores[b, w]) - float(scores[b, l])) for w, l in pairs]
        per_prompt.append(math.fsum(terms) / len(terms))
    return math.fsum(per_prompt) / len(per_prompt)


def brute_accuracy(scores, ranks, valid):
    total, n = 0.0, 0
    for b in range(scores.shape[0]):
        for w, l in strict_pairs(ranks[b].tolist(), valid[b].tolist()):
            sw, sl = float(scores[b, w]), float(scores[b, l])
            total += 1.0 if sw > sl else 0.5 if sw == sl else 0.0
            n += 1
    return total / n


def random_ranked_batch(gen, B=6, K=6, dtype=torch.float32, garbage=True):
    """Mixed K per prompt (2..K valid slots), ties in ranks, garbage in padding slots."""
    scores = 2.0 * torch.randn(B, K, generator=gen, dtype=dtype)
    ranks = torch.randint(0, 4, (B, K), generator=gen)
    n_valid = torch.randint(2, K + 1, (B,), generator=gen)
    n_valid[0] = K
    valid = torch.arange(K).unsqueeze(0) < n_valid.unsqueeze(1)
    # shuffle which slots are valid so padding is not always at the end
    perm = torch.argsort(torch.rand(B, K, generator=gen), dim=1)
    valid = torch.gather(valid, 1, perm)
    ranks[0] = torch.arange(K)  # one prompt with a full strict ranking: C(K, 2) pairs
    if garbage:
        ranks = torch.where(valid, ranks, torch.full_like(ranks, -1))
        scores = torch.where(valid, scores, torch.full_like(scores, 1e4))
    return scores, ranks, valid


def test_k2_reduces_to_pairwise_logsigmoid():
    gen = torch.Generator().manual_seed(0)
    scores = 3.0 * torch.randn(10, 2, generator=gen)
    ranks = torch.tensor([[0, 1]] * 5 + [[1, 0]] * 5)
    loss = ranking_loss(scores, ranks)
    exp = []
    for b in range(10):
        chosen, rejected = (0, 1) if b < 5 else (1, 0)
        exp.append(neg_logsigmoid(float(scores[b, chosen]) - float(scores[b, rejected])))
    assert float(loss) == pytest.approx(math.fsum(exp) / 10, rel=1e-5, abs=1e-6)
    assert float(ranking_loss(scores, torch.tensor([[0, 1]] * 10))) == pytest.approx(
        math.fsum(neg_logsigmoid(float(s[0] - s[1])) for s in scores) / 10, rel=1e-5
    )


def test_hand_numbers_k3():
    # ranks [0, 1, 2]: pairs (0>1), (0>2), (1>2); scores [2, 1, 0] -> d = 1, 2, 1
    scores = torch.tensor([[2.0, 1.0, 0.0]])
    ranks = torch.tensor([[0, 1, 2]])
    exp = (2 * math.log1p(math.exp(-1.0)) + math.log1p(math.exp(-2.0))) / 3
    assert float(ranking_loss(scores, ranks)) == pytest.approx(exp, rel=1e-6)
    assert float(pairwise_accuracy(scores, ranks)) == 1.0
    assert float(pairwise_accuracy(-scores, ranks)) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ranking_loss_matches_brute_force_mixed_k_and_ties(seed):
    gen = torch.Generator().manual_seed(seed)
    scores, ranks, valid = random_ranked_batch(gen)
    loss = ranking_loss(scores, ranks, valid)
    assert loss.dim() == 0
    assert float(loss) == pytest.approx(brute_loss(scores, ranks, valid), rel=1e-5, abs=1e-6)


def test_all_tied_and_single_response_prompts_are_left_out():
    gen = torch.Generator().manual_seed(4)
    scores, ranks, valid = random_ranked_batch(gen, B=4)
    base = float(ranking_loss(scores, ranks, valid))
    tied_scores = torch.cat([scores, 5.0 * torch.randn(2, scores.shape[1], generator=gen)])
    tied_ranks = torch.cat([ranks, torch.full((2, ranks.shape[1]), 2)])  # prompt 4: all tied
    tied_valid = torch.cat([valid, torch.ones(2, valid.shape[1], dtype=torch.bool)])
    tied_valid[5] = False
    tied_valid[5, 0] = True  # prompt 5: a single valid response
    tied_ranks[5, 0] = 0
    tied_ranks[5, 1] = 1  # an invalid slot with a different rank must not form a pair
    assert float(ranking_loss(tied_scores, tied_ranks, tied_valid)) == pytest.approx(base, rel=1e-6)
    with pytest.raises(ValueError):
        ranking_loss(torch.randn(2, 3), torch.zeros(2, 3, dtype=torch.long))


def test_ties_inside_a_prompt_contribute_nothing():
    # ranks [0, 1, 1]: pairs (0>1), (0>2) only; the 1-vs-2 tie is dropped
    scores = torch.tensor([[0.5, 2.0, -1.0]])
    ranks = torch.tensor([[0, 1, 1]])
    exp = (neg_logsigmoid(0.5 - 2.0) + neg_logsigmoid(0.5 + 1.0)) / 2
    assert float(ranking_loss(scores, ranks)) == pytest.approx(exp, rel=1e-6)
    # swapping the two tied responses' scores changes nothing
    scores2 = torch.tensor([[0.5, -1.0, 2.0]])
    assert float(ranking_loss(scores2, ranks)) == pytest.approx(exp, rel=1e-6)


def test_invariant_to_a_constant_per_prompt():
    gen = torch.Generator().manual_seed(5)
    scores, ranks, valid = random_ranked_batch(gen, dtype=torch.float64)
    shift = 10.0 * torch.randn(scores.shape[0], 1, generator=gen, dtype=torch.float64)
    a, b = ranking_loss(scores, ranks, valid), ranking_loss(scores + shift, ranks, valid)
    assert float(a) == pytest.approx(float(b), rel=1e-12, abs=1e-12)
    # fp32 too, with moderate shifts
    s32 = scores.float()
    a32 = ranking_loss(s32, ranks, valid)
    b32 = ranking_loss(s32 + shift.float().clamp(-3, 3), ranks, valid)
    torch.testing.assert_close(a32, b32, rtol=1e-5, atol=1e-5)


def test_invariant_to_permuting_responses_with_their_ranks():
    gen = torch.Generator().manual_seed(6)
    scores, ranks, valid = random_ranked_batch(gen)
    base = ranking_loss(scores, ranks, valid)
    base_acc = pairwise_accuracy(scores, ranks, valid)
    for _ in range(3):
        perm = torch.argsort(torch.rand(scores.shape, generator=gen), dim=1)
        p = (torch.gather(scores, 1, perm), torch.gather(ranks, 1, perm), torch.gather(valid, 1, perm))
        torch.testing.assert_close(ranking_loss(*p), base, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(pairwise_accuracy(*p), base_acc)
    # permuting the scores alone does change it (so the check has power)
    perm = torch.argsort(torch.rand(scores.shape, generator=gen), dim=1)
    assert abs(float(ranking_loss(torch.gather(scores, 1, perm), ranks, valid)) - float(base)) > 1e-3


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(7)
    scores, ranks, valid = random_ranked_batch(gen, B=3, K=4, dtype=torch.float64, garbage=False)
    s = scores.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: ranking_loss(x, ranks, valid), (s,))


def test_gradient_of_k2_closed_form():
    s = torch.tensor([[1.0, 3.0]], dtype=torch.float64, requires_grad=True)
    ranking_loss(s, torch.tensor([[0, 1]])).backward()
    sig = 1.0 / (1.0 + math.exp(-(1.0 - 3.0)))  # d/d r_chosen of -log sigmoid(r_c - r_r) = sigmoid(d) - 1
    torch.testing.assert_close(s.grad, torch.tensor([[sig - 1.0, 1.0 - sig]], dtype=torch.float64))


def test_padding_slot_scores_do_not_matter_nan_included():
    """Padding slots (valid=False) must not reach the loss or accuracy, whatever their score holds."""
    gen = torch.Generator().manual_seed(8)
    scores, ranks, valid = random_ranked_batch(gen, garbage=False)
    assert (~valid).any()
    base = ranking_loss(scores, ranks, valid)
    base_acc = pairwise_accuracy(scores, ranks, valid)
    for fill in (1e30, -1e30, float("inf"), float("nan")):
        s = torch.where(valid, scores, torch.full_like(scores, fill))
        torch.testing.assert_close(ranking_loss(s, ranks, valid), base, rtol=1e-6, atol=1e-6, msg=f"fill={fill}")
        torch.testing.assert_close(pairwise_accuracy(s, ranks, valid), base_acc, msg=f"fill={fill}")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pairwise_accuracy_vs_brute_force_with_score_ties(seed):
    gen = torch.Generator().manual_seed(seed)
    scores, ranks, valid = random_ranked_batch(gen, B=8)
    scores = torch.where(valid, torch.randint(0, 3, scores.shape, generator=gen).float(), scores)  # many ties
    acc = pairwise_accuracy(scores, ranks, valid)
    exp = brute_accuracy(scores, ranks, valid)
    assert float(acc) == pytest.approx(exp, abs=1e-6)


def test_pairwise_accuracy_hand_numbers():
    # ranks [0, 1, 2]; scores [1, 1, 0]: (0>1) tie -> 1/2, (0>2) ok, (1>2) ok -> 2.5 / 3
    assert float(pairwise_accuracy(torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[0, 1, 2]]))) == pytest.approx(2.5 / 3)
    # two prompts pooled over pairs, not averaged per prompt: 3 pairs (all right) + 1 pair (wrong) -> 3/4
    scores = torch.tensor([[3.0, 2.0, 1.0], [0.0, 1.0, 9.0]])
    ranks = torch.tensor([[0, 1, 2], [0, 1, 0]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    assert float(pairwise_accuracy(scores, ranks, valid)) == pytest.approx(3 / 4)


def test_ranks_from_ordering():
    assert ranks_from_ordering([2, 0, 1]) == [1, 2, 0]
    assert ranks_from_ordering([0]) == [0]
    assert ranks_from_ordering([2, 0, 1], k=5) == [1, 2, 0, -1, -1]
    gen = torch.Generator().manual_seed(9)
    for K in range(1, 8):
        ordering = torch.randperm(K, generator=gen).tolist()
        ranks = ranks_from_ordering(ordering)
        assert sorted(ranks) == list(range(K))
        assert all(ranks[ordering[pos]] == pos for pos in range(K))


@pytest.mark.parametrize("bad", [[0, 0, 1], [1, 2], [0, 2], [-1, 0], [0, 1, 3]])
def test_ranks_from_ordering_rejects_non_permutations(bad):
    with pytest.raises(ValueError):
        ranks_from_ordering(bad)


def test_ranks_from_ordering_rejects_k_smaller_than_ordering():
    with pytest.raises((ValueError, IndexError)):
        ranks_from_ordering([1, 0, 2], k=2)


def test_ranks_from_ordering_feeds_ranking_loss():
    # prompt 0: 4 responses ordered [3, 1, 0, 2]; prompt 1: 2 responses ordered [1, 0], padded to K = 4
    r0 = ranks_from_ordering([3, 1, 0, 2])
    r1 = ranks_from_ordering([1, 0], k=4)
    ranks = torch.tensor([r0, r1])
    valid = ranks >= 0
    scores = torch.tensor([[0.3, 1.0, -2.0, 4.0], [0.0, 2.0, 123.0, -77.0]])
    exp0 = [neg_logsigmoid(float(scores[0, w]) - float(scores[0, l])) for w, l in strict_pairs(r0, [True] * 4)]
    assert len(exp0) == 6
    exp = (math.fsum(exp0) / 6 + neg_logsigmoid(2.0 - 0.0)) / 2
    assert float(ranking_loss(scores, ranks, valid)) == pytest.approx(exp, rel=1e-6)


def brute_grad(scores, ranks, valid):
    """d loss / d scores by a naive loop over strict pairs: d/dd of -log sigmoid(d) = sigmoid(d) - 1."""
    grad = [[0.0] * scores.shape[1] for _ in range(scores.shape[0])]
    prompts = [b for b in range(scores.shape[0]) if strict_pairs(ranks[b].tolist(), valid[b].tolist())]
    for b in prompts:
        pairs = strict_pairs(ranks[b].tolist(), valid[b].tolist())
        for w, l in pairs:
            d = float(scores[b, w]) - float(scores[b, l])
            g = (1.0 / (1.0 + math.exp(-d)) - 1.0) / len(pairs) / len(prompts)
            grad[b][w] += g
            grad[b][l] -= g
    return torch.tensor(grad, dtype=torch.float64)


@pytest.mark.parametrize("fill", [float("nan"), float("inf"), float("-inf"), 1e30])
def test_padding_slot_scores_do_not_reach_the_gradient(fill):
    """A NaN/inf score in a padding slot must leave the gradient of every score finite (and 0 there)."""
    gen = torch.Generator().manual_seed(10)
    scores, ranks, valid = random_ranked_batch(gen, garbage=False)
    assert (~valid).any()
    clean = scores.clone().requires_grad_(True)
    ranking_loss(clean, ranks, valid).backward()
    dirty = torch.where(valid, scores, torch.full_like(scores, fill)).requires_grad_(True)
    loss = ranking_loss(dirty, ranks, valid)
    assert torch.isfinite(loss)
    assert float(loss.detach()) == pytest.approx(brute_loss(scores, ranks, valid), rel=1e-5, abs=1e-6)
    loss.backward()
    assert torch.isfinite(dirty.grad).all(), dirty.grad
    assert torch.all(dirty.grad[~valid] == 0.0)
    exp = brute_grad(scores, ranks, valid)
    torch.testing.assert_close(dirty.grad.double(), exp, rtol=0, atol=1e-6)
    torch.testing.assert_close(dirty.grad, clean.grad, rtol=0, atol=1e-7)
    acc = pairwise_accuracy(dirty, ranks, valid)
    assert float(acc) == pytest.approx(brute_accuracy(scores, ranks, valid), abs=1e-6)
