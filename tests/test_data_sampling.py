"""Seeded minibatch permutations (every index once per epoch) and per-rank shards."""

from __future__ import annotations

import pytest
import torch

from rlhf_dist.data import DataError, minibatches, shard


def test_every_index_once_per_epoch_and_a_fresh_order_each_epoch():
    orders = []
    for epoch in range(3):
        mbs = minibatches(12, 4, seed=7, epoch=epoch)
        assert [len(mb) for mb in mbs] == [4, 4, 4]
        flat = [i for mb in mbs for i in mb]
        assert sorted(flat) == list(range(12))
        orders.append(flat)
    assert orders[0] != orders[1] != orders[2] and orders[0] != orders[2]
    assert minibatches(12, 4, seed=7, epoch=1) == minibatches(12, 4, seed=7, epoch=1)  # same on every rank
    assert minibatches(12, 4, seed=8, epoch=1) != minibatches(12, 4, seed=7, epoch=1)


def test_drop_last():
    mbs = minibatches(10, 4, seed=0, epoch=0)
    assert [len(mb) for mb in mbs] == [4, 4]
    flat = [i for mb in mbs for i in mb]
    assert len(set(flat)) == 8 and set(flat) <= set(range(10))
    mbs = minibatches(10, 4, seed=0, epoch=0, drop_last=False)
    assert [len(mb) for mb in mbs] == [4, 4, 2]
    assert sorted(i for mb in mbs for i in mb) == list(range(10))
    assert minibatches(3, 4, seed=0, epoch=0) == []
    with pytest.raises(ValueError):
        minibatches(3, 0, seed=0, epoch=0)


def test_shard():
    items = list(range(12))
    assert [shard(items, r, 3) for r in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert torch.equal(shard(torch.arange(6).view(3, 2), 1, 3), torch.tensor([[2, 3]]))
    with pytest.raises(DataError, match="global batch of 10 is not divisible by world_size 4"):
        shard(list(range(10)), 0, 4)
    with pytest.raises(ValueError, match="rank 3 is outside"):
        shard(items, 3, 3)
