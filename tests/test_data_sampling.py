"""Seeded minibatch permutations (every index once per epoch), per-rank shards, the PPO prompt and
ptx samplers (against naive re-implementations of their rules, and save/restore), and split_eval."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch

from rlhf_dist.data import DataError, PromptSampler, PtxSampler, minibatches, shard, split_eval


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


# ----------------------------------------------------------------------------- PPO prompt / ptx samplers, split_eval
#
# The references below re-implement the rules from their docstrings (and from the historical driver
# code they were moved out of, rlhf_dist/recipes/ppo.py before the structure change) as plain loops
# over passes: the seeded string `random.Random(f"{seed}/prompts/{pass}")` etc. must be kept exactly,
# since it decides which prompts the demo trains on.

def naive_prompt_iterations(n: int, per_iteration: int, seed: int):
    """Yield each iteration's prompt indices: pass p is random.Random(f"{seed}/prompts/{p}")'s shuffle
    of range(n); a pass lasts max(1, n // per_iteration) iterations, each taking the next
    per_iteration prompts of the shuffled order, going round the order again when per_iteration > n."""
    p = 0
    while True:
        order = list(range(n))
        random.Random(f"{seed}/prompts/{p}").shuffle(order)
        iterations_in_pass = max(1, n // per_iteration)
        pos = 0
        for _ in range(iterations_in_pass):
            batch = []
            for _ in range(per_iteration):
                batch.append(order[pos % n])
                pos += 1
            yield batch
        p += 1


def naive_ptx_stream(n: int, seed: int):
    """Yield ptx item indices one at a time: epoch e shuffles range(n) with
    random.Random(f"{seed}/ptx/{e}") and hands the items out from the END of the list (list.pop())."""
    e = 0
    while True:
        order = list(range(n))
        random.Random(f"{seed}/ptx/{e}").shuffle(order)
        for j in range(n - 1, -1, -1):
            yield order[j]
        e += 1


def naive_ptx_batches(n: int, per_batch: int, seed: int, count: int) -> list[list[int]]:
    stream = naive_ptx_stream(n, seed)
    return [[next(stream) for _ in range(per_batch)] for _ in range(count)]


@pytest.mark.parametrize("n,per_iteration,seed", [(12, 4, 0), (10, 4, 3), (7, 7, 1), (3, 5, 2), (13, 1, 5), (20, 6, 11)])
def test_prompt_sampler_matches_naive_rule(n, per_iteration, seed):
    s = PromptSampler(n, per_iteration, seed)
    expected = list(itertools.islice(naive_prompt_iterations(n, per_iteration, seed), 25))
    assert [s.indices(i) for i in range(25)] == expected
    assert [s.next() for _ in range(25)] == expected  # next() walks indices(0), indices(1), ...
    assert s.state_dict() == {"iteration": 25}


def test_prompt_sampler_passes():
    # n a multiple of per_iteration: every prompt exactly once per pass, a fresh order each pass.
    s = PromptSampler(12, 4, seed=7)
    passes = [[i for it in range(3 * p, 3 * p + 3) for i in s.indices(it)] for p in range(4)]
    for flat in passes:
        assert sorted(flat) == list(range(12))
    assert len({tuple(f) for f in passes}) == 4
    # not a multiple: a pass is n // per_iteration iterations of distinct prompts (the n % per_iteration
    # last ones of the shuffled order wait for a later pass)
    s = PromptSampler(10, 4, seed=7)
    for p in range(3):
        flat = s.indices(2 * p) + s.indices(2 * p + 1)
        assert len(flat) == 8 and len(set(flat)) == 8 and set(flat) <= set(range(10))
    # per_iteration > n: the one-iteration pass goes round the shuffled order
    first = PromptSampler(3, 7, seed=1).indices(0)
    assert sorted(first[:3]) == [0, 1, 2] and first[3:] == first[:3] + first[:1]
    with pytest.raises(ValueError):
        PromptSampler(0, 4, 0)
    with pytest.raises(ValueError):
        PromptSampler(4, 0, 0)


@pytest.mark.parametrize("k", [0, 1, 4, 7])
def test_prompt_sampler_restored_state_continues(k):
    uninterrupted = PromptSampler(10, 3, seed=4)
    for _ in range(k):
        uninterrupted.next()
    state = json.loads(json.dumps(uninterrupted.state_dict()))
    restored = PromptSampler(10, 3, seed=4)
    restored.load_state_dict(state)
    assert [restored.next() for _ in range(9)] == [uninterrupted.next() for _ in range(9)]
    # and the continuation is the naive sequence from iteration k on
    assert [PromptSampler(10, 3, seed=4).indices(i) for i in range(k, k + 9)] == \
        list(itertools.islice(naive_prompt_iterations(10, 3, 4), k, k + 9))


def test_prompt_sampler_seeds_differ():
    a = [PromptSampler(16, 4, seed=0).indices(i) for i in range(8)]
    b = [PromptSampler(16, 4, seed=1).indices(i) for i in range(8)]
    assert a != b
    assert a == [PromptSampler(16, 4, seed=0).indices(i) for i in range(8)]


@pytest.mark.parametrize("n,per_batch,seed", [(12, 4, 0), (10, 3, 1), (5, 5, 2), (4, 9, 3), (7, 1, 4)])
def test_ptx_sampler_matches_naive_rule(n, per_batch, seed):
    s = PtxSampler(n, per_batch, seed)
    assert [s.next() for _ in range(20)] == naive_ptx_batches(n, per_batch, seed, 20)


def test_ptx_sampler_every_item_once_per_pass():
    n, per_batch = 12, 4
    s = PtxSampler(n, per_batch, seed=9)
    batches = [s.next() for _ in range(n * 3 // per_batch)]
    flat = [i for b in batches for i in b]
    assert all(flat.count(i) == 3 for i in range(n)) and len(flat) == 3 * n
    passes = [flat[p * n : (p + 1) * n] for p in range(3)]
    for p in passes:
        assert sorted(p) == list(range(n))
    assert len({tuple(p) for p in passes}) == 3  # a fresh order each pass


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5])  # 10 items, 4 per batch: k = 1, 3, 5 stop mid-pass
def test_ptx_sampler_restored_state_continues(k):
    uninterrupted = PtxSampler(10, 4, seed=2)
    for _ in range(k):
        uninterrupted.next()
    state = json.loads(json.dumps(uninterrupted.state_dict()))
    restored = PtxSampler(10, 4, seed=2)
    restored.load_state_dict(state)
    expected = naive_ptx_batches(10, 4, 2, k + 8)[k:]
    assert [restored.next() for _ in range(8)] == expected
    assert [uninterrupted.next() for _ in range(8)] == expected


def test_ptx_sampler_state_mid_pass_and_seeds():
    s = PtxSampler(10, 4, seed=2)
    s.next()
    assert s.state_dict()["epoch"] == 1 and len(s.state_dict()["order"]) == 6  # the restore test covers a partial pass
    a = [PtxSampler(10, 4, seed=0).next() for _ in range(3)]
    b = [PtxSampler(10, 4, seed=1).next() for _ in range(3)]
    assert a != b


@pytest.mark.parametrize("n,fraction,n_held", [(10, 0.3, 3), (20, 0.1, 2), (5, 0.01, 1), (7, 0.0, 1), (40, 0.25, 10)])
def test_split_eval(n, fraction, n_held):
    items = [f"item{i}" for i in range(n)]
    train, held = split_eval(items, fraction, seed=3)
    assert len(held) == n_held and len(train) == n - n_held
    assert set(train).isdisjoint(held) and sorted(train + held) == sorted(items)
    # both keep the items' original order
    assert train == [x for x in items if x in set(train)] and held == [x for x in items if x in set(held)]
    # deterministic in the seed; the historical rule: the first n_held of random.Random(f"{seed}/eval-split")'s shuffle
    assert split_eval(items, fraction, seed=3) == (train, held)
    order = list(range(n))
    random.Random("3/eval-split").shuffle(order)
    assert held == [items[i] for i in sorted(order[:n_held])]


def test_split_eval_seeds_differ():
    items = list(range(50))
    assert split_eval(items, 0.2, seed=0)[1] != split_eval(items, 0.2, seed=1)[1]
