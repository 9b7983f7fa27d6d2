"""PPO iteration time on CPU and how it splits, for several resource splits side by side.

Each split (rollout workers, learner ranks) is one real `train_ppo` run (Ray, vLLM rollout
workers, reward + reference actors, a DeepSpeed learner group, weight sync), built with
`load_config(PPOConfig, "configs/tiny.yaml", [...])` and the overrides

    iterations=6 prompts_per_iteration=32 ppo.minibatch_size=16 learner.micro_batch_size=8
    eval_prompts=0 write_trajectories=false rollout.num_workers=W learner.num_ranks=R out=<tmp>

(everything else as in configs/tiny.yaml: 32 new tokens, 2 PPO epochs, ZeRO-2, fractional CPUs).
The per-iteration times come from the run's own `<out>/metrics.jsonl`:

- rollout  `time/sample_s`   the vLLM workers' sampling of the batch (submitted at the end of the
           previous iteration; iteration 1's before the loop), timed in the background thread
           that then scores it (the driver waits `time/rollout_s` = sample + score, synchronous),
- score    `time/score_s`    reward model scores || reference log-probs (two actors in parallel),
- learner  `time/learner_s`  old log-probs and values, GAE on the driver, the PPO epochs,
- sync     `time/sync_s`     from the end of the PPO epochs to the metrics record: the weight push
           to every rollout worker (Ray round trip included), submitting the next batch, and the
           driver's own metrics (KL update, log-prob gap, gold scoring of the batch);
           `time/sync_push_s` (column "(push_s)") is the push alone, as timed on learner rank 0,
- other    iteration - the four above (trajectory writing, off here; JSON only).

The first iteration is a warm-up (first calls of every actor) and is left out of the medians.
Sampling throughput = response tokens per rollout second = `rollout/response_len` x rows /
`time/sample_s`. Speed-ups are against the first split (1, 1): t(1,1) / t(split).
`rollout/logprob_gap_max` (vLLM vs learner log-probs) is reported as a check that every worker
sampled with the learner's weights.

Splits run one after another in this process (`ray.shutdown()` between them); the whole set runs
`--rounds` times (default 2), the order rotated from round to round, and the medians pool all
rounds. Every Ray actor here has a fraction of a CPU, so Ray gives each OMP_NUM_THREADS=1: each
rollout worker, learner rank and scorer is single-threaded (the learner ranks also call
torch.set_num_threads(1): learner.torch_threads unset, cpus_per_rank 0.5); `--threads` sets the
driver's (GAE, whitening, metrics), 1 by default as in the other scripts.

Models: by default built in seconds as the `ppo_models` test fixture does (a random-init tiny
Llama as the SFT policy, its backbone with a fresh scalar head as the reward model, the built-in
task's data files with small counts), or given with --sft/--reward-model/--data.

Output: one JSON line on stdout (the last line); tables, progress and the runs' own output on stderr.
    python benchmarks/bench_ppo.py            # 4 splits x 6 iterations x 2 rounds
    python benchmarks/bench_ppo.py --quick    # (1,1) and (2,1), 3 iterations of 16 prompts
"""

from __future__ import annotations

from _bench_utils import emit, environment, log, set_vllm_cpu_env, table

set_vllm_cpu_env()  # before anything imports vLLM

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = {"rollout": "time/sample_s", "score": "time/score_s", "learner": "time/learner_s", "sync": "time/sync_s"}


def build_models(root: Path, size: str) -> tuple[str, str, str]:
    """(sft, reward model, data) built in seconds, as tests/conftest.py's `ppo_models`."""
    from rlhf_dist.models import TINY_SIZES, save_tiny_model
    from rlhf_dist.models.tiny import toy_corpus
    sys.path.insert(0, str(REPO))  # the tests' placeholder models (tests/ppo_placeholders.py)
    from tests.ppo_placeholders import placeholder_ppo_models

    sft = save_tiny_model(root / "sft", toy_corpus(), TINY_SIZES[size], vocab_size=384, seed=0)
    return placeholder_ppo_models(root, sft)


