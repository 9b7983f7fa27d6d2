"""The over-optimisation math (rlhf_dist/evaluation/overoptimisation.py): the best-of-n estimator
and the KL of best-of-n against brute force, and the shape of a gold/proxy curve."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from rlhf_dist.evaluation.overoptimisation import best_of_n_expectation, kl_bon


@pytest.mark.parametrize("N, n", [(9, 1), (9, 4), (9, 9), (6, 3), (7, 2)])
def test_best_of_n_estimator_equals_brute_force_over_all_subsets(N, n):
    rng = random.Random(N * 10 + n)
    proxy = [rng.random() for _ in range(N)]
    gold = [rng.random() for _ in range(N)]
    subsets = list(itertools.combinations(range(N), n))
    brute = sum(gold[max(s, key=lambda i: proxy[i])] for s in subsets) / len(subsets)
    assert abs(best_of_n_expectation(proxy, gold, n) - brute) < 1e-12


def test_best_of_n_of_the_proxy_itself_grows_with_n():
    rng = random.Random(0)
    proxy = [rng.gauss(0, 1) for _ in range(16)]
    values = [best_of_n_expectation(proxy, proxy, n) for n in (1, 2, 4, 8, 16)]
    assert values == sorted(values) and abs(values[0] - sum(proxy) / 16) < 1e-12 and values[-1] == max(proxy)


def test_kl_bon_matches_the_exact_kl_of_best_of_n_over_a_fine_continuous_base():
    """Exact KL of best-of-n over M equally likely distinct outcomes: the i-th smallest (1-based)
    has probability (i^n - (i-1)^n) / M^n; KL = sum p log(p * M). Tends to log n - (n-1)/n."""
    M = 200_000
    for n in (1, 2, 4, 16, 64):
        kl = 0.0
        for i in range(1, M + 1):
            p = (i / M) ** n - ((i - 1) / M) ** n
            if p > 0:
                kl += p * math.log(p * M)
        assert abs(kl - kl_bon(n)) < 1e-4, (n, kl, kl_bon(n))
    with pytest.raises(ValueError):
        kl_bon(0)


def test_curve_shape_finds_the_gold_peak_and_the_fall_after_it():
    from rlhf_dist.evaluation.overoptimisation import curve_shape

    pts = [{"kl": 0.0, "gold": 0.30, "proxy": -0.2}, {"kl": 1.0, "gold": 0.60, "proxy": 1.0},
           {"kl": 2.0, "gold": 0.61, "proxy": 1.4}, {"kl": 4.0, "gold": 0.50, "proxy": 1.5}]
    s = curve_shape(pts)
    assert s["start"] == {"kl": 0.0, "gold": 0.30, "proxy": -0.2}
    assert s["peak"] == {"kl": 2.0, "gold": 0.61, "proxy": 1.4}
    assert s["end"] == {"kl": 4.0, "gold": 0.50, "proxy": 1.5}
    assert s["gold_drop"] == pytest.approx(0.11) and s["proxy_rise"] == pytest.approx(0.1)
    assert s["overoptimised"] is True
    rising = curve_shape(pts[:3])  # gold peaks at the end: nothing fell
    assert rising["gold_drop"] == 0.0 and rising["overoptimised"] is False
    both_fall = curve_shape(pts[:3] + [{"kl": 4.0, "gold": 0.5, "proxy": 1.3}])  # the proxy fell too
    assert both_fall["overoptimised"] is False
    with pytest.raises(ValueError):
        curve_shape([])
