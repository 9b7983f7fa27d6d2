"""Weight sync, learner -> vLLM engine on CPU: time to push all weights of the "small" model.

Model: TINY_SIZES["small"] (hidden 256, 6 layers, vocab 512, fp32: 4.93M parameters, 18.8 MiB in 57 tensors).
The engine starts on weights A; pushes alternate between weights B and A (each push really
changes every tensor), with `push_weights` (safetensors buckets -> `collective_rpc` ->
`WeightSyncExtension.rlhf_load_weight_bucket` -> the worker's `reload_weights`, then prefix
cache reset and version read-back). Candidates, timed side by side with their order rotated
from repeat to repeat: `bucket_1MiB` (1 MiB buckets) and `one_blob` (one bucket holding
everything). Also timed without an engine: `bucketize` alone (serialisation cost of each).
Each push is checked to have landed (version read-back), and after the last push the engine's
greedy output must equal HF greedy output of the last pushed weights (verification by output).

Transports (`--transports`, default all three; quick: rpc):
- rpc: the engine in this process, `push_weights` (bytes through `collective_rpc`).
- object_store: an engine in a Ray actor (num_cpus=0), `ObjectStoreWeightSync` (`ray.put` per bucket).
- broadcast: an engine in a Ray actor, `BroadcastWeightSync(backend="gloo")` (the GPU path uses "nccl").
Engine: `--engine multiprocess` (default; engine core in its own process, so each bucket crosses
a process boundary as it would in production) or `inprocess` (quick default).

Output: one JSON line on stdout (last line); progress, table and vLLM logs on stderr.
    python benchmarks/bench_weight_sync.py            # full run
    python benchmarks/bench_weight_sync.py --quick    # rpc only, in-process engine
"""

from __future__ import annotations

from _bench_utils import emit, environment, log, set_vllm_cpu_env, summarize, table, time_interleaved

set_vllm_cpu_env()  # before anything imports vLLM

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from rlhf_dist.models.tiny import toy_corpus

MiB = 2**20


def build_models(tmp: Path) -> tuple[Path, Path]:
    """Two "small" models with the same tokenizer and different random inits."""
    from rlhf_dist.models import TINY_SIZES, build_tiny_causal_lm, load_tokenizer, save_tiny_model

    dir_a = save_tiny_model(tmp / "a", toy_corpus(), TINY_SIZES["small"], vocab_size=512, seed=0)
    tok = load_tokenizer(dir_a)
    dir_b = tmp / "b"
    build_tiny_causal_lm(tok, TINY_SIZES["small"], seed=1).save_pretrained(dir_b)
    tok.save_pretrained(dir_b)
    return dir_a, dir_b


