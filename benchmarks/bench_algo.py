"""Benchmark of the RLHF math core (rlhf_dist.algo) on realistic batch shapes, on CPU.

Three sections, each comparing the library against references measured side by side
(interleaved repeats, medians; see _bench_utils.time_interleaved):

- gae:      `gae_advantages` (a reverse loop over T on (B,) columns) vs a naive per-row pure-Python
            loop over each row's valid tokens; plus `delta_first_alt`, a variant NOT in the library
            (deltas vectorised, one fused op per step) to size a possible fix.
            B in {64, 256}, T in {64, 256, 1024}.
- logprobs: `logprobs_from_logits` on fp32 logits and on bf16 logits (its row-wise upcast path) vs
            the naive `log_softmax(logits.float()).gather(...)` on each; plus `rowwise_fp32_alt`
            (the library's fp32 function applied one row at a time, NOT a library path). Time AND
            peak extra memory: the peak of live bytes allocated through torch's CPU allocator
            during one call, above what was live when it started (torch.profiler memory events;
            the output is included). V = 512 on the full B x T grid; V = 32000 at (64, 64) and
            (64, 256) only ((256, 1024, 32000) fp32 logits alone would be 33.5 GB).
- ranking:  `ranking_loss` (forward) for K = 4..9 responses per prompt, B = 64, vs a brute-force
            pure-Python pair loop and a loop over the C(K, 2) pairs vectorised over the batch.

Every candidate's result is checked against the library's before timing. Torch runs with ONE
intra-op thread by default (`--threads`): on the 2 shared cores of the project machine a
2-thread pool spin-waits for a preempted sibling at every op and timings swing by 10x.

Output: one JSON line on stdout (the last line), tables on stderr (plus torch.profiler's
"USDT ... profiler_start/stop" lines, harmless); `--json-out FILE` also writes the JSON.
    python benchmarks/bench_algo.py               # full run
    python benchmarks/bench_algo.py --quick       # smoke run
    python benchmarks/bench_algo.py --threads 0   # torch's default thread count instead of 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile

import torch
import torch.nn.functional as F

from _bench_utils import emit, environment, log, summarize, table, time_interleaved
from rlhf_dist.algo import gae_advantages, logprobs_from_logits, ranking_loss

GAMMA, LAM = 1.0, 0.95


# ----------------------------------------------------------------------------- inputs


def right_padded_mask(B: int, T: int, generator: torch.Generator) -> torch.Tensor:
    """(B, T) bool mask whose rows are valid prefixes of random length in [1, T]."""
    lengths = torch.randint(1, T + 1, (B,), generator=generator)
    return torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)


# ----------------------------------------------------------------------------- GAE


def gae_naive(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Reference GAE: a pure-Python loop per row over its valid tokens (Python floats)."""
    T = rewards.shape[1]
    lengths = mask.sum(1).tolist()
    r_rows, v_rows = rewards.tolist(), values.tolist()
    adv_rows = []
    for r, v, length in zip(r_rows, v_rows, lengths):
        row = [0.0] * T
        advantage, next_value = 0.0, 0.0
        for t in range(length - 1, -1, -1):
            delta = r[t] + gamma * next_value - v[t]
            advantage = delta + gamma * lam * advantage
            row[t] = advantage
            next_value = v[t]
        adv_rows.append(row)
    advantages = torch.tensor(adv_rows)
    zero = torch.zeros(())
    return advantages, torch.where(mask, advantages + values, zero)


