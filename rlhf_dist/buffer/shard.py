"""Splitting work: trajectory tables across learner ranks, prompts across rollout workers."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa


def shard_table(data: pa.Table | pa.RecordBatch, rank: int, world_size: int) -> pa.Table | pa.RecordBatch:
    """Rank `rank`'s contiguous slice of B / world_size rows (zero-copy view).

    An indivisible B is an error, as in the learner group: every rank must see the same number
    of rows, or the global loss normaliser and the collective calls go out of step.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard_table: rank {rank} not in [0, {world_size})")
    if data.num_rows % world_size:
        raise ValueError(f"shard_table: {data.num_rows} rows do not split evenly across {world_size} ranks")
    n = data.num_rows // world_size
    return data.slice(rank * n, n)


def balanced_bounds(n: int, num_parts: int) -> list[tuple[int, int]]:
    """[start, stop) of `num_parts` contiguous parts of range(n); sizes differ by at most 1,
    the first n % num_parts parts get the extra item."""
    if num_parts < 1:
        raise ValueError(f"balance: need at least one part, got {num_parts}")
    base, extra = divmod(n, num_parts)
    bounds, start = [], 0
    for part in range(num_parts):
        stop = start + base + (part < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def balance(prompts: Sequence, num_workers: int) -> list[Sequence]:
    """Split `prompts` into `num_workers` contiguous parts whose sizes differ by at most 1.

    Deterministic and order-preserving (concatenating the parts gives `prompts` back). Works on
    anything sliceable: lists, numpy arrays, Arrow tables. Parts may be empty when there are
    fewer prompts than workers.
    """
    return [prompts[start:stop] for start, stop in balanced_bounds(len(prompts), num_workers)]
