"""When each rollout batch is sampled (rlhf_dist/actors/ppo_actors.py: `start_batches`,
`next_batch`, `push_weights`), checked against the schedule written out by hand: synchronously,
batch it + 1 starts right after the workers receive weights version it + 1; with overlap, it
starts when the driver takes batch it, with the weights of version it. Actors are stand-ins that
record the calls (no Ray)."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

import pytest

from rlhf_dist.actors.ppo_actors import PPOActors
from rlhf_dist.data import PromptSampler


def _actors(overlap: bool, iterations: int, events: list) -> PPOActors:
    actors = PPOActors.__new__(PPOActors)  # the scheduling alone: no roles started
    actors.cfg = SimpleNamespace(iterations=iterations, rollout=SimpleNamespace(
        overlap=overlap, weight_transport="object_store", bucket_mb=1, lora_sync="merged"))
    actors._prompts, actors._pending, actors.version = None, None, 0
    actors.rollout = SimpleNamespace(workers=["w0"])
    actors.learner = SimpleNamespace(push_weights=lambda workers, version, *a: events.append(("push", version)) or {})

    def rollout_batch(prompt_indices, iteration):
        events.append(("sample", iteration, actors.version))  # (batch, weight version the workers hold)
        done = Future()
        done.set_result((f"batch{iteration}", {}))
        return done

    actors.rollout_batch = rollout_batch
    return actors


def _drive(actors: PPOActors, first: int, iterations: int, events: list) -> None:
    """The driver's calls, as train_ppo makes them."""
    if first:
        actors.push_weights(version=first)
    actors.start_batches(PromptSampler(100, 4, seed=0), first)
    for it in range(first, iterations):
        assert actors.next_batch(it)[0] == f"batch{it}"
        events.append(("train", it))
        actors.push_weights(version=it + 1)


@pytest.mark.parametrize("overlap, first, expected", [
    (False, 0, [("sample", 0, 0), ("train", 0), ("push", 1), ("sample", 1, 1), ("train", 1), ("push", 2),
                ("sample", 2, 2), ("train", 2), ("push", 3)]),
    (True, 0, [("sample", 0, 0), ("sample", 1, 0), ("train", 0), ("push", 1), ("sample", 2, 1), ("train", 1),
               ("push", 2), ("train", 2), ("push", 3)]),
    (False, 2, [("push", 2), ("sample", 2, 2), ("train", 2), ("push", 3)]),  # resumed: the checkpoint's weights first
    (True, 2, [("push", 2), ("sample", 2, 2), ("train", 2), ("push", 3)]),
])
def test_each_batch_starts_as_the_schedule_says(overlap, first, expected):
    events: list = []
    _drive(_actors(overlap, 3, events), first, 3, events)
    assert events == expected


def test_overlap_batches_are_one_version_old_and_synchronous_ones_are_not():
    for overlap in (False, True):
        events: list = []
        _drive(_actors(overlap, 5, events), 0, 5, events)
        lags = [batch - held for _, batch, held in (e for e in events if e[0] == "sample")]
        assert lags == ([0, 1, 1, 1, 1] if overlap else [0] * 5)
