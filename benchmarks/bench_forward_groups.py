"""PPO trajectory forwards in length-sorted groups (`rlhf_dist.models.forward.by_length`, the
learner's `learner.forward_max_tokens` and the scorers' sorted micro-batches) against one padded
forward of the whole batch.

The batch is the bench_vs_trl setting's: 64 rows, prompts of 6-30 tokens drawn from that script's
prompt distribution (left-padded to the longest), responses of 64 tokens except about 12% that end
early at a uniform length (right-padded); the policy is bench_vs_trl's 5.0M-parameter Llama
(hidden 256, 6 layers, 8 heads, MLP 688, vocab 512), fp32, random init. Candidates:

- `budget=0`: one forward of the batch padded to the longest prompt + response (the plain path),
- `budget=N`: rows sorted by total length, groups of at most N padded tokens each.

Measured: response log-probs without gradient (what the reference actor and the learner's old
log-prob pass compute), and log-probs + backward of their weighted sum (the learner's update),
each at 1 and 2 torch threads. Candidates are interleaved repeat by repeat (medians). Before
timing, every budget's log-probs are checked against the plain path (max abs difference in the JSON).

With `--profile`, also where the time of the default budget's passes goes at 2 threads
(`torch.profiler`, self CPU time by operator, grouped: matrix multiplications, attention,
element-wise ops, the rest), over 3 profiled repeats after 3 warm-ups.

    python benchmarks/bench_forward_groups.py            # full run
    python benchmarks/bench_forward_groups.py --quick    # smoke run
    python benchmarks/bench_forward_groups.py --quick --profile
"""

from __future__ import annotations

from _bench_utils import emit, environment, log, summarize, table, time_interleaved

import argparse
import random
import sys
import tempfile
from pathlib import Path

import torch

from rlhf_dist.models import load_causal_lm, pad_prompt_response
from rlhf_dist.models.forward import by_length, response_logprobs

ROWS, RESPONSE, VOCAB = 64, 64, 512
DEFAULT_BUDGET = 2048  # learner.forward_max_tokens's default

# Operator groups of the profile (aten names; the backward's names start with the same words).
OP_GROUPS = {"matmul": ("aten::mm", "aten::bmm", "aten::addmm", "aten::linear"),
             "attention": ("aten::_scaled_dot_product", "aten::_flash_attention"),
             "element-wise": ("aten::mul", "aten::add", "aten::silu", "aten::pow", "aten::neg", "aten::cat", "aten::rsqrt",
                              "aten::mean", "aten::div", "aten::sub", "aten::exp", "aten::sigmoid", "aten::copy_",
                              "aten::where", "aten::fill_", "aten::zero_", "aten::_log_softmax", "aten::gather",
                              "aten::embedding_dense_backward", "aten::index")}


def build_batch(root: Path, seed: int = 0):
    """bench_vs_trl's policy and prompts (built with its own function), random responses."""
    sys.path.insert(0, str(Path(__file__).parent))
    import json

    from bench_vs_trl import build_setting

    setting = build_setting(root, seed)
    ids = json.loads(Path(setting["prompt_ids"]).read_text())
    rng = random.Random(seed)
    prompts = rng.sample(ids, ROWS)
    responses = [[rng.randrange(5, VOCAB) for _ in range(RESPONSE if rng.random() > 0.12 else rng.randint(1, RESPONSE))]
                 for _ in prompts]
    return setting["sft"], pad_prompt_response(prompts, responses, pad_id=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 budgets, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per candidate (default 7; quick 3)")
    parser.add_argument("--profile", action="store_true", help="also profile the default budget's passes by operator")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)
    budgets = [0, 2048] if args.quick else [0, 1024, 1536, 2048, 3072]

    with tempfile.TemporaryDirectory(prefix="bench_forward_groups_") as tmp:
        model_dir, batch = build_batch(Path(tmp))
        model = load_causal_lm(model_dir)
    mask = batch.response_mask
    real = int(batch.attention_mask.sum())
    log(f"bench_forward_groups: {ROWS} rows, {real} real tokens, {batch.input_ids.numel()} padded "
        f"({1 - real / batch.input_ids.numel():.1%} padding in one forward)")
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0)) * mask

    def logprobs(budget: int) -> torch.Tensor:
        return by_length(lambda b: (response_logprobs(model, b),), batch, budget)[0]

    def forward(budget: int):
        with torch.no_grad():
            logprobs(budget)

    def update(budget: int):
        model.zero_grad(set_to_none=True)
        (logprobs(budget) * weights).sum().backward()

    with torch.no_grad():
        plain = logprobs(0)
        checks = {b: float((logprobs(b) - plain)[mask].abs().max()) for b in budgets}
    log(f"max |log-prob difference| to one padded forward: {checks}")
    result = {"benchmark": "bench_forward_groups", "quick": args.quick, "env": environment(),
              "setup": {"rows": ROWS, "response_len": RESPONSE, "real_tokens": real,
                        "padded_tokens": int(batch.input_ids.numel()), "budgets": budgets, "repeats": repeats},
              "max_abs_logprob_diff": {str(b): d for b, d in checks.items()}, "results": []}
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for what, fn in (("forward", forward), ("forward+backward", update)):
            samples = time_interleaved({str(b): (lambda b=b: fn(b)) for b in budgets}, repeats, warmup=1)
            base = summarize(samples["0"])["median_s"]
            for b in budgets:
                s = summarize(samples[str(b)])
                entry = {"threads": threads, "pass": what, "budget": b, **s, "speedup_vs_one_forward": base / s["median_s"]}
                result["results"].append(entry)
                rows.append({"threads": threads, "pass": what, "forward_max_tokens": b or "0 (one forward)",
                             "median ms": 1000 * s["median_s"], "x one forward": base / s["median_s"]})
    log(table(rows, list(rows[0]), "\nlog-probs of 64 trajectories, length-sorted groups vs one padded forward (medians)"))
    if args.profile:
        torch.set_num_threads(2)
        result["profile"] = [profile_pass(what, lambda fn=fn: fn(DEFAULT_BUDGET)) for what, fn in
                             (("forward", forward), ("forward+backward", update))]
        prof_rows = [{"pass": p["pass"], **{f"{g} %": 100 * p["share"][g] for g in p["share"]}, "ms per pass": p["ms_per_pass"]}
                     for p in result["profile"]]
        log(table(prof_rows, list(prof_rows[0]), f"\nself CPU time by operator group, budget {DEFAULT_BUDGET}, 2 threads"))
    emit(result, args.json_out)


def profile_pass(what: str, fn, warmups: int = 3, repeats: int = 3) -> dict:
    """Self CPU time of `fn` by operator group (OP_GROUPS; "other" for the rest), over `repeats`
    calls after `warmups`; the top operators by name too."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmups):
        fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            fn()
    ops = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(ops.values())
    group_of = lambda name: next((g for g, prefixes in OP_GROUPS.items() if name.startswith(prefixes)), "other")  # noqa: E731
    share = {g: 0.0 for g in (*OP_GROUPS, "other")}
    for name, t in ops.items():
        share[group_of(name)] += t / total
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:12]
    return {"pass": what, "ms_per_pass": total / 1000 / repeats, "share": share,
            "top_ops": [{"op": k, "share": t / total} for k, t in top]}


if __name__ == "__main__":
    main()
