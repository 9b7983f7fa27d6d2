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
import math
import time
from dataclasses import asdict
from pathlib import Path

from rlhf_dist.config import ConfigError, load_config, parse_cli
from rlhf_dist.config.compare import CompareConfig
from rlhf_dist.config.ppo import PPOConfig
from rlhf_dist.config.stages import DPOConfig
from rlhf_dist.evaluation.metrics import Z95, standard_error

VERIFIABLE = ("fn", "rm+fn", "gold")  # reward sources that check the response instead of a learned RM
COLUMNS = ("method", "win rate vs SFT [95% CI]", "expected win", "gold", "correct", "KL to SFT", "pretrain NLL",
           "train time (s)", "peak memory per learner rank (MiB)", "responses/s")


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


def ppo_run_config(cfg: CompareConfig, name: str, inputs: dict[str, str]) -> PPOConfig:
    """The PPO run of method `name`: ppo_config, the command's settings, ppo_overrides, then the method's overrides."""
    overrides = [*cfg.ppo_overrides, *cfg.methods[name]]
    for item in overrides:
        if item.split("=", 1)[0].strip() in ("out", "resume"):
            raise ConfigError(f"methods.{name}: override '{item}': the command sets out (out/{name}) and starts every run over")
    values = {"out": str(Path(cfg.out) / name), "sft": inputs["sft"], "reward_model": inputs["reward_model"],
              "data": inputs["data"], "task": cfg.task, "seed": cfg.seed, "iterations": cfg.iterations, "eval_prompts": 0,
              "write_trajectories": False, "overwrite": True,
              "rollout": {"temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens}}
    try:
        return load_config(PPOConfig, cfg.ppo_config, overrides, values=values)
    except ConfigError as e:
        raise ConfigError(f"methods.{name}: {e}") from None


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


# ---------------------------------------------------------------- pure assembly


def responses_per_second(records: list[dict], responses_per_iteration: int) -> float | None:
    """Rollout throughput of a PPO run: responses per second of its training loop, from the
    per-iteration wall times (`time/iteration_s`) in metrics.jsonl; None without any."""
    times = [r["time/iteration_s"] for r in records if isinstance(r.get("time/iteration_s"), (int, float))]
    total = sum(times)
    return responses_per_iteration * len(times) / total if times and total > 0 else None


def paired_difference(a: list[float], b: list[float]) -> dict:
    """mean(a) - mean(b) over the same prompts, with the standard error of the mean of the per-prompt
    differences (paired: both models answered prompt i, so the prompt's difficulty cancels), and
    their ratio z; `beyond_noise` when the difference lies outside its 95% band (|z| > 1.96)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired samples need the same prompts: got {len(a)} and {len(b)} values")
    d = [x - y for x, y in zip(a, b)]
    diff, se = sum(d) / len(d), standard_error(d)
    z = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    return {"a": sum(a) / len(a), "b": sum(b) / len(b), "diff": diff, "se": se, "n": len(d), "z": z,
            "beyond_noise": abs(z) > Z95}


def method_row(name: str, model: dict, baseline: str, train: dict | None, correct: list[float] | None) -> dict:
    """One row of the comparison: the model's evaluation (an entry of eval.json's models), its
    per-prompt correctness (or None), and what its training cost (`train`; None for the baseline)."""
    train = train or {}
    return {
        "method": name,
        "kind": train.get("kind", "baseline" if name == baseline else "model"),
        "reward_source": train.get("reward_source"),
        "advantage": train.get("advantage"),
        "overrides": train.get("overrides", []),
        "model": model.get("path"),
        "win_rate": model[f"win_rate_vs_{baseline}"],
        "win_rate_ci95": list(model["win_rate_ci95"]),
        "win_prob": model[f"win_prob_vs_{baseline}"],
        "gold": model["gold_score"],
        "gold_sem": model.get("gold_score_sem"),
        "correct": (model.get("gold_parts") or {}).get("correct"),
        "correct_sem": standard_error(correct) if correct else None,
        "kl_to_sft": model[f"kl_to_{baseline}"],
        "pretrain_nll": model.get("pretrain_nll"),
        "responses": train.get("responses"),
        "train_wall_s": train.get("wall_s"),
        "summary_wall_time_s": train.get("summary_wall_time_s"),  # the run's own clock (summary.json)
        "peak_memory_mb": train.get("peak_memory_mb"),
        "responses_per_s": train.get("responses_per_s"),
    }


def correctness_findings(rows: list[dict], correct: dict[str, list[float]], baseline: str, counterpart: str) -> list[dict]:
    """Did a verifiable reward move correctness where the RM did not? For every method trained on
    a verifiable reward: its correctness against the RM-trained `counterpart` and against the
    baseline, paired over the prompts; and the counterpart's own against the baseline."""
    by_name = {r["method"]: r for r in rows}
    verifiable = [r["method"] for r in rows if r.get("reward_source") in VERIFIABLE and r["method"] in correct]
    rm_method = counterpart if (counterpart in correct and by_name.get(counterpart, {}).get("reward_source") == "rm") else None
    pairs = [(m, rm_method) for m in verifiable if rm_method] + [(m, baseline) for m in verifiable]
    if verifiable and rm_method and baseline in correct:
        pairs.append((rm_method, baseline))
    return [{"method": a, "against": b, **paired_difference(correct[a], correct[b])}
            for a, b in pairs if b in correct]


def describe_finding(f: dict) -> str:
    verdict = "beyond the noise" if f["beyond_noise"] else "within the noise"
    z = "inf" if math.isinf(f["z"]) else f"{abs(f['z']):.1f}"
    return (f"{f['method']} {f['a']:.3f} vs {f['against']} {f['b']:.3f}: {f['diff']:+.3f} "
            f"(SE {f['se']:.3f} over {f['n']} paired prompts, {z} SE: {verdict})")


def correctness_summary(findings: list[dict]) -> str:
    """The one line on verifiable rewards and correctness."""
    if not findings:
        return ("No method here was trained on a verifiable reward (reward_source fn, rm+fn or gold) next to an "
                "evaluable correctness, so there is nothing to set against the RM.")
    return "Verifiable reward and correctness: " + "; ".join(describe_finding(f) for f in findings) + "."


def _num(x, spec: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def cells(row: dict) -> list[str]:
    """The table cells of a row, in COLUMNS order."""
    lo, hi = row["win_rate_ci95"]
    mem = row["peak_memory_mb"]
    memory = " / ".join(f"{m:.0f}" for m in mem) if isinstance(mem, list) and mem else _num(mem, ".0f")
    name = f"{row['method']} (baseline)" if row["kind"] == "baseline" else row["method"]
    return [name, f"{row['win_rate']:.3f} [{lo:.3f}, {hi:.3f}]", f"{row['win_prob']:.3f}", f"{row['gold']:.3f}",
            _num(row["correct"], ".3f"), _num(row["kl_to_sft"], ".2f"), _num(row["pretrain_nll"], ".3f"),
            _num(row["train_wall_s"], ".1f"), memory, _num(row["responses_per_s"], ".1f")]


def notes(rows: list[dict]) -> list[str]:
    """What the table's n/a cells and its cost columns mean."""
    out = ["train time: wall time around the method's training call (actor start-up, training, saving the model); "
           "responses/s: responses sampled and trained on per second of the PPO loop (metrics.jsonl time/iteration_s)."]
    no_memory = [r["method"] for r in rows if r["kind"] not in ("baseline",) and not r["peak_memory_mb"]]
    if no_memory:
        out.append(f"peak memory n/a for {', '.join(no_memory)}: the run's summary.json reports no learner_peak_memory_mb "
                   "(the dpo stage's learner group does not measure it).")
    if any(r["kind"] == "dpo" for r in rows):
        out.append("responses/s n/a for dpo: it trains on the fixed rankings and samples no responses.")
    return out


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [f"# Method comparison ({result['prompts']} held-out prompts, T = {result['eval_temperature']:g}, "
             f"baseline {result['baseline']})", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    lines += ["", correctness_summary(result["correctness"]), ""]
    lines += [f"- {n}" for n in notes(rows)]
    return "\n".join(lines) + "\n"


def console_rows(result: dict) -> list[tuple[str, str]]:
    """print_table's rows: the method, then the other columns."""
    widths = [max(len(c), *(len(cells(r)[i]) for r in result["rows"])) for i, c in enumerate(COLUMNS)]
    line = lambda values: "  ".join(f"{v:>{w}}" for v, w in zip(values[1:], widths[1:]))  # noqa: E731
    return [(COLUMNS[0], line(COLUMNS))] + [(cells(r)[0], line(cells(r))) for r in result["rows"]]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = [r["method"] for r in rows]
    x = list(range(len(rows)))
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.1 * len(rows) + 3), 4.2))
    win = [r["win_rate"] for r in rows]
    err = [[r["win_rate"] - r["win_rate_ci95"][0] for r in rows], [r["win_rate_ci95"][1] - r["win_rate"] for r in rows]]
    axes[0].errorbar(x, win, yerr=err, fmt="o", capsize=4)
    axes[0].axhline(0.5, color="gray", linestyle="--", linewidth=1)
    axes[0].set_ylabel(f"win rate vs {result['baseline']} (95% interval)")
    axes[0].set_title("labeler's verdicts against SFT", fontsize=10)
    correct = [r["correct"] if r["correct"] is not None else math.nan for r in rows]
    sem = [r["correct_sem"] or 0.0 for r in rows]
    colors = ["tab:green" if r.get("reward_source") in VERIFIABLE else "tab:gray" if r["kind"] == "baseline" else "tab:blue"
              for r in rows]
    axes[1].bar(x, correct, yerr=sem, capsize=4, color=colors)
    base = next((r["correct"] for r in rows if r["kind"] == "baseline"), None)
    if base is not None:
        axes[1].axhline(base, color="gray", linestyle="--", linewidth=1)
    axes[1].set_ylim(0.0, 1.05)
    axes[1].set_ylabel("correctness (gold part, +- 1 SE)")
    axes[1].set_title("correctness (green: verifiable reward)", fontsize=10)
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- the command


