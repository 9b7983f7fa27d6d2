"""The generic labeler: Plackett-Luce frequencies against their closed forms, limits, the judge.

The closed forms are written out here with math.exp, independently of the code under test, and
sampled frequencies must fall within 4 standard errors of them.
"""

import math
import random

import pytest

from rlhf_dist.tasks.labeler import Labeler, agreement_with_gold, plackett_luce_ranking


def within_4_se(count, n, p):
    se = math.sqrt(p * (1 - p) / n)
    return abs(count / n - p) <= 4 * se


@pytest.mark.parametrize("g1, g2, temperature", [(0.7, 0.5, 0.1), (0.3, 0.9, 0.2), (0.5, 0.45, 0.05), (1.0, 0.0, 1.0)])
def test_k2_frequencies_match_bradley_terry(g1, g2, temperature):
    rng = random.Random(0)
    n = 20_000
    first = sum(plackett_luce_ranking([g1, g2], temperature, rng)[0] == 0 for _ in range(n))
    p = 1 / (1 + math.exp(-(g1 - g2) / temperature))
    assert within_4_se(first, n, p), (first / n, p)


def test_k3_full_ranking_probability():
    scores, t = [0.9, 0.6, 0.2], 0.25
    w = [math.exp(s / t) for s in scores]
    # P(order 1, 0, 2) = w1 / (w0 + w1 + w2) * w0 / (w0 + w2)
    p = w[1] / sum(w) * w[0] / (w[0] + w[2])
    rng = random.Random(1)
    n = 20_000
    hits = sum(plackett_luce_ranking(scores, t, rng) == [1, 0, 2] for _ in range(n))
    assert within_4_se(hits, n, p), (hits / n, p)


def test_rankings_are_permutations():
    rng = random.Random(2)
    for k in range(1, 8):
        scores = [rng.random() for _ in range(k)]
        assert sorted(plackett_luce_ranking(scores, 0.1, rng)) == list(range(k))


@pytest.mark.parametrize("temperature", [0.0, 1e-6])
def test_zero_temperature_gives_the_gold_order(temperature):
    rng = random.Random(3)
    for _ in range(200):
        assert plackett_luce_ranking([0.2, 0.9, 0.5, 0.55], temperature, rng) == [1, 3, 2, 0]


def test_zero_temperature_breaks_ties_both_ways():
    rng = random.Random(4)
    firsts = {plackett_luce_ranking([0.5, 0.5, 0.1], 0.0, rng)[0] for _ in range(100)}
    assert firsts == {0, 1}


def test_high_temperature_is_a_coin_flip():
    rng = random.Random(5)
    n = 20_000
    first = sum(plackett_luce_ranking([1.0, 0.0], 1e6, rng)[0] == 0 for _ in range(n))
    assert within_4_se(first, n, 0.5)


def by_length(prompt, response):
    """A toy gold score: the labeler must work on any score function, not one task's."""
    return len(response) / 10


def test_labeler_ranks_with_any_score_function():
    labeler = Labeler(by_length, temperature=0.0)
    assert labeler.rank("p", ["aa", "aaaa", "a"], random.Random(0)) == [1, 0, 2]


def test_judge_ties_and_extremes():
    labeler = Labeler(by_length, temperature=0.1)
    rng = random.Random(6)
    assert labeler.judge("p", "abc", "xyz", rng) == 0.5  # equal gold: a tie, counted half
    assert labeler.win_probability("p", "abc", "xyz") == 0.5
    sharp = Labeler(by_length, temperature=0.0)
    assert sharp.judge("p", "abcd", "a", rng) == 1.0
    assert sharp.judge("p", "a", "abcd", rng) == 0.0


def test_judge_samples_bradley_terry():
    labeler = Labeler(by_length, temperature=0.1)
    rng = random.Random(7)
    n = 20_000
    wins = sum(labeler.judge("p", "aa", "a", rng) for _ in range(n))  # gold 0.2 vs 0.1
    p = 1 / (1 + math.exp(-1.0))
    assert labeler.win_probability("p", "aa", "a") == pytest.approx(p)
    assert within_4_se(wins, n, p)


def test_agreement_with_gold_excludes_ties():
    pairs = [(0.9, 0.1), (0.2, 0.8), (0.5, 0.5)]
    sharp = agreement_with_gold(pairs, 0.0, random.Random(8))
    assert (sharp["sampled"], sharp["expected"], sharp["pairs"], sharp["ties_excluded"]) == (1.0, 1.0, 2, 1)
    noisy = agreement_with_gold(pairs, 0.1, random.Random(8))
    # gaps 0.8 and 0.6 at T = 0.1
    assert noisy["expected"] == pytest.approx((1 / (1 + math.exp(-8.0)) + 1 / (1 + math.exp(-6.0))) / 2)
    assert agreement_with_gold([(0.3, 0.3)], 0.1, random.Random(0))["sampled"] is None
