"""`rlhf-dist compare`: RL methods side by side, from one SFT model and one reward model.

    rlhf-dist compare --config configs/compare.yaml [--out runs/compare] [key=value ...]
    ... from_run=runs/quickstart only=[ppo,grpo] dpo=false iterations=20
    ... 'methods.mine=[ppo.kl_coef=0.1,rollout.overlap=true]'

1. every method trains into out/<name>, one after another: a PPO run (ppo_config, the command's
   settings, ppo_overrides, then the method's own key=value overrides, which win), or, with
   dpo=true, the DPO stage from the SFT model on the rankings (the method named dpo);
2. one evaluation (`rlhf-dist eval`) of the SFT model and every method's model on the same
   held-out prompts at eval_temperature: win rate against SFT with its 95% interval, the
   expected win probability, gold, correctness (the gold part `correct`), KL to SFT, pretraining NLL;
3. compare.json, compare.md (one table: those numbers, the wall time of each method's training,
   its learner ranks' peak memory and its rollout throughput; and whether a verifiable reward
   moved correctness where the reward model did not, each difference with its paired standard
   error over the prompts) and compare.png (win rate with its interval, correctness).

The command owns `out`: each out/<name> run and out/eval are overwritten.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from rlhf_dist.config import ConfigError, derive, load_config, parse_cli, with_overrides
from rlhf_dist.config.compare import CompareConfig
from rlhf_dist.config.ppo import PPOConfig
from rlhf_dist.config.stages import DPOConfig
from rlhf_dist.evaluation.method_comparison import (console_rows, correctness_findings, correctness_summary, markdown,
                                                    method_row, notes, per_prompt_correctness, plot, responses_per_second)


# ---------------------------------------------------------------- inputs and run configs


def resolve_inputs(cfg: CompareConfig) -> dict[str, str]:
    """sft, reward_model, data and rankings folders: the explicit ones, else from_run's; each checked."""
    from rlhf_dist.models import check_model_dir

    run = Path(cfg.from_run) if cfg.from_run else None
    if run is not None and not run.is_dir():
        raise ValueError(f"from_run={run}: no such folder (a finished `rlhf-dist quickstart` run folder)")

    def pick(key: str, explicit: str, sub: str) -> str:
        if explicit:
            return explicit
        if run is None:
            raise ValueError(f"no {key}: give from_run=DIR (a finished `rlhf-dist quickstart` folder) or {key}=DIR")
        if not (run / sub).exists():
            raise ValueError(f"from_run={run}: no {sub} in it (a finished quickstart folder has sft/model, rm/model, "
                             f"data/ and rankings/); give {key}=DIR")
        return str(run / sub)

    inputs = {"sft": pick("sft", cfg.sft, "sft/model"), "reward_model": pick("reward_model", cfg.reward_model, "rm/model"),
              "data": pick("data", cfg.data, "data")}
    if cfg.rankings:
        inputs["rankings"] = cfg.rankings
    else:  # a quickstart with rm_data=task trained its RM on the task's own comparisons in data/
        inputs["rankings"] = str(run / "rankings") if run is not None and (run / "rankings").is_dir() else inputs["data"]
    check_model_dir(inputs["sft"], "sft")
    check_model_dir(inputs["reward_model"], "reward_model")
    for key in ("data", "rankings"):
        if not Path(inputs[key]).is_dir():
            raise ValueError(f"{key}={inputs[key]}: no such folder")
    for name in ("rl_prompts.jsonl", "eval_prompts.jsonl"):
        if not (Path(inputs["data"]) / name).is_file():
            raise ValueError(f"data={inputs['data']}: no {name} (a task-data folder)")
    if "dpo" in cfg.selected() and not (Path(inputs["rankings"]) / "comparisons.jsonl").is_file():
        raise ValueError(f"rankings={inputs['rankings']}: no comparisons.jsonl for DPO (the rm stage's comparison files)")
    _check_not_overwritten(cfg, inputs)
    return inputs