def per_prompt_correctness(samples_file: Path, task) -> dict[str, list[float]]:
    """model -> correctness of its sample of each prompt, in prompt order (eval_samples.jsonl graded
    by the task's gold part `correct`); {} when the task has no such part."""
    from rlhf_dist.data import prompt_text
    from rlhf_dist.tasks.base import gold_parts

    by_model: dict[str, dict[int, float]] = {}
    for line in samples_file.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        value = gold_parts(task, prompt_text(row["prompt"]), row["response"]).get("correct")
        if value is None:
            return {}
        by_model.setdefault(row["model"], {})[row["index"]] = float(value)
    return {m: [v[i] for i in sorted(v)] for m, v in by_model.items()}


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


def run_compare(cfg: CompareConfig) -> dict:
    from rlhf_dist.config.evaluation import EvalConfig
    from rlhf_dist.evaluation.evaluate import evaluate_models
    from rlhf_dist.runtime import print_table, stage, write_json, write_text_atomic
    from rlhf_dist.tasks.base import load_task

    task = load_task(cfg.task)
    if not Path(cfg.ppo_config).is_file() and any(n != "dpo" for n in cfg.selected()):
        raise ConfigError(f"ppo_config={cfg.ppo_config}: config file not found")
    inputs = resolve_inputs(cfg)
    runs = {}  # every run's config checked before the first one trains
    for name in cfg.selected():
        runs[name] = dpo_run_config(cfg, inputs) if name == "dpo" else ppo_run_config(cfg, name, inputs)
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
            max_new_tokens=cfg.max_new_tokens, seed=cfg.seed))

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
