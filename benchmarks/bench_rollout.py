"""Rollout throughput: `VLLMRolloutEngine.generate` vs Hugging Face `model.generate`, on CPU.

Both sample (temperature 1, top_p 1, top_k off: the full distribution, as PPO needs) from the
same locally built "small" tiny Llama (TINY_SIZES["small"]: hidden 256, 6 layers, vocab 512,
random init), for the same prompts and the same max_new_tokens (default: 64 prompts x 64 new
tokens). Neither suppresses EOS, so a row may stop early; the figure quoted is ACTUAL generated
tokens (up to and including EOS) per second of wall time, and the counts are reported.

Timed: the generate call only, medians over `--repeats` (default 3) with different seeds.
Not timed, reported separately: the vLLM engine start, and for each engine a first warm-up call
(the same prompts and, by default, the same number of new tokens).

Order (fairness): HF runs first, all its repeats, in this process; only then is the vLLM engine
started (engine core + worker, separate processes). So HF is never timed while an engine is
alive: a settled idle engine costs about 1% of a core here, but its processes keep burning CPU
for a few seconds after each call.

Threads (fairness): `--threads N` (default 1) gives both sides N torch intra-op threads: HF via
torch.set_num_threads, the vLLM worker via OMP_NUM_THREADS (vLLM leaves a user-set value alone;
the worker's actual count is probed and reported). `--threads 0` keeps each library's default
(2 on this machine, for both). One thread is the default because on 2 shared cores a 2-thread
OpenMP pool spin-waits for a preempted sibling at every op, and timings then swing by up to 10x
with the load of other processes. CPU seconds used during the timed calls (this process, plus
vLLM's child processes for vLLM) are reported as `cpu_cores_used` = cpu_s / wall_s and as
tokens per CPU-second, which is less sensitive to other processes' load than wall time.

Output: one JSON line on stdout (last line); progress, tables and vLLM's logs on stderr.
    python benchmarks/bench_rollout.py            # full run
    python benchmarks/bench_rollout.py --quick    # smoke run (16 x 16, in-process engine)
"""

from __future__ import annotations

from _bench_utils import emit, environment, log, set_vllm_cpu_env, summarize, table

# Insecure serialization only so that the one thread-count probe (a local function sent with
# collective_rpc) can be pickled; the generate requests are ordinary msgspec messages either way.
set_vllm_cpu_env(VLLM_ALLOW_INSECURE_SERIALIZATION="1")  # before anything imports vLLM

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rlhf_dist.models.tiny import toy_corpus



# ----------------------------------------------------------------------------- model and prompts



def build_model(out_dir: Path) -> Path:
    """The "small" tiny Llama (hidden 256, 6 layers, vocab 512) with its BPE tokenizer, saved locally."""
    from rlhf_dist.models import TINY_SIZES, save_tiny_model

    return save_tiny_model(out_dir, toy_corpus(), TINY_SIZES["small"], vocab_size=512, seed=0)


def make_prompts(tokenizer, n: int, seed: int = 1) -> list[list[int]]:
    """`n` prompts of 3-16 words (BOS included), as token-id lists."""
    return [tokenizer(text).input_ids for text in toy_corpus(n, seed)]


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (input_ids, attention_mask) for batched HF generation."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids, mask


# ----------------------------------------------------------------------------- measurement


def cpu_seconds(include_children: bool) -> float:
    """User + system CPU seconds of this process (and its live child processes), or NaN without psutil."""
    try:
        import psutil
    except ImportError:
        return float("nan")
    me = psutil.Process()
    procs = [me] + (me.children(recursive=True) if include_children else [])
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def timed(fn, include_children: bool = False) -> dict:
    """Run `fn()` once; its wall seconds, CPU seconds and return value (a list of token counts)."""
    cpu0, t0 = cpu_seconds(include_children), time.perf_counter()
    counts = fn()
    wall, cpu = time.perf_counter() - t0, cpu_seconds(include_children) - cpu0
    return {"wall_s": wall, "cpu_s": cpu, "tokens": sum(counts), "counts": counts}


