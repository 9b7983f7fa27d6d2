"""Seeded orders: minibatch index permutations and per-rank shards (docs/ppo-details.md item 35),
the held-out split of a training set, and the prompt and ptx samplers of PPO (pure, seeded, with
a state that can be saved and restored)."""

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


def split_eval(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out a seeded `fraction` of items (at least one) for evaluation: (train, held out)."""
    order = list(range(len(items)))
    random.Random(f"{seed}/eval-split").shuffle(order)
    n_eval = max(1, int(round(fraction * len(items))))
    held = set(order[:n_eval])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


class PromptSampler:
    """Which prompts (indices into the prompt set) each PPO iteration samples.

    Seeded passes over the set: pass p is a permutation drawn from (seed, p) and lasts
    n // per_iteration iterations, each taking the next `per_iteration` prompts of it (the last
    n % per_iteration prompts of a pass are left out, a different set each pass); when
    per_iteration > n, a pass is one iteration that wraps around the permutation. A pure
    function of (seed, iteration): `state_dict` holds the next iteration only, so a restored
    sampler continues the same sequence.
    """

    def __init__(self, n_prompts: int, per_iteration: int, seed: int) -> None:
        if n_prompts < 1 or per_iteration < 1:
            raise ValueError(f"PromptSampler needs prompts and per_iteration >= 1, got {n_prompts}, {per_iteration}")
        self.n, self.per_iteration, self.seed = n_prompts, per_iteration, seed
        self.iteration = 0

    def indices(self, iteration: int) -> list[int]:
        """The prompt indices of `iteration` (len = per_iteration)."""
        per_pass = self.n // self.per_iteration or 1
        order = list(range(self.n))
        random.Random(f"{self.seed}/prompts/{iteration // per_pass}").shuffle(order)
        k = (iteration % per_pass) * self.per_iteration
        return [order[(k + i) % self.n] for i in range(self.per_iteration)]

    def next(self) -> list[int]:
        out = self.indices(self.iteration)
        self.iteration += 1
        return out

    def state_dict(self) -> dict:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])


class PtxSampler:
    """The ptx (pretraining-mix) sequences of each PPO minibatch: seeded passes over the corpus,
    `per_batch` at a time, a fresh permutation from (seed, pass) each time a pass runs out."""

    def __init__(self, n_items: int, per_batch: int, seed: int) -> None:
        if n_items < 1 or per_batch < 1:
            raise ValueError(f"PtxSampler needs items and per_batch >= 1, got {n_items}, {per_batch}")
        self.n, self.per_batch, self.seed = n_items, per_batch, seed
        self.order: list[int] = []
        self.epoch = 0

    def next(self) -> list[int]:
        """The next `per_batch` indices into the corpus."""
        out = []
        while len(out) < self.per_batch:
            if not self.order:
                self.order = list(range(self.n))
                random.Random(f"{self.seed}/ptx/{self.epoch}").shuffle(self.order)
                self.epoch += 1
            out.append(self.order.pop())
        return out

    def state_dict(self) -> dict:
        return {"order": list(self.order), "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.order, self.epoch = list(state["order"]), int(state["epoch"])
