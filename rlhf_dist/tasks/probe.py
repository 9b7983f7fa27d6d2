"""A deliberately shallow reward model, to measure what the comparisons teach about surface form.

A Bradley-Terry model r(y) = w . phi(y) over the response's word unigrams and bigrams only: it
never sees the prompt, so it cannot learn correctness, only the surface features that travel
with good answers in the labels. If it scores the task's exploit response above the
demonstrations while gold scores it below them, the labels carry an exploitable surface cue:
the hackability check of the issue, measured without a neural RM. Task-independent, stdlib only.
"""

from __future__ import annotations

import math
import random
import re
from collections import defaultdict
from typing import Iterable, Sequence

_WORD = re.compile(r"\w+")


def features(response: str) -> list[str]:
    """Word unigrams and bigrams, lower-cased, with a start and an end marker."""
    ws = ["<s>"] + _WORD.findall(response.lower()) + ["</s>"]
    return ws[1:-1] + [f"{a} {b}" for a, b in zip(ws, ws[1:])]


def ranking_pairs(rows: Iterable[dict]) -> list[tuple[str, str]]:
    """(better, worse) response pairs: all K-choose-2 pairs of every ranking, as the RM loss uses."""
    pairs = []
    for row in rows:
        order = [row["responses"][i] for i in row["ranking"]]
        pairs += [(order[i], order[j]) for i in range(len(order)) for j in range(i + 1, len(order))]
    return pairs


class BagOfWordsRM:
    """Logistic regression on feature-count differences: P(a > b) = sigmoid(r(a) - r(b))."""

    def __init__(self, l2: float = 1e-4):
        self.weights: dict[str, float] = defaultdict(float)
        self.l2 = l2

    def score(self, response: str) -> float:
        return sum(self.weights.get(f, 0.0) for f in features(response))

    def fit(self, pairs: Sequence[tuple[str, str]], epochs: int = 4, lr: float = 0.05, seed: int = 0) -> "BagOfWordsRM":
        """Plain SGD on -log sigmoid(r(better) - r(worse)), pairs shuffled each epoch."""
        rng = random.Random(seed)
        diffs = [_difference(features(a), features(b)) for a, b in pairs]
        order = list(range(len(diffs)))
        for _ in range(epochs):
            rng.shuffle(order)
            for i in order:
                diff = diffs[i]
                margin = sum(self.weights[f] * c for f, c in diff)
                grad = -1.0 / (1.0 + math.exp(min(margin, 50.0)))  # d/dmargin of -log sigmoid(margin)
                for f, c in diff:
                    self.weights[f] -= lr * (grad * c + self.l2 * self.weights[f])
        return self

    def accuracy(self, pairs: Sequence[tuple[str, str]]) -> float:
        """Fraction of (better, worse) pairs scored in that order (ties count half)."""
        if not pairs:
            return float("nan")
        hits = 0.0
        for a, b in pairs:
            ra, rb = self.score(a), self.score(b)
            hits += 1.0 if ra > rb else 0.5 if ra == rb else 0.0
        return hits / len(pairs)

    def top_features(self, n: int = 8) -> list[tuple[str, float]]:
        """The n features with the largest weights (what the labels reward), ties by name."""
        return sorted(self.weights.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def _difference(fa: list[str], fb: list[str]) -> list[tuple[str, int]]:
    """Sparse count difference phi(a) - phi(b), sorted by feature (deterministic order)."""
    counts: dict[str, int] = defaultdict(int)
    for f in fa:
        counts[f] += 1
    for f in fb:
        counts[f] -= 1
    return sorted((f, c) for f, c in counts.items() if c)
