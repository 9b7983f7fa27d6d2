"""Benchmark of the Arrow trajectory buffer's conversions (rlhf_dist.buffer), on CPU.

- to_padded: a trajectory Table of B rows (prompts ~64 tokens, responses ~512 tokens, in 4
  RecordBatches as 4 rollout workers would send them, with rollout_logprobs, ref_logprobs and a
  score) -> padded tensors, vs `row_loop`: the naive path, `to_pylist()` of each column, then
  `pad_prompt_response` (the per-row reference in rlhf_dist.models.batching) and a per-row loop
  writing each per-token float column into a zero (B, T) tensor. Also `tokens_only`
  (`to_padded(..., columns=[])`), to show what the float columns cost.
- per_token_column: a (B, T) float tensor + lengths -> list<float32> column (what a learner
  does to return values/advantages), vs `row_loop`: `[padded[i, :n].tolist() ...]` -> pa.array.

Every candidate's output is checked against the library's before timing. Repeats are interleaved
(see _bench_utils.time_interleaved), medians quoted. Torch runs with one thread by default
(`--threads`), as the other scripts (see benchmarks/README.md); the buffer's own work is numpy
and Arrow, single-threaded either way.

Output: one JSON line on stdout (the last line), tables on stderr; `--json-out FILE` also writes it.
    python benchmarks/bench_buffer.py            # B = 4096 rows, 7 repeats
    python benchmarks/bench_buffer.py --quick    # B = 512 rows, 3 repeats (a few seconds)
"""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from _bench_utils import emit, environment, log, summarize, table, time_interleaved
from rlhf_dist.buffer import add_columns, concat, per_token_column, to_padded
from rlhf_dist.buffer.schema import PER_TOKEN, TOKENS, ROLLOUT_COLUMNS, schema_for
from rlhf_dist.models.batching import pad_prompt_response

PAD = 0
WORKERS = 4
FLOAT_COLUMNS = ("rollout_logprobs", "ref_logprobs")


def ragged(lengths: np.ndarray, values: np.ndarray, type_: pa.DataType) -> pa.ListArray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[: offsets[-1]], type=type_.value_type))


def make_table(B: int, seed: int = 0) -> pa.Table:
    """B rows in WORKERS batches; prompt lengths U[16, 112], response lengths U[256, 768]."""
    rng = np.random.default_rng(seed)
    batches = []
    for worker, rows in enumerate(np.array_split(np.arange(B), WORKERS)):
        n = len(rows)
        p_len, r_len = rng.integers(16, 113, n), rng.integers(256, 769, n)
        ints = lambda k: rng.integers(3, 32000, k, dtype=np.int32)  # noqa: E731
        floats = lambda k: -rng.exponential(size=k).astype(np.float32)  # noqa: E731
        arrays = [
            pa.array(rows.astype(np.int64)),
            pa.array(np.zeros(n, np.int32)),
            pa.array(np.ones(n, np.int64)),
            pa.array(np.full(n, worker, np.int32)),
            ragged(p_len, ints(p_len.sum()), TOKENS),
            ragged(r_len, ints(r_len.sum()), TOKENS),
            ragged(r_len, floats(r_len.sum()), PER_TOKEN),
            pa.array(rng.random(n) < 0.8),
        ]
        batch = pa.RecordBatch.from_arrays(arrays, schema=schema_for(ROLLOUT_COLUMNS))
        batches.append(add_columns(batch, score=rng.normal(size=n), ref_logprobs=ragged(r_len, floats(r_len.sum()), PER_TOKEN)))
    return concat(batches)


def row_loop(t: pa.Table) -> dict[str, torch.Tensor]:
    """The naive conversion: Python lists, the per-row reference padder, per-row float writes."""
    batch = pad_prompt_response(t.column("prompt_ids").to_pylist(), t.column("response_ids").to_pylist(), PAD)
    out = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "position_ids": batch.position_ids}
    B, T = batch.response_mask.shape
    for name in FLOAT_COLUMNS:
        padded = torch.zeros(B, T)
        for i, row in enumerate(t.column(name).to_pylist()):
            padded[i, : len(row)] = torch.tensor(row)
        out[name] = padded
    out["score"] = torch.tensor(t.column("score").to_pylist())
    return out


def library(t: pa.Table) -> dict[str, torch.Tensor]:
    res = to_padded(t, PAD, columns=list(FLOAT_COLUMNS) + ["score"])
    return {"input_ids": res.input_ids, "attention_mask": res.attention_mask, "position_ids": res.position_ids, **res.columns}


