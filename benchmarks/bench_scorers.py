"""The frozen scorers of PPO apart (a reward actor and a reference actor, the default) against
colocated in one actor (`reference.colocate_with_reward=true`), on the TRL benchmark's models
(bench_vs_trl.py: a 5.0M-parameter Llama policy and a same-shaped reward model, fp32) and a batch
like its length-64 iterations (64 rows, prompts of 6-30 tokens, 64 response tokens).

Figures, each pair measured in turn (the order alternates from repeat to repeat), medians:
- start-up: from asking Ray for the actor(s) to the first batch scored (what `rlhf-dist ppo`
  waits for), and the CPU-seconds the scorer processes used for it;
- scoring: one batch through the reward and the reference at once, as the driver submits them.

    .venv/bin/python benchmarks/bench_scorers.py            # full run
    .venv/bin/python benchmarks/bench_scorers.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_utils import emit, environment, log, table  # noqa: E402

ROWS, RESPONSE_TOKENS, TEMPERATURE = 64, 64, 1.0


def batch(prompt_ids: list[list[int]], vocab: int, seed: int = 0):
    """64 trajectories: the benchmark's prompts, random 64-token responses."""
    import pyarrow as pa

    from rlhf_dist.buffer import rollouts_to_batch

    rng = random.Random(seed)
    rows = [SimpleNamespace(prompt_ids=rng.choice(prompt_ids), response_ids=[rng.randrange(4, vocab) for _ in range(RESPONSE_TOKENS)],
                            logprobs=[-1.0] * RESPONSE_TOKENS, finished_with_eos=False) for _ in range(ROWS)]
    return pa.Table.from_batches([rollouts_to_batch(rows, list(range(ROWS)), 0, 0)])


def start(colocated: bool, sft: str, rm: str):
    """-> (reward pool, reference pool): the actors are asked for, not yet ready."""
    from rlhf_dist.actors.scorers import ReferenceActor, RewardActor, ScorerPool

    reward_args, reference_args = (rm, 0, 16, "float32"), (sft, 0, TEMPERATURE, 16, "float32")
    if colocated:  # as PPOActors starts it: both roles' CPUs
        return ScorerPool.colocated(1, 0.5, 0, reward_args, reference_args)
    return ScorerPool(RewardActor, 1, 0.25, 0, *reward_args), ScorerPool(ReferenceActor, 1, 0.25, 0, *reference_args)


def score(reward, reference, table) -> float:
    t0 = time.perf_counter()
    ref = reference.submit("logprobs", table)
    reward.submit("score", table).result()
    ref.result()
    return time.perf_counter() - t0


def cpu_seconds(pools) -> float:
    import os

    import psutil
    import ray

    pids = {ray.get(a.__ray_call__.remote(lambda self: os.getpid())) for p in pools for a in p.actors}
    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 repeats, 3 scoring calls each")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--calls", type=int, default=6, help="scoring calls per candidate per repeat")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.calls = 2, 3

    import json

    import ray

    from bench_vs_trl import build_setting
    from rlhf_dist.runtime import ensure_ray

    names = {False: "apart", True: "colocated"}
    samples = {name: {"startup_s": [], "startup_cpu_s": [], "score_s": []} for name in names.values()}
    with tempfile.TemporaryDirectory() as root:
        log("building the benchmark's models ...")
        setting = build_setting(Path(root))
        table_ = batch(json.loads(Path(setting["prompt_ids"]).read_text()), setting["vocab_size"])
        ensure_ray("")
        for r in range(args.repeats):
            for colocated in ((False, True) if r % 2 == 0 else (True, False)):
                name = names[colocated]
                t0 = time.perf_counter()
                reward, reference = start(colocated, setting["sft"], setting["reward_model"])
                score(reward, reference, table_.slice(0, 2))  # ready: the first (tiny) batch scored
                samples[name]["startup_s"].append(time.perf_counter() - t0)
                samples[name]["startup_cpu_s"].append(cpu_seconds([reward, reference]))
                samples[name]["score_s"] += [score(reward, reference, table_) for _ in range(args.calls)]
                reward.shutdown()
                reference.shutdown()
                time.sleep(1.0)  # the killed processes exit before the next candidate starts
                log(f"[repeat {r + 1}/{args.repeats}] {name}: start-up {samples[name]['startup_s'][-1]:.2f} s, "
                    f"scoring {statistics.median(samples[name]['score_s'][-args.calls:]):.3f} s")
        ray.shutdown()
    rows = [{"scorers": name, "start-up s": statistics.median(s["startup_s"]),
             "start-up CPU s": statistics.median(s["startup_cpu_s"]), "score s": statistics.median(s["score_s"]),
             "score min-max": f"{min(s['score_s']):.3f}-{max(s['score_s']):.3f}"} for name, s in samples.items()]
    log(table(rows, list(rows[0]), f"reward + reference scorers, {ROWS} rows x {RESPONSE_TOKENS} response tokens; medians"))
    emit({"benchmark": "scorers", "env": environment(), "rows": ROWS, "response_tokens": RESPONSE_TOKENS,
          "results": rows, "samples": samples}, args.json_out)


if __name__ == "__main__":
    main()
