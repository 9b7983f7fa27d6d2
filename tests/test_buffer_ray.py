"""Trajectory tables through Ray's object store: equal on the way back, and not copied on get.

One local Ray instance (about 4-7 s to start) for the module.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from rlhf_dist.buffer import add_columns, concat, rollouts_to_batch, to_padded, validate
from tests.test_buffer_build import random_rollouts


def big_table() -> pa.Table:
    """About 1 MB of tokens in 3 chunks, one of them a slice: well above Ray's 100 KB inline limit,
    so the object lives in the shared-memory store."""
    batches = []
    for worker in range(3):
        rollouts = random_rollouts(worker, 300, max_prompt=64, max_response=256)
        batches.append(rollouts_to_batch(rollouts, list(range(300)), policy_version=1, worker_id=worker, sample_index=[0] * 300))
    batches[1] = batches[1].slice(10, 200)
    return concat(batches)


@ray.remote
def score_remotely(table: pa.Table) -> pa.Table:
    """What the reward actor does: receive the rollouts, append a column, send the table back."""
    lengths = pc.list_value_length(table.column("response_ids")).to_numpy()
    return add_columns(table, score=lengths.astype(np.float32))


def test_table_through_the_object_store(ray_local):
    table = big_table()
    assert table.nbytes > 500_000
    ref = ray.put(table)
    first, second = ray.get(ref), ray.get(ref)
    assert first.equals(table) and first.schema.equals(table.schema, check_metadata=True)
    validate(first)
    # Zero-copy: both gets are views of the same shared-memory buffer (a copying deserialiser
    # would give each get its own allocation).
    def address(t):
        return t.column("response_ids").chunk(0).values.buffers()[1].address

    assert address(first) == address(second) != address(table)

    scored = ray.get(score_remotely.remote(ref))
    assert scored.drop_columns(["score"]).equals(table)
    assert scored.column("score").to_pylist() == [float(len(r)) for r in table.column("response_ids").to_pylist()]
    a, b = to_padded(scored, pad_id=0), to_padded(table, pad_id=0)
    assert (a.input_ids == b.input_ids).all()