def check_same(a: dict, b: dict) -> float:
    """Max abs difference over all tensors (shapes and keys must match)."""
    assert a.keys() == b.keys(), (a.keys(), b.keys())
    worst = 0.0
    for k in a:
        assert a[k].shape == b[k].shape, k
        worst = max(worst, (a[k].double() - b[k].double()).abs().max().item())
    return worst


def bench_to_padded(t: pa.Table, repeats: int) -> dict:
    diff = check_same(library(t), row_loop(t))
    assert diff == 0.0, diff
    samples = time_interleaved(
        {
            "to_padded": lambda: library(t),
            "tokens_only": lambda: to_padded(t, PAD, columns=[]),
            "row_loop": lambda: row_loop(t),
        },
        repeats,
    )
    res = {name: summarize(s) for name, s in samples.items()}
    res["max_abs_diff"] = diff
    res["row_loop_over_to_padded"] = res["row_loop"]["median_s"] / res["to_padded"]["median_s"]
    return res


def bench_per_token_column(t: pa.Table, repeats: int) -> dict:
    values = to_padded(t, PAD, columns=["ref_logprobs"])
    padded, lengths = values.columns["ref_logprobs"], values.response_lengths

    def loop():
        return pa.array([padded[i, :n].tolist() for i, n in enumerate(lengths.tolist())], type=PER_TOKEN)

    lib = per_token_column(padded, lengths)
    assert lib.equals(loop()) and lib.equals(t.column("ref_logprobs").combine_chunks())
    samples = time_interleaved({"per_token_column": lambda: per_token_column(padded, lengths), "row_loop": loop}, repeats)
    res = {name: summarize(s) for name, s in samples.items()}
    res["row_loop_over_per_token_column"] = res["row_loop"]["median_s"] / res["per_token_column"]["median_s"]
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="B = 512 rows, 3 repeats (smoke run)")
    parser.add_argument("--rows", type=int, default=None, help="rows B (default 4096, quick 512)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per candidate (default 7, quick 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads; 0 keeps torch's default (default 1)")
    parser.add_argument("--json-out", default=None, help="also write the JSON result to this file")
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    B = args.rows or (512 if args.quick else 4096)
    repeats = args.repeats or (3 if args.quick else 7)
    t = make_table(B)
    lengths = pc.list_value_length
    shape = {
        "rows": B,
        "chunks": t.column("response_ids").num_chunks,
        "prompt_tokens": int(pc.sum(lengths(t.column("prompt_ids"))).as_py()),
        "response_tokens": int(pc.sum(lengths(t.column("response_ids"))).as_py()),
        "P": int(pc.max(lengths(t.column("prompt_ids"))).as_py()),
        "T": int(pc.max(lengths(t.column("response_ids"))).as_py()),
        "table_mb": t.nbytes / 2**20,
    }
    result = {"benchmark": "bench_buffer", "quick": args.quick, "repeats": repeats, "env": environment(), "shape": shape}
    log(f"bench_buffer: {shape}, torch threads {torch.get_num_threads()}, repeats {repeats}")
    log("[1/2] to_padded")
    result["to_padded"] = bench_to_padded(t, repeats)
    log("[2/2] per_token_column")
    result["per_token_column"] = bench_per_token_column(t, repeats)

    tp, ptc = result["to_padded"], result["per_token_column"]
    ms = lambda r, key="median_s": r[key] * 1e3  # noqa: E731
    rows = [
        {"what": "table -> padded (tokens + 2 float cols + score)", "library ms": ms(tp["to_padded"]),
         "library min ms": ms(tp["to_padded"], "min_s"), "row loop ms": ms(tp["row_loop"]),
         "loop / library": tp["row_loop_over_to_padded"]},
        {"what": "table -> padded, tokens only", "library ms": ms(tp["tokens_only"]),
         "library min ms": ms(tp["tokens_only"], "min_s"), "row loop ms": "", "loop / library": ""},
        {"what": "(B, T) -> list<float32> column", "library ms": ms(ptc["per_token_column"]),
         "library min ms": ms(ptc["per_token_column"], "min_s"), "row loop ms": ms(ptc["row_loop"]),
         "loop / library": ptc["row_loop_over_per_token_column"]},
    ]
    columns = ["what", "library ms", "library min ms", "row loop ms", "loop / library"]
    log(table(rows, columns, title=f"\nmedian of {repeats}, B = {B}, P = {shape['P']}, T = {shape['T']}"))
    emit(result, args.json_out)


if __name__ == "__main__":
    main()
