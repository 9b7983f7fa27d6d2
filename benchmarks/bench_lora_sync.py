"""LoRA PPO: merged-weight pushes against adapter pushes to the vLLM rollout worker, side by side on
a ~40M-parameter Llama on CPU.

Each candidate is one real `train_ppo` run (Ray, a vLLM rollout worker, RM + reference actors, a
DeepSpeed ZeRO-2 learner rank holding the LoRA policy and critic, the weight push), built with
`load_config(PPOConfig, "configs/tiny.yaml", [...])` and

    iterations=ITER prompts_per_iteration=32 ppo.minibatch_size=16 learner.micro_batch_size=8
    rollout.max_new_tokens=32 eval_prompts=0 write_trajectories=false learner.cpus_per_rank=1
    learner.torch_threads=2 learner.lora_rank=R learner.lora_alpha=2R
    + rollout.lora_sync=merged | adapter

- merged: every push sends the whole model, the adapted layers merged (W + s * B @ A), loaded into
  the engine's weights (vLLM `reload_weights`);
- adapter: every push sends the policy's LoRA A and B alone; the worker writes them as a peft
  adapter folder and the engine serves it as a vLLM LoRA adapter on its base weights.

The models are built in seconds: a random-init Llama of hidden 512, 12 layers, 8 heads, MLP 1376
(`--hidden/--layers`; ~40M parameters with the built-in task's 384-token vocabulary) as the SFT
policy, its backbone with a fresh scalar head as the reward model and the critic's start.

Reported per candidate, medians over the iterations after the first (warm-up) of every round:
- push_s: `time/sync_push_s`, the push as timed on learner rank 0 (gather or merge, send, load,
  version read back);
- push_mb: `sync/push_mb`, the bytes a push sends (safetensors blobs, MiB);
- sample_s: `time/sample_s`, sampling the iteration's batch (with the adapter: vLLM's LoRA kernels
  on every adapted layer); first_sample_s: the first iteration's, sampled before any push (with
  adapter sync: the base model, no adapter yet);
- iteration_s: `time/iteration_s`, and the learner's part of it (`time/learner_s`);
- logprob_gap_max: the largest `rollout/logprob_gap_max` of the run (vLLM's log-probs against the
  learner's: both modes sample the learner's current policy).

Candidates run in turn, the order rotated from round to round (`--rounds`, default 2).
Output: one JSON line on stdout (the last line); tables and progress on stderr.
    python benchmarks/bench_lora_sync.py                  # hidden 512 x 12 layers, rank 16, 3 iterations x 2 rounds
    python benchmarks/bench_lora_sync.py --quick          # hidden 256 x 4 layers, 3 iterations, 1 round
"""

from __future__ import annotations

from _bench_utils import emit, environment, log, set_vllm_cpu_env, table

set_vllm_cpu_env()  # before anything imports vLLM

import argparse
import contextlib
import math
import statistics
import sys
import tempfile
from pathlib import Path

from bench_lora import build_models  # noqa: E402  (the same models, built the same way)
from bench_lora import run as run_ppo  # noqa: E402


def run(extra: list[str], models, args, out: Path) -> dict:
    """One PPO run of bench_lora.py's settings with rank `args.rank` adapters (alpha 2 x rank) and `extra`."""
    return run_ppo("", [f"learner.lora_rank={args.rank}", f"learner.lora_alpha={2 * args.rank}", *extra],
                   models, args, out)


def summarize(runs: list[dict]) -> dict:
    med = statistics.median
    recs = [r for run in runs for r in run["records"][1:]]
    return {
        "push_s": med(r["time/sync_push_s"] for r in recs),
        "push_mb": med(r["sync/push_mb"] for r in recs),
        "sample_s": med(r["time/sample_s"] for r in recs),
        "first_sample_s": med(run["records"][0]["time/sample_s"] for run in runs),
        "iteration_s": med(r["time/iteration_s"] for r in recs),
        "learner_s": med(r["time/learner_s"] for r in recs),
        "logprob_gap_max": max(r["rollout/logprob_gap_max"] for run in runs for r in run["records"]),
        "run_wall_s": med(run["wall_s"] for run in runs),
        "iterations_measured": len(recs),
        "per_run": [{k: [r[k] for r in run["records"]] for k in ("time/sync_push_s", "time/sample_s", "time/learner_s",
                                                                 "time/iteration_s")} for run in runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="hidden 256 x 4 layers, 3 iterations, 1 round")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--rank", type=int, default=16, help="learner.lora_rank (alpha = 2 x rank)")
    parser.add_argument("--iterations", type=int, default=3, help="PPO iterations per run, the first is warm-up")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    if args.quick:
        args.hidden, args.layers, args.iterations, args.rounds = 256, 4, 3, 1
    candidates = {"merged": ["rollout.lora_sync=merged"], "adapter": ["rollout.lora_sync=adapter"]}
    result = {"benchmark": "bench_lora_sync", "env": environment(),
              "setup": {"hidden": args.hidden, "layers": args.layers, "lora_rank": args.rank, "lora_alpha": 2 * args.rank,
                        "iterations": args.iterations, "warmup_iterations": 1, "rounds": args.rounds,
                        "config": "configs/tiny.yaml"}}
    with tempfile.TemporaryDirectory(prefix="bench_lora_sync_") as tmp:
        with contextlib.redirect_stdout(sys.stderr):
            models = build_models(Path(tmp) / "models", args.hidden, args.layers)
        from safetensors import safe_open

        with safe_open(str(Path(models[0]) / "model.safetensors"), "pt") as f:
            result["setup"]["policy_params"] = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        log(f"bench_lora_sync: policy of {result['setup']['policy_params']:,} parameters, LoRA rank {args.rank}")
        raw: dict[str, list] = {name: [] for name in candidates}
        names = list(candidates)
        for rnd in range(args.rounds):
            for name in names[rnd % 2:] + names[: rnd % 2]:
                log(f"\n[round {rnd + 1}/{args.rounds}] {name}")
                r = run(candidates[name], models, args, Path(tmp) / f"{name}_{rnd}")
                raw[name].append(r)
                log("  push s: " + ", ".join(f"{x['time/sync_push_s']:.2f}" for x in r["records"])
                    + "; sample s: " + ", ".join(f"{x['time/sample_s']:.2f}" for x in r["records"])
                    + "; iteration s: " + ", ".join(f"{x['time/iteration_s']:.2f}" for x in r["records"]))
    result["candidates"] = {name: {**summarize(runs), "overrides": candidates[name]} for name, runs in raw.items()}
    columns = ["lora_sync", "push_mb", "push_s", "first_sample_s", "sample_s", "learner_s", "iteration_s",
               "logprob_gap_max", "iterations_measured"]
    log("\n" + table([{"lora_sync": name, **c} for name, c in result["candidates"].items()], columns,
                     f"PPO, LoRA rank {args.rank}, policy of {result['setup']['policy_params']:,} parameters "
                     f"(medians after the first iteration of each run)"))
    emit(result, args.json_out)


if __name__ == "__main__":
    main()
