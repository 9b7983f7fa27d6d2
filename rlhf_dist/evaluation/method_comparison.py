"""The comparison of RL methods that `rlhf-dist compare` writes: one row per method (its
evaluation against the baseline, what its training cost), the paired statistics of correctness
(did a verifiable reward move it where the reward model did not), and the table, markdown and
plot. Pure functions of eval.json's entries and the runs' summaries, apart from `plot` and
`per_prompt_correctness` (which read and write files)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rlhf_dist.evaluation.metrics import Z95, standard_error

VERIFIABLE = ("fn", "rm+fn", "gold")  # reward sources that check the response instead of a learned RM
COLUMNS = ("method", "win rate vs SFT [95% CI]", "expected win", "gold", "correct", "KL to SFT", "pretrain NLL",
           "train time (s)", "peak memory per learner rank (MiB)", "responses/s")


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
        answer = row.get("answer", row["response"])  # an episode's last turn
        value = gold_parts(task, prompt_text(row["prompt"]), answer).get("correct")
        if value is None:
            return {}
        by_model.setdefault(row["model"], {})[row["index"]] = float(value)
    return {m: [v[i] for i in sorted(v)] for m, v in by_model.items()}
