"""shard_table and balance: sizes, contiguity, coverage, determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rlhf_dist.buffer import balance, balanced_bounds, shard_table
from tests.test_buffer_build import random_table


def test_shard_table_equal_contiguous_slices_that_cover_the_table():
    table = random_table(0, 24, chunks=3)
    for world in (1, 2, 3, 4, 6, 8, 12, 24):
        shards = [shard_table(table, r, world) for r in range(world)]
        assert {s.num_rows for s in shards} == {24 // world}
        rows = [row for s in shards for row in s.to_pylist()]
        assert rows == table.to_pylist()  # in order: rank r holds rows r*n .. (r+1)*n - 1


def test_shard_table_errors():
    table = random_table(1, 10)
    with pytest.raises(ValueError, match="10 rows do not split evenly across 3 ranks"):
        shard_table(table, 0, 3)
    with pytest.raises(ValueError, match="rank 2 not in"):
        shard_table(table, 2, 2)
    with pytest.raises(ValueError, match="rank 0 not in"):
        shard_table(table, 0, 0)


def test_shard_of_a_record_batch_is_a_view():
    batch = random_table(2, 8).to_batches()[0]
    shard = shard_table(batch, 1, 2)
    assert shard.to_pylist() == batch.to_pylist()[4:]
    assert shard.column("response_ids").values.buffers()[1].address == batch.column("response_ids").values.buffers()[1].address


def test_balance_sizes_differ_by_at_most_one_and_concatenate_back():
    for n, workers in itertools.product(range(0, 31), range(1, 8)):
        prompts = [f"p{i}" for i in range(n)]
        parts = balance(prompts, workers)
        sizes = [len(p) for p in parts]
        assert len(parts) == workers
        assert max(sizes) - min(sizes) <= 1
        assert sizes == sorted(sizes, reverse=True)  # the extra items go to the first workers
        assert sum(parts, []) == prompts
        assert balance(prompts, workers) == parts  # deterministic


def test_balance_works_on_arrays_and_tables():
    parts = balance(np.arange(10), 4)
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    table = random_table(3, 7)
    assert [t.num_rows for t in balance(table, 3)] == [3, 2, 2]
    assert balanced_bounds(5, 3) == [(0, 2), (2, 4), (4, 5)]
    with pytest.raises(ValueError, match="at least one part"):
        balance([1, 2], 0)