def summarize_runs(runs: list[dict], max_new_tokens: int) -> dict:
    """Medians over the timed repeats, plus per-repeat token counts."""
    for run in runs:
        run["tokens_per_s"] = run["tokens"] / run["wall_s"]
        run["rows_stopped_early"] = sum(c < max_new_tokens for c in run.pop("counts"))
    return {
        "repeats": runs,
        "wall": summarize([r["wall_s"] for r in runs]),
        "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in runs),
        "tokens_median": statistics.median(r["tokens"] for r in runs),
        "cpu_cores_used_median": statistics.median(r["cpu_s"] / r["wall_s"] for r in runs),
        # Throughput per CPU-second spent: less sensitive to other processes' load than wall time.
        "tokens_per_cpu_s_median": statistics.median(r["tokens"] / r["cpu_s"] for r in runs),
    }


# ----------------------------------------------------------------------------- Hugging Face


def hf_counts(new_tokens: torch.Tensor, eos_id: int, max_new_tokens: int) -> list[int]:
    """Generated tokens per row, up to and including the first EOS (HF pads finished rows)."""
    counts = []
    for row in new_tokens.tolist():
        counts.append(row.index(eos_id) + 1 if eos_id in row else min(len(row), max_new_tokens))
    return counts


def bench_hf(model_dir: Path, prompts: list[list[int]], args) -> dict:
    """Warm-up call, then `args.repeats` timed sampling calls of HF generate on the whole batch."""
    from rlhf_dist.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir)
    ids, mask = left_pad(prompts, tok.pad_token_id)

    def generate(max_new_tokens: int, seed: int) -> list[int]:
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            )
        return hf_counts(out[:, ids.shape[1]:], tok.eos_token_id, max_new_tokens)

    threads = torch.get_num_threads()
    warmup = timed(lambda: generate(args.warmup_new_tokens, seed=0))
    log(f"  hf warm-up ({args.warmup_new_tokens} new tokens): {warmup['wall_s']:.2f} s")
    runs = []
    for r in range(args.repeats):
        runs.append(timed(lambda: generate(args.max_new_tokens, seed=r + 1)))
        log(f"  hf repeat {r + 1}: {runs[-1]['tokens']} tokens in {runs[-1]['wall_s']:.2f} s")
    return {"torch_threads": threads, "warmup_s": warmup["wall_s"], **summarize_runs(runs, args.max_new_tokens)}


# ----------------------------------------------------------------------------- vLLM


def _worker_torch_threads(worker) -> int:
    """Runs inside the vLLM worker process (collective_rpc): its torch intra-op thread count."""
    import torch

    return torch.get_num_threads()


def bench_vllm(model_dir: Path, prompts: list[list[int]], args) -> dict:
    """Engine start, warm-up call, then `args.repeats` timed `VLLMRolloutEngine.generate` calls."""
    if args.engine == "inprocess":
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from rlhf_dist.engines.vllm_rollout import VLLMRolloutEngine

    main_threads_before = torch.get_num_threads()
    t0 = time.perf_counter()
    engine = VLLMRolloutEngine(str(model_dir), seed=0, max_model_len=256)
    start_s = time.perf_counter() - t0
    log(f"  vllm engine start ({args.engine}): {start_s:.1f} s")
    try:
        worker_threads = engine.llm.collective_rpc(_worker_torch_threads)
    except Exception as exc:  # the probe is informative only
        worker_threads = f"unknown ({type(exc).__name__})"

    def generate(max_new_tokens: int, seed: int) -> list[int]:
        return [len(r.response_ids) for r in engine.generate(prompts, max_new_tokens, temperature=1.0, seed=seed)]

    children = args.engine == "multiprocess"
    warmup = timed(lambda: generate(args.warmup_new_tokens, seed=0), children)
    log(f"  vllm warm-up ({args.warmup_new_tokens} new tokens): {warmup['wall_s']:.2f} s")
    runs = []
    for r in range(args.repeats):
        runs.append(timed(lambda: generate(args.max_new_tokens, seed=r + 1), children))
        log(f"  vllm repeat {r + 1}: {runs[-1]['tokens']} tokens in {runs[-1]['wall_s']:.2f} s")
    result = {
        "engine_mode": args.engine,
        "engine_start_s": start_s,
        "warmup_s": warmup["wall_s"],
        "worker_torch_threads": worker_threads,
        "main_process_torch_threads_before_after": [main_threads_before, torch.get_num_threads()],
        # The CPU worker replaces torch.set_num_threads with a no-op in ITS process; in-process
        # mode that is this process, for the rest of its life.
        "main_process_set_num_threads_disabled": torch.set_num_threads.__name__ != "set_num_threads",
        **summarize_runs(runs, args.max_new_tokens),
    }
    shutdown(engine)
    return result


