"""Minibatch index permutations and per-rank shards (ppo-details item 35)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from rlhf_dist.data.readers import DataError

T = TypeVar("T")


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """A permutation of range(n) drawn from (seed, epoch) only: the same on every rank and in every
    run, a fresh one each epoch. Uses a string-seeded `random.Random` (SHA-512 of the string; not
    Python's salted hash), so it is stable across processes and Python versions."""
    order = list(range(n))
    random.Random(f"rlhf_dist.minibatches:{seed}:{epoch}").shuffle(order)
    return order


def minibatches(n: int, batch_size: int, seed: int, epoch: int, drop_last: bool = True) -> list[list[int]]:
    """Split a fresh seeded permutation of range(n) into minibatches of `batch_size` indices.

    Every index appears exactly once per epoch (no sampling with replacement). With drop_last the
    final n % batch_size indices of the permutation are left out this epoch (a different set each
    epoch), so every minibatch has the same size; without it the last minibatch is smaller.
    Returns an empty list when drop_last and n < batch_size.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    order = epoch_permutation(n, seed, epoch)
    stop = n - n % batch_size if drop_last else n
    return [order[i : i + batch_size] for i in range(0, stop, batch_size)]


def shard(items: Sequence[T], rank: int, world_size: int) -> Sequence[T]:
    """Rank `rank`'s contiguous share of a global batch: items[rank * m : (rank + 1) * m], m = len / world_size.

    Works on lists and tensors (first dimension). Raises DataError when the global batch is not
    divisible by world_size (unequal shards would desynchronise the ranks' collective calls and
    bias a per-rank mean), and ValueError for a rank outside [0, world_size).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, {world_size})")
    n = len(items)
    if n % world_size:
        raise DataError(
            f"a global batch of {n} is not divisible by world_size {world_size}: "
            f"choose a batch size that is a multiple of the number of ranks"
        )
    m = n // world_size
    return items[rank * m : (rank + 1) * m]
