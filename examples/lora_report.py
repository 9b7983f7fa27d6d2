"""The results of `examples/lora_ppo.sh` as one table (printed, and OUT/lora.json): per model on the
500 held-out prompts, gold score, win rate vs SFT with its 95% interval, KL to SFT and pretraining
NLL; per PPO run, the training gold of its last 10 iterations (what chose the learning rate), the
policy's trained parameters, the learner rank's AdamW state and peak memory (time per iteration
is in OUT/lora.json; benchmarks/bench_lora.py times the two side by side).

    python examples/lora_report.py runs/lora runs/quickstart/ppo
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def run_figures(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    gold = [r["gold/train_mean"] for r in rows if "gold/train_mean" in r][-10:]
    summary = json.loads((run / "summary.json").read_text())
    return {"train_gold_last10": sum(gold) / len(gold),
            "iteration_s": statistics.median(r["time/iteration_s"] for r in rows if "time/iteration_s" in r),
            "policy_trainable_params": summary.get("policy_trainable_params"),
            "optimizer_state_mb": (summary.get("learner_optimizer_state_mb") or [None])[0],
            "learner_peak_memory_mb": summary["learner_peak_memory_mb"][0],
            "lr": summary["config"]["optim"]["lr"], "lora_rank": summary["config"]["learner"].get("lora_rank", 0)}


def main(out: Path, full_run: Path) -> None:
    ev = json.loads((out / "eval" / "eval.json").read_text())
    runs = {"ppo_full": full_run, **{f"lora_{d.name.removeprefix('ppo_')}": d for d in sorted(out.glob("ppo_lr*"))}}
    table = {}
    order = sorted(ev["models"], key=lambda n: (n.startswith("lora_"), float(n.removeprefix("lora_lr")) if n.startswith("lora_lr") else 0))
    for name in order:
        m = ev["models"][name]
        row = {"gold": m["gold_score"], "win_vs_sft": m.get("win_rate_vs_sft"), "win_ci95": m.get("win_rate_ci95"),
               "kl_to_sft": m.get("kl_to_sft"), "pretrain_nll": m.get("pretrain_nll")}
        if name in runs:
            row.update(run_figures(runs[name]))
        table[name] = row
    (out / "lora.json").write_text(json.dumps(table, indent=2))
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    print("| model | lr | held-out gold | win vs SFT [95%] | KL to SFT | pretrain NLL | training gold (last 10) | "
          "policy trained params | AdamW state MiB | rank peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in table.items():
        ci = r["win_ci95"]
        win = "0.500" if name == "sft" else f"{r['win_vs_sft']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
        print(f"| {name} | {fmt(r.get('lr'), 'g')} | {r['gold']:.3f} | {win} | {fmt(r['kl_to_sft'], '.2f')} | "
              f"{fmt(r['pretrain_nll'], '.3f')} | {fmt(r.get('train_gold_last10'), '.3f')} | "
              f"{fmt(r.get('policy_trainable_params'), ',')} | {fmt(r.get('optimizer_state_mb'), '.2f')} | "
              f"{fmt(r.get('learner_peak_memory_mb'), '.0f')} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) > 2 else "runs/quickstart/ppo"))