def shutdown(engine) -> None:
    """Stop vLLM's engine processes now, so their exit logs come before the JSON line."""
    core = getattr(getattr(engine.llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="16 prompts x 16 new tokens, in-process engine")
    parser.add_argument("--batch", type=int, default=None, help="number of prompts (default 64, quick 16)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 64, quick 16")
    parser.add_argument("--warmup-new-tokens", type=int, default=None,
                        help="new tokens of the untimed first call (default: max-new-tokens, a full-size call)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engine", choices=["multiprocess", "inprocess"], default=None,
                        help="vLLM engine core in its own process (default) or in this one (quick default)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for HF and (via OMP_NUM_THREADS) for the vLLM worker; "
                        "0 keeps each library's default (default 1)")
    parser.add_argument("--model-dir", default=None, help="reuse a saved model folder instead of building one")
    parser.add_argument("--json-out", default=None, help="also write the JSON result to this file")
    args = parser.parse_args()
    args.batch = args.batch or (16 if args.quick else 64)
    args.max_new_tokens = args.max_new_tokens or (16 if args.quick else 64)
    args.warmup_new_tokens = args.warmup_new_tokens or args.max_new_tokens
    args.engine = args.engine or ("inprocess" if args.quick else "multiprocess")
    if args.threads > 0:
        torch.set_num_threads(args.threads)  # HF side (this process)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read by vLLM's worker process at start

    result = {"benchmark": "bench_rollout", "quick": args.quick, "env": environment()}
    with tempfile.TemporaryDirectory(prefix="bench_rollout_") as tmp:
        t0 = time.perf_counter()
        model_dir = Path(args.model_dir) if args.model_dir else build_model(Path(tmp) / "small")
        from rlhf_dist.models import load_tokenizer

        prompts = make_prompts(load_tokenizer(model_dir), args.batch)
        log(f"bench_rollout: model ready in {time.perf_counter() - t0:.1f} s; {args.batch} prompts x {args.max_new_tokens} new tokens")
        result["setup"] = {
            "model": "TINY_SIZES['small'] (hidden 256, 6 layers, 4 heads, vocab 512, fp32)",
            "batch": args.batch,
            "max_new_tokens": args.max_new_tokens,
            "prompt_tokens_mean": statistics.mean(len(p) for p in prompts),
            "sampling": "temperature 1, top_p 1, top_k off, EOS not suppressed",
        }
        log("[1/2] HF generate")
        result["hf"] = bench_hf(model_dir, prompts, args)
        result["loadavg_1m_before_vllm"] = os.getloadavg()[0]
        log("[2/2] vLLM (VLLMRolloutEngine.generate)")
        result["vllm"] = bench_vllm(model_dir, prompts, args)
    result["ratio_tokens_per_s_vllm_over_hf"] = result["vllm"]["tokens_per_s_median"] / result["hf"]["tokens_per_s_median"]
    print_table(result)
    emit(result, args.json_out)


def print_table(result: dict) -> None:
    """Human-readable summary (stderr)."""
    rows = []
    for name in ("hf", "vllm"):
        r = result[name]
        rows.append(
            {
                "engine": name,
                "tok/s_median": r["tokens_per_s_median"],
                "wall_s_median": r["wall"]["median_s"],
                "tokens_median": r["tokens_median"],
                "cpu_cores": r["cpu_cores_used_median"],
                "tok/cpu_s": r["tokens_per_cpu_s_median"],
                "warmup_s": r["warmup_s"],
                "start_s": r.get("engine_start_s", 0.0),
            }
        )
    log(table(rows, list(rows[0]), "\nrollout throughput (medians over repeats)"))
    log(f"vLLM / HF tokens/s: {result['ratio_tokens_per_s_vllm_over_hf']:.2f}x")


if __name__ == "__main__":
    main()
