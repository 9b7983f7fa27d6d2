"""The tool-use results of `examples/tool_use.sh` as one table (printed, and OUT/tool_use.json):
per model on the held-out prompts, correctness (the gold scorer's graded `correct` part, as
docs/results.md reports it) with its 95% interval, the share of fully correct answers, gold, win rate vs SFT, tool-call rate (episodes with at least one call), malformed-call
rate (calls answered with an error), turns per episode; and the GRPO run's time per iteration.

    python examples/tool_use_report.py runs/tools
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from rlhf_dist.evaluation.metrics import mean_ci95
from rlhf_dist.tasks.instruct import task
from rlhf_dist.tasks.instruct.tools import tool_stats


def by_family(samples: list[dict], graded: list[float], stats: list[dict]) -> dict[str, dict]:
    """Per family of the built-in task: prompts, correctness, tool-call rate."""
    out: dict[str, dict] = {}
    for r, g, s in zip(samples, graded, stats):
        f = out.setdefault(task.family(r["prompt"]), {"prompts": 0, "correct": 0.0, "tool_calls": 0})
        f["prompts"] += 1
        f["correct"] += g
        f["tool_calls"] += s["calls"] > 0
    return {name: {"prompts": f["prompts"], "correctness": f["correct"] / f["prompts"],
                   "tool_call_rate": f["tool_calls"] / f["prompts"]} for name, f in sorted(out.items())}


def summarize(out: Path) -> dict:
    ev = json.loads((out / "eval" / "eval.json").read_text())
    rows: dict[str, list[dict]] = {}
    for line in (out / "eval" / "eval_samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["model"], []).append(row)
    table = {}
    for name, samples in rows.items():
        graded = [task.gold_parts(r["prompt"], r.get("answer", r["response"]))["correct"] for r in samples]
        stats = [tool_stats(r["response"], r["prompt"]) for r in samples]
        calls = sum(s["calls"] for s in stats)
        m = ev["models"][name]
        c, lo, hi = mean_ci95(graded)
        table[name] = {"correctness": c, "correctness_ci95": [lo, hi],
                       "fully_correct": sum(g >= 1.0 for g in graded) / len(graded), "gold": m["gold_score"],
                       "win_rate_vs_sft": m["win_rate_vs_sft"], "win_rate_ci95": m["win_rate_ci95"],
                       "tool_call_rate": sum(s["calls"] > 0 for s in stats) / len(stats),
                       "malformed_call_rate": sum(s["malformed"] for s in stats) / calls if calls else 0.0,
                       "turns_mean": m.get("turns_mean"), "prompts": len(samples), "by_family": by_family(samples, graded, stats)}
    metrics = [json.loads(line) for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    times = [r["time/iteration_s"] for r in metrics if "time/iteration_s" in r]
    return {"models": table, "grpo_iteration_s_median": statistics.median(times) if times else None,
            "grpo_turns_mean_last": next((r["env/turns_mean"] for r in reversed(metrics) if "env/turns_mean" in r), None)}


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "runs/tools")
    result = summarize(out)
    (out / "tool_use.json").write_text(json.dumps(result, indent=2))
    print(f"| model | correctness [95% CI] | fully correct | gold | win vs SFT [95% CI] | tool calls | malformed calls "
          f"| turns |\n|---|---|---|---|---|---|---|---|")
    for name, r in result["models"].items():
        lo, hi = r["correctness_ci95"]
        wlo, whi = r["win_rate_ci95"]
        print(f"| {name} | {r['correctness']:.3f} [{lo:.3f}, {hi:.3f}] | {r['fully_correct']:.3f} | {r['gold']:.3f} | "
              f"{r['win_rate_vs_sft']:.3f} [{wlo:.3f}, {whi:.3f}] | {r['tool_call_rate']:.3f} | "
              f"{r['malformed_call_rate']:.3f} | {r['turns_mean']:.2f} |")
    families = next(iter(result["models"].values()))["by_family"]
    print("\ncorrectness (tool-call rate) by family\n| model | " + " | ".join(families) + " |\n" + "|---" * (len(families) + 1) + "|")
    for name, r in result["models"].items():
        cells = [f"{r['by_family'][f]['correctness']:.2f} ({r['by_family'][f]['tool_call_rate']:.2f})" for f in families]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"GRPO with the tool: {result['grpo_iteration_s_median']:.2f} s per iteration (median) -> {out / 'tool_use.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
