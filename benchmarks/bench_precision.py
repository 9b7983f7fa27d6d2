"""The learner's forward and backward in fp32 and bf16 on CPU, with torch's fused attention (sdpa)
and with eager attention (batched matmuls + softmax): what `learner.dtype` and
`learner.attn_implementation` choose between.

The batch and the policy are bench_forward_groups.py's (bench_vs_trl's 5.0M-parameter Llama, 64
trajectories of prompts of 6-30 tokens and responses of up to 64 tokens), forwarded in the
learner's length-sorted groups of <= 2048 tokens. Candidates are the same weights in fp32 (the
reference) and cast to bf16, each with sdpa and eager attention. Measured at 2 torch threads:
response log-probs without gradient (the reference actor's and the old log-prob pass) and
log-probs + backward of their weighted sum (the update), candidates interleaved repeat by repeat,
medians. Also each candidate's log-probs against fp32 sdpa (max and mean |difference| over the
response tokens), and whether the CPU has bf16 instructions (bf16 matmuls are emulated, and slow,
without AVX512-BF16 or AMX).

With `--memory`, also the peak resident memory (ru_maxrss) of a fresh process that runs forward +
backward of the same policy on 60 batches of 16 rows and 20-99 tokens (new shapes, as PPO's
length-sorted groups bring every iteration), after 0, 20, 40 and 60 batches, in fp32 and bf16, and
in bf16 with `ONEDNN_PRIMITIVE_CACHE_CAPACITY=0` (oneDNN runs torch's bf16 matmuls on CPU and
caches a primitive per shape).

    python benchmarks/bench_precision.py            # full run
    python benchmarks/bench_precision.py --quick    # smoke run
    python benchmarks/bench_precision.py --quick --memory
"""

from __future__ import annotations

from _bench_utils import emit, environment, log, summarize, table, time_interleaved

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench_forward_groups import DEFAULT_BUDGET, build_batch
from rlhf_dist.models import load_causal_lm
from rlhf_dist.models.forward import by_length, response_logprobs


def cpu_bf16_flags() -> list[str]:
    """The CPU's bf16 instruction-set flags (Linux /proc/cpuinfo), [] if none or unknown."""
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return sorted(words & {"avx512_bf16", "amx_bf16", "amx_tile"})


def memory_child(model_dir: str, dtype: str, batches: int = 60) -> list[int]:
    """In this (fresh) process: peak RSS in MiB after 0, 20, 40, ... batches of new shapes."""
    model = load_causal_lm(model_dir)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
        model.set_attn_implementation("eager")
    peaks = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024]
    gen = torch.Generator().manual_seed(0)
    for i in range(batches):
        ids = torch.randint(5, 500, (16, int(torch.randint(20, 100, (1,), generator=gen))), generator=gen)
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, use_cache=False).logits.float().logsumexp(-1).mean().backward()
        if i % 20 == 19:
            peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    return peaks


def memory_runs(model_dir: str, threads: int) -> list[dict]:
    """`memory_child` in fp32, bf16 and bf16 without oneDNN's primitive cache, each in its own process."""
    runs = []
    for dtype, env in (("fp32", {}), ("bf16", {}), ("bf16", {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"})):
        cmd = [sys.executable, __file__, "--memory-child", dtype, model_dir, "--threads", str(threads)]
        out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True).stdout
        runs.append({"dtype": dtype, "env": env, "peak_rss_mib": json.loads(out.strip().splitlines()[-1])})
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--memory", action="store_true", help="also peak RSS over new batch shapes, fp32 and bf16")
    parser.add_argument("--memory-child", nargs=2, metavar=("DTYPE", "MODEL_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per candidate (default 7; quick 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2, the TRL setting's learner)")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child[1], args.memory_child[0])), flush=True)
        return

    with tempfile.TemporaryDirectory(prefix="bench_precision_") as tmp:
        model_dir, batch = build_batch(Path(tmp))
        fp32 = load_causal_lm(model_dir)
        memory = memory_runs(model_dir, args.threads) if args.memory else None
    models = {}
    for dtype in ("fp32", "bf16"):
        for attn in ("sdpa", "eager"):
            m = copy.deepcopy(fp32).to(torch.float32 if dtype == "fp32" else torch.bfloat16)
            m.set_attn_implementation(attn)
            models[f"{dtype} {attn}"] = m
    mask = batch.response_mask
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0)) * mask

    def logprobs(model) -> torch.Tensor:
        return by_length(lambda b: (response_logprobs(model, b),), batch, DEFAULT_BUDGET)[0]

    def forward(model):
        with torch.no_grad():
            logprobs(model)

    def update(model):
        model.zero_grad(set_to_none=True)
        (logprobs(model) * weights).sum().backward()

    with torch.no_grad():
        ref = logprobs(models["fp32 sdpa"])
        diffs = {name: (logprobs(m) - ref)[mask].abs() for name, m in models.items()}
    flags = cpu_bf16_flags()
    log(f"bench_precision: {mask.shape[0]} trajectories, {int(batch.attention_mask.sum())} real tokens, "
        f"{args.threads} threads; CPU bf16 flags: {', '.join(flags) or 'none (bf16 is emulated)'}")
    result = {"benchmark": "bench_precision", "quick": args.quick, "env": {**environment(), "cpu_bf16_flags": flags},
              "setup": {"rows": int(mask.shape[0]), "real_tokens": int(batch.attention_mask.sum()),
                        "forward_max_tokens": DEFAULT_BUDGET, "repeats": repeats},
              "logprob_diff_vs_fp32_sdpa": {n: {"max": float(d.max()), "mean": float(d.mean())} for n, d in diffs.items()},
              "results": []}
    rows = []
    for what, fn in (("forward", forward), ("forward+backward", update)):
        samples = time_interleaved({n: (lambda m=m: fn(m)) for n, m in models.items()}, repeats, warmup=1)
        base = summarize(samples["fp32 sdpa"])["median_s"]
        for name in models:
            s = summarize(samples[name])
            result["results"].append({"pass": what, "candidate": name, **s, "speedup_vs_fp32_sdpa": base / s["median_s"]})
            rows.append({"pass": what, "dtype attention": name, "median ms": 1000 * s["median_s"],
                         "x fp32 sdpa": base / s["median_s"], "max |dlogp|": float(diffs[name].max()),
                         "mean |dlogp|": float(diffs[name].mean())})
    log(table(rows, list(rows[0]), "\nlog-probs of 64 trajectories (medians); |dlogp|: against fp32 sdpa"))
    if memory is not None:
        result["memory"] = memory
        mem_rows = [{"dtype": m["dtype"], "env": " ".join(f"{k}={v}" for k, v in m["env"].items()) or "-",
                     **{f"after {20 * i}": f"{p} MiB" for i, p in enumerate(m["peak_rss_mib"])}} for m in memory]
        log(table(mem_rows, list(mem_rows[0]), "\npeak RSS of a process over batches of new shapes (16 rows x 20-99 tokens)"))
    emit(result, args.json_out)


if __name__ == "__main__":
    main()