def run_split(workers: int, ranks: int, models: tuple[str, str, str], args, out: Path) -> dict:
    """One train_ppo run; its per-iteration records from metrics.jsonl plus wall times."""
    import ray

    from rlhf_dist.config import load_config
    from rlhf_dist.config.ppo import PPOConfig
    from rlhf_dist.recipes.ppo import train_ppo

    sft, rm, data = models
    overrides = [f"out={out}", f"sft={sft}", f"reward_model={rm}", f"data={data}", f"iterations={args.iterations}",
                 f"prompts_per_iteration={args.prompts}", f"ppo.minibatch_size={args.minibatch}",
                 f"learner.micro_batch_size={args.micro_batch}", f"rollout.max_new_tokens={args.max_new_tokens}",
                 "eval_prompts=0", "write_trajectories=false", f"rollout.num_workers={workers}",
                 f"learner.num_ranks={ranks}", *args.override]
    cfg = load_config(PPOConfig, REPO / "configs" / "tiny.yaml", overrides)
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the driver prints its set-up line to stdout
            summary = train_ppo(cfg)
    finally:
        ray.shutdown()
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "time/iteration_s" in r]
    rows = cfg.prompts_per_iteration * cfg.rollout.samples_per_prompt
    return {"records": records, "rows": rows, "wall_s": wall, "train_ppo_wall_s": summary["wall_time_s"],
            "overrides": overrides}


