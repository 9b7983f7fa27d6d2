"""Weight sync, learner -> vLLM engine on CPU: time to push all weights of the "small" model.

Model: TINY_SIZES["small"] (hidden 256, 6 layers, vocab 512, fp32: 5.0M parameters, 20 MB).
The engine starts on weights A; pushes alternate between weights B and A (each push really
changes every tensor), with `push_weights` (safetensors buckets -> `collective_rpc` ->
`WeightSyncExtension.rlhf_load_weight_bucket` -> the worker's `reload_weights`, then prefix
cache reset and version read-back). Candidates, timed side by side with their order rotated
from repeat to repeat: `bucket_1MiB` (1 MiB buckets) and `one_blob` (one bucket holding
everything). Also timed without an engine: `bucketize` alone (serialisation cost of each).
Each push is checked to have landed (version read-back), and after the last push the engine's
greedy output must equal HF greedy output of the last pushed weights (verification by output).

Engine: `--engine multiprocess` (default; engine core in its own process, so each bucket crosses
a process boundary as it would from a learner) or `inprocess` (quick default).

Output: one JSON line on stdout (last line); progress, table and vLLM logs on stderr.
    python benchmarks/bench_weight_sync.py            # about 1 min
    python benchmarks/bench_weight_sync.py --quick    # in-process engine, about 20-30 s
"""

from __future__ import annotations

import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from _bench_utils import emit, environment, log, summarize, table, time_interleaved

WORDS = (
    "the a cat dog bird sat ran on under mat box cup red blue green one two three four five "
    "list count avoid facts question answer is are and not"
).split()
MiB = 2**20


def toy_corpus(n: int = 2000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 16))) for _ in range(n)]


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
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    args.engine = args.engine or ("inprocess" if args.quick else "multiprocess")
    if args.engine == "inprocess":
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    from rlhf_dist.engines.vllm_weight_sync import EXTENSION_CLS, bucketize, engine_version, push_weights
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

        # 2. Pushes into a live engine.
        from rlhf_dist.engines.vllm_rollout import VLLMRolloutEngine

        t0 = time.perf_counter()
        engine = VLLMRolloutEngine(str(dir_a), seed=0, max_model_len=256, worker_extension_cls=EXTENSION_CLS)
        result["engine_start_s"] = time.perf_counter() - t0
        prompts = [tok(t).input_ids for t in toy_corpus(6, seed=7)]
        t0 = time.perf_counter()
        engine.generate(prompts, 8, temperature=0.0)
        result["engine_warmup_generate_s"] = time.perf_counter() - t0
        log(f"  engine ({args.engine}) start {result['engine_start_s']:.1f} s, first generate {result['engine_warmup_generate_s']:.1f} s")

        version, samples = 0, {k: [] for k in candidates}
        push_weights(engine, sds[version % 2].items(), version + 1, bucket_bytes)  # untimed warm-up push
        version += 1
        names = list(candidates)
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[: r % len(names)]:
                version += 1
                t0 = time.perf_counter()
                stats = push_weights(engine, sds[(version - 1) % 2].items(), version, candidates[name])
                samples[name].append(time.perf_counter() - t0)
                assert engine_version(engine) == version and stats["buckets"] == result["buckets"][name]
                log(f"  repeat {r + 1} {name}: {samples[name][-1] * 1e3:.0f} ms ({stats['buckets']} buckets)")
        last = [model_b, model_a][(version - 1) % 2]
        got = [r.response_ids for r in engine.generate(prompts, 16, temperature=0.0)]
        result["verified_greedy_equals_hf_of_last_push"] = got == hf_greedy(last, tok, prompts, 16)
        result["push"] = {k: {**summarize(v), "MiB_per_s_median": n_bytes / MiB / summarize(v)["median_s"]}
                          for k, v in samples.items()}
        core = getattr(engine.llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()

    rows = [{"candidate": k, "buckets": result["buckets"][k],
             "bucketize_ms": result["bucketize_only"][k]["median_s"] * 1e3,
             "push_ms_median": result["push"][k]["median_s"] * 1e3,
             "push_ms_min": result["push"][k]["min_s"] * 1e3, "push_ms_max": result["push"][k]["max_s"] * 1e3,
             "MiB/s": result["push"][k]["MiB_per_s_median"]} for k in candidates]
    log(table(rows, list(rows[0]), f"\nweight push, {n_bytes / MiB:.1f} MiB, engine {args.engine} (medians of {args.repeats})"))
    log(f"verified by greedy output: {result['verified_greedy_equals_hf_of_last_push']}")
    emit(result, args.json_out)
    if not result["verified_greedy_equals_hf_of_last_push"]:
        raise SystemExit("vLLM greedy output after the last push differs from HF: the sync is broken")


if __name__ == "__main__":
    main()
