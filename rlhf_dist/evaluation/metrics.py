"""Evaluation statistics (pure Python): intervals of means and win rates, what a scorer sees of
each gold part, and the labeler's own agreement with its rankings (the ceiling of any RM)."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def standard_error(xs: list[float]) -> float:
    """s / sqrt(n) of a mean (0 for n < 2): the gold score's sampling error over prompts."""
    n = len(xs)
    if n < 2:
        return 0.0
    mean = sum(xs) / n
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1) / n)


def mean_ci95(outcomes: list[float]) -> tuple[float, float, float]:
    """(mean, lo, hi): the normal-approximation (Wald) 95% interval of a mean, clipped to [0, 1].

    mean +- Z95 * s / sqrt(n), s the sample standard deviation (n - 1 in the denominator). Chosen
    over Wilson because the outcomes are not Bernoulli (ties give 0.5), and at the hundreds of
    prompts an evaluation uses the normal approximation is accurate. Caveat: when every outcome
    is the same (a tiny n) s = 0 and the interval has zero width; with n = 1 it is [0, 1].
    """
    mean = sum(outcomes) / len(outcomes)
    if len(outcomes) < 2:
        return mean, 0.0, 1.0
    half = Z95 * standard_error(outcomes)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def fair_coin_ci95(n: int) -> tuple[float, float, float]:
    """(0.5, lo, hi): the interval a fair coin's win rate has on n prompts (sd 0.5, no ties).

    Used for the baseline against itself, whose win rate is 0.5 by definition. Judging its samples
    against themselves would give all ties, an interval of width 0 that looks like certainty; a
    second, independent sample set would cost a sampling pass and only add noise around a known
    value. The fair-coin width is the noise floor the other models' intervals are read against.
    """
    half = Z95 * 0.5 / math.sqrt(n)
    return 0.5, max(0.0, 0.5 - half), min(1.0, 0.5 + half)


def mean_parts(parts: list[dict]) -> dict[str, float]:
    """Mean of each gold part (`tasks.base.gold_parts`) over a model's responses."""
    return {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]} if parts else {}


def seen_alone(by_part: dict[str, dict], min_pairs: int = 30) -> dict[str, float]:
    """{part: the RM's agreement with gold on pairs differing in it alone}, over the parts of
    `accuracy_by_part` with at least `min_pairs` such pairs (fewer says little)."""
    return {k: v["only_accuracy"] for k, v in by_part.items() if v["only_pairs"] >= min_pairs}


def accuracy_by_part(parts: list[list[dict]], scores: list[list[float]], implied: float = 0.95) -> dict[str, dict]:
    """What a scorer (the RM) sees of each gold part: where an RM is blind, PPO cannot improve.

    parts[c][k]: gold parts of response k to prompt c (with "total"); scores[c][k]: its score.
    Over every pair of responses to one prompt whose gold totals differ, for each part p but
    the total:
      pairs, accuracy: the pairs where p differs, and the share the scorer orders as the gold
          total does (a tie in scores counts half);
      only_pairs, only_accuracy: the same over the pairs where nothing else differs but the
          parts that move with p (those that differ in >= `implied` of the pairs where p does,
          like a sub-total it feeds: "helpful" moves with "correct"). The telling figure: on
          pairs that differ in correctness alone, does the RM prefer the right answer?
    -> {p: {"pairs", "accuracy", "only_pairs", "only_accuracy", "moves_with"}}; only_accuracy
    is None when no pair differs in p alone.
    """
    pairs: list[tuple[frozenset, float]] = []  # (parts that differ, the scorer's credit)
    for ps, ss in zip(parts, scores):
        for i in range(len(ps)):
            for j in range(i + 1, len(ps)):
                gold = ps[i]["total"] - ps[j]["total"]
                if gold == 0:
                    continue
                score = ss[i] - ss[j]
                right = 0.5 if score == 0 else float((score > 0) == (gold > 0))
                pairs.append((frozenset(k for k in ps[i] if k != "total" and ps[i][k] != ps[j][k]), right))
    names = sorted({k for d, _ in pairs for k in d})
    out = {}
    for p in names:
        with_p = [(d, r) for d, r in pairs if p in d]
        moves = {q for q in names if sum(q in d for d, _ in with_p) >= implied * len(with_p)}
        only = [r for d, r in with_p if d <= moves]
        out[p] = {"pairs": len(with_p), "accuracy": sum(r for _, r in with_p) / len(with_p),
                  "only_pairs": len(only), "only_accuracy": sum(only) / len(only) if only else None,
                  "moves_with": sorted(moves - {p})}
    return out


def labeler_ceiling(comparisons, task) -> float:
    """Accuracy of the hidden gold scorer itself against the (noisy) recorded rankings: the best
    pairwise accuracy any reward model can expect on these labels. Gold ties count one half."""
    from rlhf_dist.algo import ranks_from_ordering
    from rlhf_dist.data import prompt_text

    correct = total = 0.0
    for c in comparisons:
        gold = [task.gold_score(prompt_text(c.prompt), r) for r in c.responses]
        ranks = ranks_from_ordering(c.ranking)
        for i in range(len(gold)):
            for j in range(len(gold)):
                if ranks[i] < ranks[j]:
                    total += 1
                    correct += 1.0 if gold[i] > gold[j] else 0.5 if gold[i] == gold[j] else 0.0
    return correct / total