def summarize_split(runs: list[dict]) -> dict:
    """Medians over every post-warm-up iteration of every round of this split."""
    recs = [r for run in runs for r in run["records"][1:]]
    if not recs:
        raise ValueError("no iteration after the warm-up: use --iterations >= 2")
    rows = runs[0]["rows"]
    med = lambda xs: statistics.median(xs)  # noqa: E731
    it = [r["time/iteration_s"] for r in recs]
    out = {"iterations_measured": len(recs), "iteration_s": med(it), "iteration_min_s": min(it), "iteration_max_s": max(it)}
    for name, key in PARTS.items():
        out[f"{name}_s"] = med([r[key] for r in recs])
    out["sync_push_s"] = med([r["time/sync_push_s"] for r in recs])
    out["other_s"] = med([r["time/iteration_s"] - sum(r[k] for k in PARTS.values()) for r in recs])
    out["share"] = {name: med([r[key] / r["time/iteration_s"] for r in recs]) for name, key in PARTS.items()}
    tokens = [r["rollout/response_len"] * rows for r in recs]
    out["response_tokens_per_iteration"] = med(tokens)
    out["sampling_tokens_per_s"] = med([n / r["time/sample_s"] for n, r in zip(tokens, recs)])
    out["warmup_iteration_s"] = med([run["records"][0]["time/iteration_s"] for run in runs])
    out["setup_and_teardown_s"] = med([run["wall_s"] - sum(r["time/iteration_s"] for r in run["records"]) for run in runs])
    out["run_wall_s"] = med([run["wall_s"] for run in runs])
    out["logprob_gap_max"] = max(r["rollout/logprob_gap_max"] for run in runs for r in run["records"])
    out["staleness_max"] = max(r["rollout/staleness"] for run in runs for r in run["records"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="splits 1x1,2x1; 3 iterations of 16 prompts, 16 new tokens")
    parser.add_argument("--splits", default=None, help="comma-separated WORKERSxRANKS (default 1x1,2x1,1x2,2x2); the first is the baseline")
    parser.add_argument("--rounds", type=int, default=None,
                        help="repeat every split this often, order rotated (medians pool the rounds); default 2, quick 1")
    parser.add_argument("--iterations", type=int, default=None, help="PPO iterations per run, the first is warm-up (default 6; quick 3)")
    parser.add_argument("--prompts", type=int, default=None, help="prompts_per_iteration (default 32; quick 16)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="rollout.max_new_tokens (default 32, as configs/tiny.yaml; quick 16)")
    parser.add_argument("--minibatch", type=int, default=16, help="ppo.minibatch_size")
    parser.add_argument("--micro-batch", type=int, default=8, help="learner.micro_batch_size")
    parser.add_argument("--sft", default="", help="SFT model folder (with --reward-model and --data; default: build tiny models)")
    parser.add_argument("--reward-model", default="")
    parser.add_argument("--data", default="", help="task-data folder (rl_prompts.jsonl)")
    parser.add_argument("--size", default="tiny", choices=["tiny", "small"], help="TINY_SIZES entry of the built models")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (and OMP_NUM_THREADS) of the driver process (0: the libraries' defaults)")
    parser.add_argument("--override", action="append", default=[], help="extra PPOConfig key=value for every run (repeatable)")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    args.splits = args.splits or ("1x1,2x1" if args.quick else "1x1,2x1,1x2,2x2")
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.iterations = args.iterations or (3 if args.quick else 6)
    args.prompts = args.prompts or (16 if args.quick else 32)
    args.max_new_tokens = args.max_new_tokens or (16 if args.quick else 32)
    splits = [tuple(int(x) for x in s.lower().split("x")) for s in args.splits.split(",")]
    if bool(args.sft) != bool(args.reward_model) or (args.sft and not args.data):
        parser.error("give --sft, --reward-model and --data together (or none: tiny models are built)")
    if args.threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    result = {"benchmark": "bench_ppo", "quick": args.quick, "env": environment(),
              "setup": {"splits": [list(s) for s in splits], "rounds": args.rounds, "iterations": args.iterations,
                        "warmup_iterations": 1, "prompts_per_iteration": args.prompts, "max_new_tokens": args.max_new_tokens,
                        "minibatch_size": args.minibatch, "micro_batch_size": args.micro_batch, "config": "configs/tiny.yaml"}}
    with tempfile.TemporaryDirectory(prefix="bench_ppo_") as tmp:
        if args.sft:
            models = (args.sft, args.reward_model, args.data)
            result["setup"]["models"] = {"sft": args.sft, "reward_model": args.reward_model, "data": args.data}
        else:
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):
                models = build_models(Path(tmp) / "models", args.size)
            result["setup"]["models"] = f"built: random-init TINY_SIZES[{args.size!r}] Llama (vocab 384) + random scalar RM"
            log(f"bench_ppo: models built in {time.perf_counter() - t0:.1f} s")
        raw: dict[tuple, list] = {s: [] for s in splits}
        errors = {}
        n = 0
        for rnd in range(args.rounds):
            order = splits[rnd % len(splits):] + splits[: rnd % len(splits)]
            for w, r in order:
                n += 1
                log(f"\n[round {rnd + 1}/{args.rounds}] {w} rollout worker(s), {r} learner rank(s)  (load {os.getloadavg()[0]:.1f})")
                try:
                    run = run_split(w, r, models, args, Path(tmp) / f"run{n}_{w}x{r}")
                except Exception as exc:  # one broken split must not lose the others' figures
                    errors[f"{w}x{r}"] = f"{type(exc).__name__}: {exc}"
                    log(f"  FAILED: {errors[f'{w}x{r}']}")
                    continue
                raw[(w, r)].append(run)
                its = ", ".join(f"{x['time/iteration_s']:.2f}" for x in run["records"])
                log(f"  iteration s: {its}  (run {run['wall_s']:.1f} s)")

    base = splits[0]
    result["splits"], rows = [], []
    for s in splits:
        if not raw[s]:
            continue
        m = summarize_split(raw[s])
        entry = {"rollout_workers": s[0], "learner_ranks": s[1], **m,
                 "per_iteration": [[{k: v for k, v in rec.items() if k.startswith(("time/", "rollout/"))} for rec in run["records"]]
                                   for run in raw[s]]}
        result["splits"].append(entry)
    baseline = next((e for e in result["splits"] if (e["rollout_workers"], e["learner_ranks"]) == base), None)
    for e in result["splits"]:
        if baseline is not None:
            e["speedup_vs_baseline"] = {
                "iteration": baseline["iteration_s"] / e["iteration_s"],
                **{p: baseline[f"{p}_s"] / e[f"{p}_s"] for p in PARTS},
                "sampling_tokens_per_s": e["sampling_tokens_per_s"] / baseline["sampling_tokens_per_s"],
            }
        sp = e.get("speedup_vs_baseline", {})
        rows.append({"workers x ranks": f"{e['rollout_workers']} x {e['learner_ranks']}",
                     "iter_s": e["iteration_s"], "rollout_s": e["rollout_s"], "score_s": e["score_s"],
                     "learner_s": e["learner_s"], "sync_s": e["sync_s"], "(push_s)": e["sync_push_s"],
                     "resp_tok": e["response_tokens_per_iteration"], "sample_tok/s": e["sampling_tokens_per_s"],
                     "x iter": sp.get("iteration", ""), "x rollout": sp.get("rollout", ""), "x learner": sp.get("learner", ""),
                     "x sync": sp.get("sync", ""), "x tok/s": sp.get("sampling_tokens_per_s", ""), "warm-up s": e["warmup_iteration_s"], "setup s": e["setup_and_teardown_s"],
                     "gap_max": e["logprob_gap_max"]})
    result["errors"] = errors
    if rows:
        log(table(rows, list(rows[0]), f"\nPPO iteration on CPU, {args.prompts} prompts x up to {args.max_new_tokens} new tokens, "
                                      f"medians of iterations 2..{args.iterations} x {args.rounds} round(s); "
                                      f"x = speed-up vs {base[0]} x {base[1]}"))
    emit(result, args.json_out)
    if errors:
        raise SystemExit(f"failed splits: {errors}")


if __name__ == "__main__":
    main()
