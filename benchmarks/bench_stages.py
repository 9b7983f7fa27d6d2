"""Training throughput of the learner group (pretrain/SFT/RM stages) on the built-in task's
pretraining texts: micro-batch size x whether each rank sorts its shard by length before cutting
micro-batches (what `LearnerGroup._split` does; the gradient is the same either way, since every
loss is normalised by the global token count: tests/test_actors_learner_group.py checks it).

The task's texts are 5-64 tokens; a micro-batch pads every row to its longest, so unsorted
micro-batches of 32 are about half padding. Each candidate is a real LearnerGroup (Ray actor,
DeepSpeed ZeRO-2, fp32 on CPU) on the same tiny Llama (hidden 128, 2 layers, the quickstart's
model) and the same seeded global batches of 64 texts (the pretrain stage's default). Candidates
stay alive side by side; each repeat runs `--steps` optimizer steps of every candidate, rotating
the order, so load from other processes hits them alike. Figures: median real (non-pad) tokens
per second over the repeats, the padded share of the computed tokens, and the speed-up against
unsorted micro-batches of 32 (the old default).

    .venv/bin/python benchmarks/bench_stages.py            # full run
    .venv/bin/python benchmarks/bench_stages.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_utils import emit, environment, log, table  # noqa: E402

GLOBAL_BATCH = 64


def corpus(n: int, seed: int = 0) -> list[str]:
    from rlhf_dist.tasks.instruct import task

    rng = random.Random(seed)
    return [task.pretrain_text(rng) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 candidates, 1 repeat of 4 steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per candidate per repeat")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per learner rank")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.steps = 1, 4
    candidates = [(32, False), (32, True), (16, True)] if not args.quick else [(32, False), (16, True)]
    if not args.quick:
        candidates.append((8, True))

    import ray

    from rlhf_dist.actors.learner_group import LearnerGroup, ModelSpec
    from rlhf_dist.data import minibatches, tokenize_texts
    from rlhf_dist.data.collate import lm_token_count
    from rlhf_dist.engines import objectives
    from rlhf_dist.config.learner import LearnerConfig, OptimConfig
    from rlhf_dist.models import TinyModelSpec, load_tokenizer, save_tiny_model

    result = {"benchmark": "bench_stages", "environment": environment(args.threads), "global_batch": GLOBAL_BATCH,
              "steps_per_repeat": args.steps, "repeats": args.repeats, "candidates": []}
    texts = corpus(4000)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_tiny_model(Path(tmp) / "model", texts, TinyModelSpec(), seed=0)
        tok = load_tokenizer(model_dir)
        seqs, stats = tokenize_texts(texts, tok, 96)
        log(f"{len(seqs)} sequences, mean {stats['text_len_mean']:.1f} tokens, max {stats['text_len_max']}")
        batches = [[seqs[i] for i in b] for b in minibatches(len(seqs), GLOBAL_BATCH, seed=0, epoch=0)]
        ray.init(address="local", num_cpus=64, include_dashboard=False, log_to_driver=False, namespace="bench_stages")
        groups, lm = {}, objectives.OBJECTIVES["lm"]
        try:
            total_steps = 2 + args.repeats * args.steps
            for micro, sort in candidates:
                cfg = LearnerConfig(num_ranks=1, zero_stage=2, micro_batch_size=micro, cpus_per_rank=1, torch_threads=args.threads)
                groups[(micro, sort)] = LearnerGroup(ModelSpec(str(model_dir), "causal_lm", 0), cfg, OptimConfig(lr=3e-3),
                                                     GLOBAL_BATCH, total_steps, tok.pad_token_id)
            position = {key: 0 for key in groups}

            def run(key, n: int) -> tuple[float, int, int]:
                """n steps of candidate `key`: (seconds, real tokens, computed tokens incl. padding)."""
                micro, sort = key
                # The driver cuts micro-batches (LearnerGroup._split): without a length it keeps the batch order.
                objectives.OBJECTIVES["lm"] = lm if sort else dataclasses.replace(lm, length=None)
                real = computed = 0
                start = time.perf_counter()
                for _ in range(n):
                    batch = batches[position[key] % len(batches)]
                    position[key] += 1
                    groups[key].train_step("lm", batch)
                    real += int(lm_token_count(batch))
                    for mb in groups[key]._split(batch, lm.length if sort else None)[0]:
                        computed += (max(map(len, mb)) - 1) * len(mb)
                seconds = time.perf_counter() - start
                objectives.OBJECTIVES["lm"] = lm
                return seconds, real, computed

            for key in groups:  # warm-up: first calls of every actor
                run(key, 2)
            samples = {key: [] for key in groups}
            pad_share = {}
            keys = list(groups)
            for r in range(args.repeats):
                for key in keys[r % len(keys):] + keys[: r % len(keys)]:
                    seconds, real, computed = run(key, args.steps)
                    samples[key].append(real / seconds)
                    pad_share[key] = 1 - real / computed
                log(f"repeat {r + 1}/{args.repeats} done")
        finally:
            for g in groups.values():
                g.shutdown()
            ray.shutdown()
    base = statistics.median(samples[(32, False)])
    rows = []
    for (micro, sort), s in samples.items():
        row = {"micro_batch": micro, "sorted": sort, "accum": GLOBAL_BATCH // micro, "tokens_per_s_median": statistics.median(s),
               "tokens_per_s_min": min(s), "tokens_per_s_max": max(s), "pad_share": pad_share[(micro, sort)],
               "speedup_vs_32_unsorted": statistics.median(s) / base}
        rows.append(row)
        result["candidates"].append(row)
    log(table(rows, ["micro_batch", "sorted", "accum", "tokens_per_s_median", "pad_share", "speedup_vs_32_unsorted"],
              f"learner-group pretraining throughput, global batch {GLOBAL_BATCH}, {args.threads} torch thread(s)"))
    emit(result, args.json_out)


if __name__ == "__main__":
    main()
