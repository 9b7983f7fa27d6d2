"""A simulated labeler built on any gold scorer: noisy K-way rankings and a pairwise judge.

People disagree with each other (InstructGPT reports ~73% inter-labeler agreement, Ouyang et al.
2022 sec. 5.1), so rankings are sampled, not sorted: a Plackett-Luce model over the gold scores,

    P(i is ranked first among S) = exp(g_i / T) / sum_{j in S} exp(g_j / T),

then the same rule again on the rest (Plackett 1975; Luce 1959). For K = 2 this is Bradley-Terry:
P(a over b) = sigmoid((g_a - g_b) / T). T -> 0 gives the gold order; large T gives coin flips.

Nothing here knows about a particular task: `Labeler(score_fn, temperature)` takes any
`score_fn(prompt, response) -> float`, and `Labeler.for_task(task)` uses a task's gold_score.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Sequence

from rlhf_dist.config.fields import DEFAULT_LABELER_TEMPERATURE as DEFAULT_TEMPERATURE  # 0.1 gold gap: preferred 73%

TIE_EPS = 1e-9  # gold scores closer than this are a tie

ScoreFn = Callable[[str, str], float]


def sigmoid(x: float) -> float:
    """Numerically safe logistic function."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def plackett_luce_ranking(scores: Sequence[float], temperature: float, rng: random.Random) -> list[int]:
    """Indices of `scores` best first, sampled from Plackett-Luce with logits scores / temperature.

    temperature <= 0 means a noiseless labeler: the gold order, ties broken at random (an
    arbitrary but unbiased choice, so equal responses are not always ranked by position).
    """
    remaining = list(range(len(scores)))
    if temperature <= 0:
        rng.shuffle(remaining)  # random tie-breaking; the sort below is stable
        return sorted(remaining, key=lambda i: -scores[i])
    ranking = []
    while remaining:
        logits = [scores[i] / temperature for i in remaining]
        top = max(logits)
        weights = [math.exp(x - top) for x in logits]  # shift by the max: no overflow
        pick = _sample_index(weights, rng)
        ranking.append(remaining.pop(pick))
    return ranking


def _sample_index(weights: Sequence[float], rng: random.Random) -> int:
    """One index drawn with probability proportional to `weights` (all >= 0, max > 0)."""
    u = rng.random() * sum(weights)
    acc = 0.0
    for i, w in enumerate(weights):
        acc += w
        if u < acc:
            return i
    return len(weights) - 1  # u landed on the rounding gap at the top end


class Labeler:
    """Ranks K responses and judges pairs, with the noise of a Plackett-Luce labeler."""

    def __init__(self, score_fn: ScoreFn, temperature: float = DEFAULT_TEMPERATURE):
        self.score_fn = score_fn
        self.temperature = float(temperature)

    @classmethod
    def for_task(cls, task, temperature: float = DEFAULT_TEMPERATURE) -> "Labeler":
        """A labeler whose hidden preferences are `task.gold_score`."""
        return cls(task.gold_score, temperature)

    def rank(self, prompt: str, responses: Sequence[str], rng: random.Random) -> list[int]:
        """Indices of `responses`, best first, as one sampled labeler would rank them."""
        scores = [self.score_fn(prompt, r) for r in responses]
        return plackett_luce_ranking(scores, self.temperature, rng)

    def win_probability(self, prompt: str, a: str, b: str) -> float:
        """P(the labeler prefers a over b) = sigmoid((g_a - g_b) / T); 0.5 on a tie. The
        expectation of `judge`: use it for win rates with less variance than sampling."""
        ga, gb = self.score_fn(prompt, a), self.score_fn(prompt, b)
        if abs(ga - gb) <= TIE_EPS:
            return 0.5
        if self.temperature <= 0:
            return 1.0 if ga > gb else 0.0
        return sigmoid((ga - gb) / self.temperature)

    def judge(self, prompt: str, a: str, b: str, rng: random.Random) -> float:
        """One labeler's verdict for a win rate: 1.0 if a wins, 0.0 if b wins, 0.5 on a gold tie.

        Decision: a tie is scored 0.5 outright rather than by a coin flip: the expectation is the
        same and the variance is lower, and identical responses are a tie, not a win for either.
        Otherwise the verdict is sampled (Bradley-Terry), so win rates carry the labeler's noise as
        InstructGPT's human win rates do; T = 0 gives the noiseless gold comparison.
        """
        p = self.win_probability(prompt, a, b)
        if p == 0.5:
            return 0.5
        return 1.0 if rng.random() < p else 0.0


def agreement_with_gold(gold_pairs: Sequence[tuple[float, float]], temperature: float,
                        rng: random.Random) -> dict:
    """How often a K=2 labeler picks the higher-gold response, over pairs of gold scores (ties
    excluded): the sampled fraction and its expectation mean(sigmoid(|g_a - g_b| / T))."""
    hits, expected, n = 0, 0.0, 0
    for ga, gb in gold_pairs:
        if abs(ga - gb) <= TIE_EPS:
            continue
        first = plackett_luce_ranking([ga, gb], temperature, rng)[0]
        hits += int((first == 0) == (ga > gb))
        expected += 1.0 if temperature <= 0 else sigmoid(abs(ga - gb) / temperature)
        n += 1
    return {
        "pairs": n,
        "ties_excluded": len(gold_pairs) - n,
        "sampled": hits / n if n else None,  # None, not NaN: the manifest must stay valid JSON
        "expected": expected / n if n else None,
    }
