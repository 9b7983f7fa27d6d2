"""`rlhf-dist overopt`: reward-model over-optimisation, after Gao et al. 2022 (arXiv 2210.10760).

    rlhf-dist overopt --out runs/overopt sft=runs/sft/model reward_model=runs/rm/model data=runs/data
    ... kl_coefs=[0.0,0.05,0.2] bon_n=[1,2,4,8,16] iterations=40

Two ways of optimising the proxy (the RM) from the SFT policy, each measured by the proxy and by
the hidden gold scorer as a function of d = sqrt(KL(pi || pi_SFT)):
- PPO with several KL coefficients (0 included): held-out evaluations along training give
  (KL, proxy, gold) points;
- best-of-n sampling for several n: from N samples per prompt, the unbiased estimator of the
  expected gold and proxy of the proxy's argmax among n, at the analytic KL_bon = log n - (n - 1)/n
  (rlhf_dist/evaluation/overoptimisation.py).
Where the proxy is exploited, the proxy keeps rising while gold peaks and falls.
Writes overopt.json and overopt.png in `out`.
"""

from __future__ import annotations

from pathlib import Path

from rlhf_dist.config import derive, load_config, parse_cli, with_overrides
from rlhf_dist.config.evaluation import OveroptConfig
from rlhf_dist.config.ppo import PPOConfig
from rlhf_dist.evaluation.overoptimisation import best_of_n_curve, curve_shape, describe_shape, methods_of, plot


def ppo_base_config(cfg: OveroptConfig) -> PPOConfig:
    """The study's PPO settings, typed: `ppo_config`, then the user's `ppo_overrides` on top (checked
    against PPOConfig's keys when the study's config was loaded)."""
    return with_overrides(load_config(PPOConfig, cfg.ppo_config, values={"out": cfg.out}), cfg.ppo_overrides,
                          "ppo_overrides")


def ppo_run_config(cfg: OveroptConfig, beta: float, base: PPOConfig) -> PPOConfig:
    """The PPO run at KL coefficient `beta`: `base` with the study's models, data and schedule."""
    return derive(base, out=str(Path(cfg.out) / f"ppo_kl{beta:g}"), sft=cfg.sft, reward_model=cfg.reward_model,
                  data=cfg.data, task=cfg.task, seed=cfg.seed, iterations=cfg.iterations, eval_every=cfg.eval_every,
                  eval_prompts=cfg.eval_prompts, write_trajectories=False, overwrite=True, ppo={"kl_coef": beta},
                  rollout={"temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens})


def ppo_curves(cfg: OveroptConfig, base: PPOConfig) -> list[dict]:
    """One PPO run per KL coefficient; every held-out evaluation of a run is a point."""
    from rlhf_dist.recipes.ppo import train_ppo

    runs = [(beta, ppo_run_config(cfg, beta, base)) for beta in cfg.kl_coefs]  # every config checked before the first run
    points = []
    for beta, run in runs:
        print(f"\n-- PPO with beta = {beta:g} ({cfg.iterations} iterations)", flush=True)
        summary = train_ppo(run)
        for e in summary["eval"].values():
            points.append({"method": f"PPO beta={beta:g}", "beta": beta, "iteration": e["iteration"], "kl": max(e["kl"], 0.0),
                           "gold": e["gold"], "proxy": e["proxy"]})
    return sorted(points, key=lambda p: (p["method"], p["iteration"]))


def run_overopt(cfg: OveroptConfig, ppo_base: PPOConfig | None = None) -> dict:
    """The study; `ppo_base`: the PPO settings of a composing command (quickstart's), else
    `ppo_base_config(cfg)`."""
    from rlhf_dist.runtime import write_json
    from rlhf_dist.tasks.base import load_task

    task = load_task(cfg.task)
    base = ppo_base if ppo_base is not None else ppo_base_config(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"-- best-of-n from the SFT model: n in {cfg.bon_n} on {cfg.eval_prompts} held-out prompts", flush=True)
    points = best_of_n_curve(cfg, task) + ppo_curves(cfg, base)
    in_order = lambda p: p.get("iteration", p.get("n"))  # noqa: E731  (training order, or n of best-of-n)
    shapes = {m: curve_shape(sorted((p for p in points if p["method"] == m), key=in_order)) for m in methods_of(points)}
    result = {"points": points, "shapes": shapes, "config": {k: v for k, v in vars(cfg).items()}}
    write_json(out / "overopt.json", result)
    plot(points, out / "overopt.png")
    print()
    for m, s in shapes.items():
        print("   " + describe_shape(m, s))
    print(f"\nwrote {out / 'overopt.json'} and {out / 'overopt.png'}")
    return result


def main(argv: list[str]) -> int:
    run_overopt(parse_cli(OveroptConfig, argv, "rlhf-dist overopt", __doc__))
    return 0
