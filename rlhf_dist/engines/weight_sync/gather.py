"""Learner side: the (HF name, full tensor) stream a push consumes.

The gathering itself lives with the DeepSpeed engine (`TrainEngine.named_full_tensors` ->
`iter_full_tensors` in rlhf_dist/engines/deepspeed_engine.py): under ZeRO-3 each parameter is
gathered with `deepspeed.zero.GatheredParameters`, copied to the CPU and yielded before the next
one, so rank 0 never holds a second full model; the buckets (buckets.py) stream it on. The gathers
are collective, which is why every rank must drain the iterator below.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def gathered_named_tensors(train_engine) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor on CPU) of a `TrainEngine`'s model, one parameter at a time, on rank 0.

    EVERY rank must iterate it to the end, in step (ZeRO-3 gathers are collective); only rank 0
    gets tensors:

        it = gathered_named_tensors(te)
        if rank == 0: sync.push(it, version)
        else: for _ in it: pass
    """
    return train_engine.named_full_tensors()