def hf_greedy(model, tok, prompts, new_tokens):
    out = []
    for p in prompts:
        with torch.no_grad():
            ids = model.generate(torch.tensor([p]), max_new_tokens=new_tokens, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        out.append(ids[0, len(p):].tolist())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="in-process engine")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bucket-mib", type=float, default=1.0)
    parser.add_argument("--engine", choices=["multiprocess", "inprocess"], default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads here and (OMP_NUM_THREADS) in vLLM's worker")
    parser.add_argument("--transports", default=None, help="comma-separated: rpc,object_store,broadcast (quick: rpc)")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    args.engine = args.engine or ("inprocess" if args.quick else "multiprocess")
    args.transports = (args.transports or ("rpc" if args.quick else "rpc,object_store,broadcast")).split(",")
    if args.engine == "inprocess":
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    from rlhf_dist.engines.weight_sync import bucketize
    from rlhf_dist.models import load_causal_lm, load_tokenizer

    bucket_bytes = int(args.bucket_mib * MiB)
    candidates = {f"bucket_{args.bucket_mib:g}MiB": bucket_bytes, "one_blob": 2**62}
    result = {"benchmark": "bench_weight_sync", "quick": args.quick, "env": environment(), "engine_mode": args.engine}
    with tempfile.TemporaryDirectory(prefix="bench_weight_sync_") as tmp:
        dir_a, dir_b = build_models(Path(tmp))
        tok = load_tokenizer(dir_a)
        model_a, model_b = load_causal_lm(dir_a), load_causal_lm(dir_b)
        sds = [model_b.state_dict(), model_a.state_dict()]
        n_params = sum(t.numel() for t in sds[0].values())
        n_bytes = sum(t.numel() * t.element_size() for t in sds[0].values())
        result["setup"] = {"model": "TINY_SIZES['small'] fp32", "params": n_params, "tensor_bytes": n_bytes,
                           "tensors": len(sds[0]), "repeats": args.repeats}
        log(f"bench_weight_sync: {n_params / 1e6:.2f}M params, {n_bytes / MiB:.1f} MiB, {len(sds[0])} tensors")

        # 1. Serialisation alone (no engine).
        ser = time_interleaved({k: (lambda b=b: list(bucketize(sds[0].items(), b))) for k, b in candidates.items()},
                               repeats=max(3, args.repeats), min_repeat_s=0.0)
        result["bucketize_only"] = {k: summarize(v) for k, v in ser.items()}
        result["buckets"] = {k: len(list(bucketize(sds[0].items(), b))) for k, b in candidates.items()}

        prompts = [tok(t).input_ids for t in toy_corpus(6, seed=7)]
        expected = [hf_greedy(m, tok, prompts, 16) for m in (model_b, model_a)]  # after pushing sds[0], sds[1]
        result["push"], result["verified"] = {}, {}
        for transport in args.transports:
            log(f"[{transport}]")
            samples, verified, info = bench_transport(transport, args, str(dir_a), sds, candidates, prompts, expected)
            result["push"][transport] = {
                k: {**summarize(v), "MiB_per_s_median": n_bytes / MiB / summarize(v)["median_s"]} for k, v in samples.items()
            }
            result["verified"][transport] = verified
            result.setdefault("engine", {})[transport] = info
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()

    rows = [{"transport": t, "candidate": k, "buckets": result["buckets"][k],
             "bucketize_ms": result["bucketize_only"][k]["median_s"] * 1e3,
             "push_ms_median": result["push"][t][k]["median_s"] * 1e3,
             "push_ms_min": result["push"][t][k]["min_s"] * 1e3, "push_ms_max": result["push"][t][k]["max_s"] * 1e3,
             "MiB/s": result["push"][t][k]["MiB_per_s_median"], "verified": result["verified"][t]}
            for t in args.transports for k in candidates]
    log(table(rows, list(rows[0]), f"\nweight push, {n_bytes / MiB:.1f} MiB, engine {args.engine} (medians of {args.repeats})"))
    emit(result, args.json_out)
    if not all(result["verified"].values()):
        raise SystemExit("vLLM greedy output after the last push differs from HF: the sync is broken")


class BenchRolloutActor:
    """Rollout actor for the Ray transports (pickled by value: this file is __main__)."""

    def __init__(self, model_dir: str):
        from rlhf_dist.engines.vllm_rollout import VLLMRolloutEngine
        from rlhf_dist.engines.weight_sync import EXTENSION_CLS

        t0 = time.perf_counter()
        self.engine = VLLMRolloutEngine(model_dir, seed=0, max_model_len=256, worker_extension_cls=EXTENSION_CLS)
        self.start_s = time.perf_counter() - t0

    def greedy(self, prompts, new_tokens):
        return [r.response_ids for r in self.engine.generate(prompts, new_tokens, temperature=0.0)]

    def info(self):
        return {"engine_start_s": self.start_s}


def bench_transport(transport, args, dir_a, sds, candidates, prompts, expected):
    """Timed pushes (candidates side by side, rotating order), alternating weights B, A, B, ...
    Returns (samples per candidate, greedy-after-last-push == HF, engine info)."""
    from rlhf_dist.engines.weight_sync import (
        EXTENSION_CLS, BroadcastWeightSync, ObjectStoreWeightSync, WeightSyncActorMixin, engine_version, push_weights,
    )

    info, cleanup = {}, []
    if transport == "rpc":
        from rlhf_dist.engines.vllm_rollout import VLLMRolloutEngine

        t0 = time.perf_counter()
        engine = VLLMRolloutEngine(dir_a, seed=0, max_model_len=256, worker_extension_cls=EXTENSION_CLS)
        info["engine_start_s"] = time.perf_counter() - t0

        def push(named, version, bucket_bytes):
            stats = push_weights(engine, named, version, bucket_bytes)
            assert engine_version(engine) == version
            return stats

        def greedy():
            return [r.response_ids for r in engine.generate(prompts, 16, temperature=0.0)]

        def shutdown():
            core = getattr(engine.llm.llm_engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
    else:
        import ray

        env = {k: os.environ[k] for k in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_LOGGING_LEVEL",
                                          "TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS") if k in os.environ}
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if args.engine == "inprocess" else "1"
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
        if not ray.is_initialized():
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="bench_weight_sync")
        actor_cls = type("RolloutActor", (BenchRolloutActor, WeightSyncActorMixin), {})
        actor = ray.remote(num_cpus=0, runtime_env={"env_vars": env})(actor_cls).remote(dir_a)
        info.update(ray.get(actor.info.remote()))
        senders = []  # one sender per actor and transport: a new broadcast group replaces the old one

        def push(named, version, bucket_bytes):
            if not senders:
                if transport == "object_store":
                    senders.append(ObjectStoreWeightSync([actor], bucket_bytes, torch.float32))
                else:
                    senders.append(BroadcastWeightSync([actor], backend="gloo", bucket_bytes=bucket_bytes,
                                                       dtype=torch.float32, timeout_s=120))
            senders[0].bucket_bytes = bucket_bytes
            stats = senders[0].push(named, version)
            assert stats["versions"] == [version]
            return stats

        def greedy():
            return ray.get(actor.greedy.remote(prompts, 16))

        def shutdown():
            for s in senders:
                s.close()
            ray.kill(actor)

    t0 = time.perf_counter()
    greedy()
    info["first_generate_s"] = time.perf_counter() - t0
    log(f"  engine ({args.engine}) start {info['engine_start_s']:.1f} s, first generate {info['first_generate_s']:.1f} s")
    version, samples, names = 0, {k: [] for k in candidates}, list(candidates)
    for name in names:  # untimed warm-up push per candidate (the first creates the broadcast group)
        version += 1
        push(sds[(version - 1) % 2].items(), version, candidates[name])
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            version += 1
            t0 = time.perf_counter()
            stats = push(sds[(version - 1) % 2].items(), version, candidates[name])
            samples[name].append(time.perf_counter() - t0)
            log(f"  repeat {r + 1} {name}: {samples[name][-1] * 1e3:.0f} ms ({stats['buckets']} buckets)")
    verified = greedy() == expected[(version - 1) % 2]
    log(f"  greedy output after the last push == HF greedy of the pushed weights: {verified}")
    shutdown()
    return samples, verified, info


if __name__ == "__main__":
    main()