def gae_delta_first(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """A possible faster variant (not in the library): all deltas in one vectorised op, then a reverse
    loop of ONE fused op per step on contiguous (B,) rows of the transposed (T, B) layout."""
    zero = torch.zeros(())
    rewards, values = torch.where(mask, rewards, zero), torch.where(mask, values, zero)
    next_values = torch.cat([values[:, 1:], torch.zeros(values.shape[0], 1)], dim=1)
    delta_tb = (rewards + gamma * next_values - values).T.contiguous()
    adv_tb = torch.empty_like(delta_tb)
    adv_tb[-1] = delta_tb[-1]
    for t in range(delta_tb.shape[0] - 2, -1, -1):
        torch.add(delta_tb[t], adv_tb[t + 1], alpha=gamma * lam, out=adv_tb[t])
    advantages = torch.where(mask, adv_tb.T, zero)
    return advantages, torch.where(mask, advantages + values, zero)


def bench_gae(shapes: list[tuple[int, int]], repeats: int, min_repeat_s: float) -> list[dict]:
    """Median time per call of the library GAE, the naive reference and the delta-first variant, per (B, T)."""
    rows = []
    for B, T in shapes:
        g = torch.Generator().manual_seed(B * 10_000 + T)
        rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
        mask = right_padded_mask(B, T, g)
        lib_adv, lib_ret = gae_advantages(rewards, values, mask, GAMMA, LAM)
        max_diff = 0.0
        for reference in (gae_naive, gae_delta_first):
            ref_adv, ref_ret = reference(rewards, values, mask, GAMMA, LAM)
            max_diff = max(max_diff, (lib_adv - ref_adv).abs().max().item(), (lib_ret - ref_ret).abs().max().item())
        assert max_diff < 1e-3, f"GAE mismatch at B={B} T={T}: {max_diff}"
        samples = time_interleaved(
            {
                "library": lambda: gae_advantages(rewards, values, mask, GAMMA, LAM),
                "naive_python": lambda: gae_naive(rewards, values, mask, GAMMA, LAM),
                "delta_first_alt": lambda: gae_delta_first(rewards, values, mask, GAMMA, LAM),
            },
            repeats,
            min_repeat_s,
        )
        lib, naive, alt = (summarize(samples[k]) for k in ("library", "naive_python", "delta_first_alt"))
        rows.append(
            {
                "B": B,
                "T": T,
                "valid_tokens": int(mask.sum()),
                "library": lib,
                "naive_python": naive,
                "delta_first_alt": alt,
                "speedup_library_vs_naive": naive["median_s"] / lib["median_s"],
                "speedup_alt_vs_library": lib["median_s"] / alt["median_s"],
                "max_abs_diff": max_diff,
            }
        )
        log(f"  gae B={B} T={T}: library {lib['median_s']*1e3:.2f} ms, naive {naive['median_s']*1e3:.2f} ms, alt {alt['median_s']*1e3:.2f} ms")
    return rows


# ----------------------------------------------------------------------------- log-probs


def logprobs_naive(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Reference: full fp32 log-softmax over the vocabulary, then gather the tokens."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def peak_extra_bytes(fn) -> int:
    """Peak of live bytes allocated by torch's CPU allocator during one call of `fn`.

    Counted from torch.profiler memory events (every tensor allocation and free, with its size),
    relative to what was live when the call started; the call's output is included. Allocations
    outside torch's allocator (Python objects, library scratch buffers) are not seen; on these
    ops the large buffers are all torch tensors.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    finally:
        os.remove(path)
    memory = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    live = peak = 0
    for event in memory:
        live += event["args"]["Bytes"]
        peak = max(peak, live)
    return peak


def bench_logprobs(shapes: list[tuple[int, int, int]], repeats: int, min_repeat_s: float) -> list[dict]:
    """Time and peak extra memory of the log-prob paths, per (B, T, V)."""
    rows = []
    for B, T, V in shapes:
        g = torch.Generator().manual_seed(B + T + V)
        logits32 = torch.randn(B, T, V, generator=g)
        logits16 = logits32.to(torch.bfloat16)
        tokens = torch.randint(0, V, (B, T), generator=g)
        candidates = {
            "library_fp32": lambda: logprobs_from_logits(logits32, tokens),
            "library_bf16_rowwise": lambda: logprobs_from_logits(logits16, tokens),
            "naive_fp32": lambda: logprobs_naive(logits32, tokens),
            "naive_bf16_full_upcast": lambda: logprobs_naive(logits16, tokens),
            "rowwise_fp32_alt": lambda: torch.stack([logprobs_from_logits(x, t) for x, t in zip(logits32, tokens)]),
        }
        diff32 = (candidates["library_fp32"]() - candidates["naive_fp32"]()).abs().max().item()
        diff16 = (candidates["library_bf16_rowwise"]() - candidates["naive_bf16_full_upcast"]()).abs().max().item()
        diff32 = max(diff32, (candidates["rowwise_fp32_alt"]() - candidates["naive_fp32"]()).abs().max().item())
        assert max(diff32, diff16) < 1e-3, f"log-prob mismatch at {B, T, V}: {diff32}, {diff16}"
        memory = {name: peak_extra_bytes(fn) for name, fn in candidates.items()}
        samples = time_interleaved(candidates, repeats, min_repeat_s)
        stats = {name: summarize(s) for name, s in samples.items()}
        med = {name: s["median_s"] for name, s in stats.items()}
        rows.append(
            {
                "B": B,
                "T": T,
                "V": V,
                "time": stats,
                "peak_extra_bytes": memory,
                "bytes_full_fp32_logits": B * T * V * 4,
                "bytes_one_row_fp32": T * V * 4,
                "bytes_input_bf16": B * T * V * 2,
                "time_ratio_bf16_rowwise_vs_fp32": med["library_bf16_rowwise"] / med["library_fp32"],
                "time_ratio_naive_vs_library_fp32": med["naive_fp32"] / med["library_fp32"],
                "time_ratio_naive_full_upcast_vs_bf16_rowwise": med["naive_bf16_full_upcast"] / med["library_bf16_rowwise"],
                "time_ratio_rowwise_fp32_alt_vs_fp32": med["rowwise_fp32_alt"] / med["library_fp32"],
                "max_abs_diff_fp32": diff32,
                "max_abs_diff_bf16": diff16,
            }
        )
        log(
            f"  logprobs B={B} T={T} V={V}: "
            + ", ".join(f"{k} {v*1e3:.1f} ms / {memory[k]/2**20:.1f} MiB" for k, v in med.items())
        )
        del logits32, logits16
    return rows


# ----------------------------------------------------------------------------- ranking loss


def _neg_log_sigmoid(x: float) -> float:
    """-log(sigmoid(x)) = softplus(-x), numerically stable."""
    return math.log1p(math.exp(-abs(x))) + max(-x, 0.0)


def ranking_loss_python(scores: torch.Tensor, ranks: torch.Tensor) -> float:
    """Brute force: for each prompt, every ordered pair (i, j) with rank_i < rank_j, in Python floats."""
    per_prompt = []
    for s, r in zip(scores.tolist(), ranks.tolist()):
        total, pairs = 0.0, 0
        for i in range(len(s)):
            for j in range(len(s)):
                if r[i] < r[j]:
                    total += _neg_log_sigmoid(s[i] - s[j])
                    pairs += 1
        if pairs:
            per_prompt.append(total / pairs)
    return sum(per_prompt) / len(per_prompt)


def ranking_loss_pair_loop(scores: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Loop over the C(K, 2) index pairs, each vectorised over the batch (all slots valid, no ties)."""
    K = scores.shape[1]
    total = torch.zeros(scores.shape[0])
    for i in range(K):
        for j in range(i + 1, K):
            sign = torch.where(ranks[:, i] < ranks[:, j], 1.0, -1.0)
            total = total - F.logsigmoid(sign * (scores[:, i] - scores[:, j]))
    return (total / (K * (K - 1) / 2)).mean()


def bench_ranking(batch: int, ks: list[int], repeats: int, min_repeat_s: float) -> list[dict]:
    """Median time per call of `ranking_loss` vs the two loop references, per K."""
    rows = []
    for K in ks:
        g = torch.Generator().manual_seed(K)
        scores = torch.randn(batch, K, generator=g)
        ranks = torch.argsort(torch.rand(batch, K, generator=g), dim=1)  # a random strict ranking per prompt
        lib_value = ranking_loss(scores, ranks).item()
        diffs = [abs(lib_value - ranking_loss_python(scores, ranks)), abs(lib_value - ranking_loss_pair_loop(scores, ranks).item())]
        assert max(diffs) < 1e-4, f"ranking_loss mismatch at K={K}: {diffs}"
        samples = time_interleaved(
            {
                "library": lambda: ranking_loss(scores, ranks),
                "python_pairs": lambda: ranking_loss_python(scores, ranks),
                "torch_pair_loop": lambda: ranking_loss_pair_loop(scores, ranks),
            },
            repeats,
            min_repeat_s,
        )
        stats = {name: summarize(s) for name, s in samples.items()}
        lib = stats["library"]["median_s"]
        rows.append(
            {
                "B": batch,
                "K": K,
                "pairs_per_prompt": K * (K - 1) // 2,
                "time": stats,
                "speedup_library_vs_python_pairs": stats["python_pairs"]["median_s"] / lib,
                "speedup_library_vs_torch_pair_loop": stats["torch_pair_loop"]["median_s"] / lib,
                "max_abs_diff": max(diffs),
            }
        )
        log(f"  ranking B={batch} K={K}: library {lib*1e6:.0f} us")
    return rows


# ----------------------------------------------------------------------------- report


def print_tables(result: dict) -> None:
    """Human-readable tables (stderr)."""
    gae = [
        {
            "B": r["B"], "T": r["T"],
            "library_ms": r["library"]["median_s"] * 1e3,
            "naive_py_ms": r["naive_python"]["median_s"] * 1e3,
            "alt_ms": r["delta_first_alt"]["median_s"] * 1e3,
            "naive/library": r["speedup_library_vs_naive"],
            "library/alt": r["speedup_alt_vs_library"],
        }
        for r in result["gae"]
    ]
    log(table(gae, list(gae[0]), "\ngae_advantages: median ms per call (naive/library > 1: library faster; alt = delta-first variant, not in the library)"))
    lp = []
    for r in result["logprobs"]:
        t, m = r["time"], r["peak_extra_bytes"]
        lp.append(
            {
                "B": r["B"], "T": r["T"], "V": r["V"],
                "fp32_ms": t["library_fp32"]["median_s"] * 1e3,
                "bf16row_ms": t["library_bf16_rowwise"]["median_s"] * 1e3,
                "naive32_ms": t["naive_fp32"]["median_s"] * 1e3,
                "naive16_ms": t["naive_bf16_full_upcast"]["median_s"] * 1e3,
                "row32alt_ms": t["rowwise_fp32_alt"]["median_s"] * 1e3,
                "bf16row/fp32": r["time_ratio_bf16_rowwise_vs_fp32"],
                "naive32/fp32": r["time_ratio_naive_vs_library_fp32"],
                "fp32_MiB": m["library_fp32"] / 2**20,
                "bf16row_MiB": m["library_bf16_rowwise"] / 2**20,
                "naive32_MiB": m["naive_fp32"] / 2**20,
                "naive16_MiB": m["naive_bf16_full_upcast"] / 2**20,
                "row32alt_MiB": m["rowwise_fp32_alt"] / 2**20,
                "full_fp32_MiB": r["bytes_full_fp32_logits"] / 2**20,
            }
        )
    log(table(lp, list(lp[0]), "\nlogprobs_from_logits: median ms per call; peak extra MiB allocated by torch during one call"))
    rk = [
        {
            "B": r["B"], "K": r["K"],
            "library_us": r["time"]["library"]["median_s"] * 1e6,
            "py_pairs_us": r["time"]["python_pairs"]["median_s"] * 1e6,
            "pair_loop_us": r["time"]["torch_pair_loop"]["median_s"] * 1e6,
            "py/library": r["speedup_library_vs_python_pairs"],
            "loop/library": r["speedup_library_vs_torch_pair_loop"],
        }
        for r in result["ranking"]
    ]
    log(table(rk, list(rk[0]), "\nranking_loss: median us per call (ratio > 1: library faster)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes and fewer repeats (smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per candidate (default 7, quick 3; log-probs at most 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads; 0 keeps torch's default (default 1)")
    parser.add_argument("--json-out", default=None, help="also write the JSON result to this file")
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 7)
    min_repeat_s = 0.005 if args.quick else 0.02
    if args.quick:
        gae_shapes = [(64, 64), (64, 256)]
        lp_shapes = [(64, 64, 512), (64, 256, 512), (16, 64, 32000)]
        ks = [4, 9]
    else:
        gae_shapes = [(B, T) for B in (64, 256) for T in (64, 256, 1024)]
        # V = 32000 stops at B*T = 16384: (256, 1024, 32000) fp32 logits alone are 33.5 GB.
        lp_shapes = [(B, T, 512) for B in (64, 256) for T in (64, 256, 1024)] + [(64, 64, 32000), (64, 256, 32000)]
        ks = list(range(4, 10))

    result = {"benchmark": "bench_algo", "quick": args.quick, "repeats": repeats, "env": environment()}
    log(f"bench_algo: torch threads {torch.get_num_threads()}, repeats {repeats}")
    log("[1/3] gae_advantages")
    result["gae"] = bench_gae(gae_shapes, repeats, min_repeat_s)
    log("[2/3] logprobs_from_logits")
    # Fewer repeats here: (64, 256, 32000) is the slowest shape (benchmarks/README.md, bench_algo.py).
    result["logprobs_repeats"] = min(repeats, 5)
    result["logprobs"] = bench_logprobs(lp_shapes, result["logprobs_repeats"], min_repeat_s)
    log("[3/3] ranking_loss")
    result["ranking"] = bench_ranking(64, ks, repeats, min_repeat_s)
    print_tables(result)
    emit(result, args.json_out)


if __name__ == "__main__":
    main()