def _check_not_overwritten(cfg: CompareConfig, inputs: dict[str, str]) -> None:
    """No input may lie in a folder this command overwrites (out/<method>, out/eval), nor be `out` itself."""
    out = Path(cfg.out).resolve()
    owned = [out / name for name in [*cfg.selected(), "eval"]]
    if cfg.from_run and Path(cfg.from_run).resolve() == out:
        raise ValueError(f"out={cfg.out} is from_run's own folder; the command owns out and overwrites its eval/: "
                         "give another out")
    for key, path in inputs.items():
        p = Path(path).resolve()
        for folder in owned:
            if p == folder or folder in p.parents:
                raise ValueError(f"{key}={path} lies in {folder}, which this command overwrites: give another out "
                                 "or rename the method")


def ppo_base_config(cfg: CompareConfig, inputs: dict[str, str]) -> PPOConfig:
    """Every PPO method's settings, typed: ppo_config, the command's settings (models, data, seed,
    iterations, sampling), then ppo_overrides on top (checked against PPOConfig's keys when the
    compare config was loaded)."""
    values = {"out": cfg.out, "sft": inputs["sft"], "reward_model": inputs["reward_model"], "data": inputs["data"],
              "task": cfg.task, "seed": cfg.seed, "iterations": cfg.iterations, "eval_prompts": 0,
              "write_trajectories": False, "overwrite": True,
              "rollout": {"temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens}, "env": cfg.env}
    return with_overrides(load_config(PPOConfig, cfg.ppo_config, values=values), cfg.ppo_overrides, "ppo_overrides")


def ppo_run_config(cfg: CompareConfig, name: str, base: PPOConfig) -> PPOConfig:
    """The PPO run of method `name`: `base` in out/<name>, then the method's own overrides, which win."""
    for item in cfg.methods[name]:
        if item.split("=", 1)[0].strip() in ("out", "resume"):
            raise ConfigError(f"methods.{name}: override '{item}': the command sets out (out/{name}) and starts every run over")
    return with_overrides(derive(base, out=str(Path(cfg.out) / name)), cfg.methods[name], f"methods.{name}")


def dpo_run_config(cfg: CompareConfig, inputs: dict[str, str]) -> DPOConfig:
    """The DPO stage: from the SFT model (also its frozen reference) on the rankings, dpo_overrides on top."""
    values = {"out": str(Path(cfg.out) / "dpo"), "init": inputs["sft"], "data": inputs["rankings"], "seed": cfg.seed,
              "eval_every": 0, "overwrite": True, "learner": {"cpus_per_rank": cfg.cpus}}
    try:
        return load_config(DPOConfig, None, cfg.dpo_overrides, values=values)
    except ConfigError as e:
        raise ConfigError(f"dpo_overrides: {e}") from None


def _describe(run) -> str:
    if isinstance(run, DPOConfig):
        return f"DPO from SFT on the rankings (beta {run.beta:g}, {run.epochs:g} epoch(s), batch {run.batch_size})"
    p, r = run.ppo, run.rollout
    return (f"PPO, advantage {p.advantage}, KL in the {p.kl_penalty}, reward {run.reward_source}"
            + (f" ({run.reward_fn})" if run.reward_fn else "")
            + f", {run.prompts_per_iteration} prompts x {r.samples_per_prompt} samples, {run.iterations} iterations"
            + (", overlapped rollouts" if r.overlap else ""))


# ---------------------------------------------------------------- the command


def _read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def train_method(name: str, run, overrides: list[str], timings: dict, label: str) -> dict:
    """Train one method (a PPOConfig or the DPOConfig) under a stage line; what its training cost."""
    from rlhf_dist.recipes.ppo import train_ppo
    from rlhf_dist.recipes.stages import dpo
    from rlhf_dist.runtime import stage

    is_dpo = isinstance(run, DPOConfig)
    with stage(f"{label} {name}: {_describe(run)}", timings):
        start = time.perf_counter()
        summary = dpo(run) if is_dpo else train_ppo(run)
        wall = time.perf_counter() - start
    train = {"kind": "dpo" if is_dpo else "ppo", "model": summary["model"], "wall_s": wall,
             "summary_wall_time_s": summary.get("wall_time_s"), "peak_memory_mb": summary.get("learner_peak_memory_mb")}
    if is_dpo:
        return {**train, "overrides": list(overrides), "reward_source": None, "advantage": None,
                "responses": None, "responses_per_s": None}
    rows = run.prompts_per_iteration * run.rollout.samples_per_prompt
    return {**train, "overrides": list(overrides), "reward_source": run.reward_source,
            "advantage": run.ppo.advantage, "responses": rows * run.iterations,
            "responses_per_s": responses_per_second(_read_records(Path(run.out) / "metrics.jsonl"), rows)}


def eval_episode_settings(cfg: CompareConfig, base: PPOConfig | None) -> dict:
    """The evaluation's env= and episode limits: compare's env, with the PPO base config's rollout limits."""
    if not cfg.env:
        return {}
    r = base.rollout if base is not None else load_config(PPOConfig, cfg.ppo_config, values={"out": cfg.out}).rollout
    return {"env": cfg.env, "max_turns": r.max_turns, "max_episode_tokens": r.max_episode_tokens,
            "env_timeout_s": r.env_timeout_s, "env_workers": r.env_workers}


def run_compare(cfg: CompareConfig) -> dict:
    from rlhf_dist.config.evaluation import EvalConfig
    from rlhf_dist.evaluation.evaluate import evaluate_models
    from rlhf_dist.runtime import print_table, stage, write_json, write_text_atomic
    from rlhf_dist.tasks.base import load_task

    task = load_task(cfg.task)
    if not Path(cfg.ppo_config).is_file() and any(n != "dpo" for n in cfg.selected()):
        raise ConfigError(f"ppo_config={cfg.ppo_config}: config file not found")
    inputs = resolve_inputs(cfg)
    base = ppo_base_config(cfg, inputs) if any(n != "dpo" for n in cfg.selected()) else None
    runs = {}  # every run's config checked before the first one trains
    for name in cfg.selected():
        runs[name] = dpo_run_config(cfg, inputs) if name == "dpo" else ppo_run_config(cfg, name, base)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    total = len(runs) + 2
    trained = {}
    for i, (name, run) in enumerate(runs.items(), start=1):
        overrides = cfg.dpo_overrides if name == "dpo" else cfg.methods[name]
        trained[name] = train_method(name, run, overrides, timings, f"{i}/{total}")

    with stage(f"{total - 1}/{total} evaluation of sft and {len(trained)} method(s) on {cfg.eval_prompts} held-out prompts "
               f"at T = {cfg.eval_temperature:g}", timings):
        heldout = Path(inputs["rankings"]) / "comparisons_heldout.jsonl"
        ev = evaluate_models(EvalConfig(
            out=str(out / "eval"), models={"sft": inputs["sft"], **{n: t["model"] for n, t in trained.items()}},
            baseline="sft", reward_model=inputs["reward_model"], comparisons_file=str(heldout) if heldout.is_file() else "",
            data=inputs["data"], task=cfg.task, prompts=cfg.eval_prompts, temperature=cfg.eval_temperature,
            max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, **eval_episode_settings(cfg, base)))

    with stage(f"{total}/{total} compare.json, compare.md, compare.png", timings):
        correct = per_prompt_correctness(out / "eval" / "eval_samples.jsonl", task)
        rows = [method_row(name, ev["models"][name], "sft", trained.get(name), correct.get(name))
                for name in ["sft", *trained]]
        result = {"baseline": "sft", "prompts": ev["prompts"], "eval_temperature": cfg.eval_temperature,
                  "rm_accuracy": ev.get("rm_accuracy"), "rows": rows,
                  "correctness": correctness_findings(rows, correct, "sft", cfg.rm_counterpart),
                  "eval": str(out / "eval" / "eval.json"), "inputs": inputs, "timings_s": timings, "config": asdict(cfg)}
        write_json(out / "compare.json", result)
        write_text_atomic(out / "compare.md", markdown(result))
        plot(result, out / "compare.png")
    print_table(console_rows(result), f"method comparison ({result['prompts']} held-out prompts, T {cfg.eval_temperature:g})")
    print("\n" + correctness_summary(result["correctness"]))
    for n in notes(rows):
        print(f"   {n}")
    print(f"\nwrote {out / 'compare.json'}, {out / 'compare.md'} and {out / 'compare.png'}")
    return result


def main(argv: list[str]) -> int:
    run_compare(parse_cli(CompareConfig, argv, "rlhf-dist compare", __doc__))
    return 0
