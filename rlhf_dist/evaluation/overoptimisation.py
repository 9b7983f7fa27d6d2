"""Reward-model over-optimisation, measured (Gao et al. 2022, arXiv 2210.10760): best-of-n's
unbiased estimator and KL, the shape of a gold/proxy curve, and the plot. The PPO runs of the
study train, so they are a recipe (rlhf_dist/recipes/overopt.py, `rlhf-dist overopt`).

Each method optimises the proxy (the RM) from the SFT policy and is measured by the proxy and by
the hidden gold scorer as a function of d = sqrt(KL(pi || pi_SFT)); where the proxy is
exploited, the proxy keeps rising while gold peaks and falls.
"""

from __future__ import annotations

import math
from pathlib import Path

from rlhf_dist.config.evaluation import OveroptConfig
from rlhf_dist.evaluation.sample_and_score import sample_and_score, subprocess_sampler


def kl_bon(n: int) -> float:
    """KL(best-of-n || base) for a continuous reward, in nats: log n - (n - 1)/n (Gao et al. sec. 2;
    an upper bound when rewards tie)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_expectation(proxy: list[float], values: list[float], n: int) -> float:
    """E[value of the sample with the highest proxy among n drawn without replacement from these N].

    Unbiased estimator (Gao et al. appendix): with the N samples sorted by proxy ascending,
    sum_{i=n}^{N} C(i-1, n-1) / C(N, n) * value_(i): sample i is the best of a random n-subset
    exactly when the other n - 1 members come from the i - 1 samples below it. Proxy ties are
    broken by position (stable sort).
    """
    N = len(proxy)
    if not 1 <= n <= N:
        raise ValueError(f"best-of-{n} needs 1 <= n <= N = {N}")
    order = sorted(range(N), key=lambda i: proxy[i])
    total = math.comb(N, n)
    return sum(math.comb(i - 1, n - 1) / total * values[order[i - 1]] for i in range(n, N + 1))


def curve_shape(points: list[dict]) -> dict:
    """Start, gold peak and end of one method's curve (points in training order, each with kl,
    gold, proxy): what Gao et al.'s figures show. `gold_drop` is how far gold fell from its peak
    by the end; `proxy_rise` how much the proxy still gained over the same stretch. Over-optimised:
    both positive (the proxy keeps rising while gold falls)."""
    if not points:
        raise ValueError("curve_shape needs at least one point")
    start, end = points[0], points[-1]
    peak = max(points, key=lambda p: p["gold"])  # the first of equal maxima
    return {
        "start": {k: start[k] for k in ("kl", "gold", "proxy")},
        "peak": {k: peak[k] for k in ("kl", "gold", "proxy")},
        "end": {k: end[k] for k in ("kl", "gold", "proxy")},
        "gold_drop": peak["gold"] - end["gold"],
        "proxy_rise": end["proxy"] - peak["proxy"],
        "overoptimised": peak["gold"] - end["gold"] > 0 and end["proxy"] - peak["proxy"] > 0,
    }


def describe_shape(method: str, s: dict) -> str:
    """One line for the log: where gold peaked and how far it fell while the proxy rose."""
    st, pk, en = s["start"], s["peak"], s["end"]
    verdict = ("proxy still rising while gold falls: over-optimised" if s["overoptimised"]
               else "no fall of gold with a rising proxy")
    return (f"{method}: gold {st['gold']:.3f} -> peak {pk['gold']:.3f} (KL {pk['kl']:.2f}) -> {en['gold']:.3f} "
            f"(KL {en['kl']:.2f}); proxy {st['proxy']:.3f} -> {pk['proxy']:.3f} -> {en['proxy']:.3f}: {verdict}")


def best_of_n_curve(cfg: OveroptConfig, task) -> list[dict]:
    """Sample max(bon_n) responses per held-out prompt from the SFT model; score them with the RM
    and the gold scorer; for each n the expected proxy and gold of best-of-n, averaged over prompts."""
    from rlhf_dist.data import format_prompts, load_prompts
    from rlhf_dist.engines.scoring import RewardEngine
    from rlhf_dist.models import load_tokenizer

    tok = load_tokenizer(cfg.sft)
    prompts = load_prompts(Path(cfg.data) / "eval_prompts.jsonl")[: cfg.eval_prompts]
    N = max(cfg.bon_n)
    ids = format_prompts(tok, prompts)
    s = sample_and_score(subprocess_sampler(cfg.sft, cfg.temperature, cfg.max_new_tokens, cfg.seed),
                         [p for p in prompts for _ in range(N)], [p for p in ids for _ in range(N)], task, tok,
                         reward=RewardEngine(cfg.reward_model, tok.pad_token_id).score)
    gold, proxy = s.gold, s.proxy
    points = []
    for n in cfg.bon_n:
        g = p = 0.0
        for k in range(len(prompts)):
            sl = slice(k * N, (k + 1) * N)
            g += best_of_n_expectation(proxy[sl], gold[sl], n)
            p += best_of_n_expectation(proxy[sl], proxy[sl], n)
        points.append({"method": "best-of-n", "n": n, "kl": kl_bon(n), "gold": g / len(prompts), "proxy": p / len(prompts)})
    return points


def methods_of(points: list[dict]) -> list[str]:
    """The curves in `points`, best-of-n first, then the PPO runs by name."""
    return sorted({p["method"] for p in points}, key=lambda m: (m != "best-of-n", m))


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in methods_of(points):
        pts = [p for p in points if p["method"] == method]
        d = [math.sqrt(p["kl"]) for p in pts]
        style = dict(marker="s" if method == "best-of-n" else "o", linestyle="--" if method == "best-of-n" else "-")
        axes[0].plot(d, [p["gold"] for p in pts], label=method, **style)
        axes[1].plot(d, [p["proxy"] for p in pts], label=method, **style)
    for ax, name in zip(axes, ("gold score (hidden labeler)", "proxy score (reward model)")):
        ax.set_xlabel("sqrt(KL(policy || SFT))  [sqrt nats]")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].set_title("gold score vs distance from SFT", fontsize=10)
    axes[1].set_title("proxy (RM) score vs distance from SFT", fontsize=10)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
