"""LoRA against full fine-tuning in PPO, side by side on a ~40M-parameter Llama on CPU.

Each candidate is one real `train_ppo` run (Ray, a vLLM rollout worker, RM + reference actors, a
DeepSpeed ZeRO-2 learner rank holding the policy and the critic, the weight push), built with
`load_config(PPOConfig, "configs/tiny.yaml", [...])` and

    iterations=ITER prompts_per_iteration=32 ppo.minibatch_size=16 learner.micro_batch_size=8
    rollout.max_new_tokens=32 eval_prompts=0 write_trajectories=false learner.cpus_per_rank=1
    learner.torch_threads=2 (full) | + learner.lora_rank=R learner.lora_alpha=2R (lora)

The models are built in seconds: a random-init Llama of hidden 512, 10 layers, 8 heads, MLP 1376
(`--hidden/--layers`; 32M parameters with the built-in task's 384-token vocabulary) as the SFT
policy, its backbone with a fresh scalar head as the reward model and the critic's start.

Reported per candidate, medians over the rounds:
- learner rank peak memory: the rank's peak resident set (ru_maxrss, MiB: the summary's
  `learner_peak_memory_mb`): its process holds torch, DeepSpeed, the policy and the critic;
- optimizer state: the bytes of AdamW's moments on the rank (policy + critic);
- trainable parameters of the policy;
- iteration time: median of `time/iteration_s` after the first (warm-up) iteration, and the learner's
  part of it (`time/learner_s`: old log-probs and values, the PPO epochs);
- `rollout/logprob_gap_max`: vLLM's log-probs against the learner's after every push (merged weights).

Candidates run in turn, the order rotated from round to round (`--rounds`, default 2).
Output: one JSON line on stdout (the last line); tables and progress on stderr.
    python benchmarks/bench_lora.py                 # full vs LoRA rank 16, 3 iterations x 2 rounds
    python benchmarks/bench_lora.py --quick         # 3 iterations, 1 round, hidden 256 x 4 layers
"""

from __future__ import annotations

from _bench_utils import emit, environment, log, set_vllm_cpu_env, table

set_vllm_cpu_env()  # before anything imports vLLM

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_models(root: Path, hidden: int, layers: int) -> tuple[str, str, str]:
    """(sft, reward model, data): a random-init Llama of the given size, as the tests' placeholders."""
    from rlhf_dist.models.tiny import TinyModelSpec, save_tiny_model, toy_corpus
    sys.path.insert(0, str(REPO))  # the tests' placeholder models (tests/ppo_placeholders.py)
    from tests.ppo_placeholders import placeholder_ppo_models

    spec = TinyModelSpec(hidden_size=hidden, num_layers=layers, num_heads=hidden // 64, intermediate_size=hidden * 43 // 16)
    sft = save_tiny_model(root / "sft", toy_corpus(), spec, vocab_size=384, seed=0)
    return placeholder_ppo_models(root, sft)


def run(name: str, extra: list[str], models, args, out: Path) -> dict:
    import ray

    from rlhf_dist.config import load_config
    from rlhf_dist.config.ppo import PPOConfig
    from rlhf_dist.recipes.ppo import train_ppo

    sft, rm, data = models
    overrides = [f"out={out}", f"sft={sft}", f"reward_model={rm}", f"data={data}", f"iterations={args.iterations}",
                 "prompts_per_iteration=32", "ppo.minibatch_size=16", "learner.micro_batch_size=8",
                 "rollout.max_new_tokens=32", "eval_prompts=0", "write_trajectories=false",
                 "learner.cpus_per_rank=1", "learner.torch_threads=2", *extra]
    cfg = load_config(PPOConfig, REPO / "configs" / "tiny.yaml", overrides)
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            summary = train_ppo(cfg)
    finally:
        ray.shutdown()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "time/iteration_s" in r]
    return {"records": records, "wall_s": time.perf_counter() - t0, "summary": summary, "overrides": overrides}


def summarize(runs: list[dict]) -> dict:
    med = statistics.median
    recs = [r for run in runs for r in run["records"][1:]]
    return {
        "policy_trainable_params": runs[0]["summary"]["policy_trainable_params"],
        "learner_peak_memory_mb": med(run["summary"]["learner_peak_memory_mb"][0] for run in runs),
        "optimizer_state_mb": med(run["summary"]["learner_optimizer_state_mb"][0] for run in runs),
        "iteration_s": med(r["time/iteration_s"] for r in recs),
        "learner_s": med(r["time/learner_s"] for r in recs),
        "sync_push_s": med(r["time/sync_push_s"] for r in recs),
        "logprob_gap_max": max(r["rollout/logprob_gap_max"] for run in runs for r in run["records"]),
        "iterations_measured": len(recs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="hidden 256 x 4 layers, 3 iterations, 1 round")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--rank", type=int, default=16, help="learner.lora_rank (alpha = 2 x rank)")
    parser.add_argument("--iterations", type=int, default=3, help="PPO iterations per run, the first is warm-up")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    if args.quick:
        args.hidden, args.layers, args.iterations, args.rounds = 256, 4, 3, 1
    candidates = {"full": [], f"lora r{args.rank}": [f"learner.lora_rank={args.rank}", f"learner.lora_alpha={2 * args.rank}"]}
    result = {"benchmark": "bench_lora", "env": environment(),
              "setup": {"hidden": args.hidden, "layers": args.layers, "iterations": args.iterations,
                        "warmup_iterations": 1, "rounds": args.rounds, "config": "configs/tiny.yaml"}}
    with tempfile.TemporaryDirectory(prefix="bench_lora_") as tmp:
        with contextlib.redirect_stdout(sys.stderr):
            models = build_models(Path(tmp) / "models", args.hidden, args.layers)
        from safetensors import safe_open

        with safe_open(str(Path(models[0]) / "model.safetensors"), "pt") as f:
            result["setup"]["policy_params"] = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        log(f"bench_lora: policy of {result['setup']['policy_params']:,} parameters")
        raw: dict[str, list] = {name: [] for name in candidates}
        names = list(candidates)
        for rnd in range(args.rounds):
            for name in names[rnd % 2:] + names[: rnd % 2]:
                log(f"\n[round {rnd + 1}/{args.rounds}] {name}")
                r = run(name, candidates[name], models, args, Path(tmp) / f"{name.replace(' ', '_')}_{rnd}")
                raw[name].append(r)
                log("  iteration s: " + ", ".join(f"{x['time/iteration_s']:.2f}" for x in r["records"]))
    result["candidates"] = {name: {**summarize(runs), "overrides": runs[0]["overrides"][-2:] if name != "full" else []}
                            for name, runs in raw.items()}
    columns = ["candidate", "policy_trainable_params", "optimizer_state_mb", "learner_peak_memory_mb", "iteration_s",
               "learner_s", "sync_push_s", "logprob_gap_max"]
    log("\n" + table([{"candidate": name, **c} for name, c in result["candidates"].items()], columns))
    emit(result, args.json_out)


if __name__ == "__main__":
    main()
