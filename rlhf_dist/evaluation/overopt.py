"""Reward-model over-optimisation, after Gao et al. 2022 (arXiv 2210.10760).

    rlhf-dist overopt --out runs/overopt sft=runs/sft/model reward_model=runs/rm/model data=runs/data
    ... kl_coefs=[0.0,0.05,0.2] bon_n=[1,2,4,8,16] iterations=40

Two ways of optimising the proxy (the RM) from the SFT policy, each measured by the proxy and by
the hidden gold scorer as a function of d = sqrt(KL(pi || pi_SFT)):
- PPO with several KL coefficients (0 included): held-out evaluations along training give
  (KL, proxy, gold) points;
- best-of-n sampling for several n: from N samples per prompt, the unbiased estimator of the
  expected gold and proxy of the proxy's argmax among n (`best_of_n_expectation`), at the
  analytic KL_bon = log n - (n - 1)/n.
Where the proxy is exploited, the proxy keeps rising while gold peaks and falls.
Writes overopt.json and overopt.png in `out`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_dist.config import parse_cli
from rlhf_dist.tasks.base import DEFAULT_TASK


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


@dataclass
class OveroptConfig:
    out: str = field(default="runs/overopt", metadata={"help": "output folder"})
    sft: str = field(default="", metadata={"help": "SFT model folder (the starting policy and KL reference)"})
    reward_model: str = field(default="", metadata={"help": "the proxy reward model folder"})
    data: str = field(default="", metadata={"help": "task-data folder (rl_prompts.jsonl, eval_prompts.jsonl)"})
    task: str = field(default=DEFAULT_TASK, metadata={"help": "task whose gold scorer is the ground truth"})
    kl_coefs: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.2], metadata={"help": "PPO runs, one per KL coefficient"})
    iterations: int = field(default=40, metadata={"help": "PPO iterations per run"})
    eval_every: int = field(default=5, metadata={"help": "iterations between held-out evaluations (points on the curve)"})
    eval_prompts: int = field(default=128, metadata={"help": "held-out prompts per evaluation and for best-of-n"})
    bon_n: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16], metadata={"help": "best-of-n values (N = the largest)"})
    ppo_config: str = field(default="configs/tiny.yaml", metadata={"help": "base config for the PPO runs"})
    ppo_overrides: list[str] = field(default_factory=list, metadata={"help": "extra key=value for every PPO run"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature (PPO rollouts and best-of-n)"})
    max_new_tokens: int = field(default=32, metadata={"help": "response budget"})
    seed: int = field(default=0, metadata={"help": "seed"})


def best_of_n_curve(cfg: OveroptConfig, task) -> list[dict]:
    """Sample max(bon_n) responses per held-out prompt from the SFT model; score them with the RM
    and the gold scorer; for each n the expected proxy and gold of best-of-n, averaged over prompts."""
    from rlhf_dist.buffer import rollouts_to_batch
    from rlhf_dist.data import format_prompts, load_prompts, prompt_text
    from rlhf_dist.engines.scoring import RewardEngine
    from rlhf_dist.evaluation.gold import sample_responses
    from rlhf_dist.models import load_tokenizer

    tok = load_tokenizer(cfg.sft)
    prompts = load_prompts(Path(cfg.data) / "eval_prompts.jsonl")[: cfg.eval_prompts]
    N = max(cfg.bon_n)
    ids = format_prompts(tok, prompts)
    rollouts = sample_responses(cfg.sft, [p for p in ids for _ in range(N)], cfg.temperature, cfg.max_new_tokens, cfg.seed)
    texts = tok.batch_decode([r.response_ids for r in rollouts], skip_special_tokens=True)
    gold = [float(task.gold_score(prompt_text(prompts[k // N]), t)) for k, t in enumerate(texts)]
    table = rollouts_to_batch(rollouts, [k // N for k in range(len(rollouts))], 0, 0)
    proxy = RewardEngine(cfg.reward_model, tok.pad_token_id).score(table).tolist()
    points = []
    for n in cfg.bon_n:
        g = p = 0.0
        for k in range(len(prompts)):
            sl = slice(k * N, (k + 1) * N)
            g += best_of_n_expectation(proxy[sl], gold[sl], n)
            p += best_of_n_expectation(proxy[sl], proxy[sl], n)
        points.append({"method": "best-of-n", "n": n, "kl": kl_bon(n), "gold": g / len(prompts), "proxy": p / len(prompts)})
    return points


def ppo_curves(cfg: OveroptConfig) -> list[dict]:
    """One PPO run per KL coefficient; every held-out evaluation of a run is a point."""
    from rlhf_dist.config import load_config
    from rlhf_dist.recipes.ppo import PPOConfig, train_ppo

    points = []
    for beta in cfg.kl_coefs:
        out = Path(cfg.out) / f"ppo_kl{beta:g}"
        print(f"\n-- PPO with beta = {beta:g} ({cfg.iterations} iterations)", flush=True)
        run = load_config(PPOConfig, cfg.ppo_config, [
            f"out={out}", f"sft={cfg.sft}", f"reward_model={cfg.reward_model}", f"data={cfg.data}", f"task={cfg.task}",
            f"seed={cfg.seed}", f"iterations={cfg.iterations}", f"eval_every={cfg.eval_every}", f"eval_prompts={cfg.eval_prompts}",
            f"ppo.kl_coef={beta}", f"rollout.temperature={cfg.temperature}", f"rollout.max_new_tokens={cfg.max_new_tokens}",
            "write_trajectories=false", *cfg.ppo_overrides])
        summary = train_ppo(run)
        for e in summary["eval"].values():
            points.append({"method": f"PPO beta={beta:g}", "beta": beta, "iteration": e["iteration"], "kl": max(e["kl"], 0.0),
                           "gold": e["gold"], "proxy": e["proxy"]})
    return sorted(points, key=lambda p: (p["method"], p["iteration"]))


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


def run_overopt(cfg: OveroptConfig) -> dict:
    from rlhf_dist.tasks.base import load_task

    if not cfg.sft or not cfg.reward_model or not cfg.data:
        raise ValueError("overopt needs sft=, reward_model= and data=")
    task = load_task(cfg.task)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"-- best-of-n from the SFT model: n in {cfg.bon_n} on {cfg.eval_prompts} held-out prompts", flush=True)
    points = best_of_n_curve(cfg, task) + ppo_curves(cfg)
    in_order = lambda p: p.get("iteration", p.get("n"))  # training order, or n of best-of-n
    shapes = {m: curve_shape(sorted((p for p in points if p["method"] == m), key=in_order)) for m in methods_of(points)}
    result = {"points": points, "shapes": shapes, "config": {k: v for k, v in vars(cfg).items()}}
    (out / "overopt.json").write_text(json.dumps(result, indent=2))
    plot(points, out / "overopt.png")
    print()
    for m, s in shapes.items():
        print("   " + describe_shape(m, s))
    print(f"\nwrote {out / 'overopt.json'} and {out / 'overopt.png'}")
    return result


def main(argv: list[str]) -> int:
    run_overopt(parse_cli(OveroptConfig, argv, "rlhf-dist overopt", __doc__))
    return 0
