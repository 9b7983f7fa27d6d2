"""The broadcast transport's process group and wire format, shared by both of its ends.

The sender (`BroadcastWeightSync` in transports.py, learner rank 0) and the receivers (the vLLM
workers, receiver.py) form a process group of their own: a TCPStore hosted by rank 0 plus a gloo
or NCCL backend object, without torch.distributed's global state (the learner's DeepSpeed group
and vLLM's own groups stay untouched). A bucket travels as one flat uint8 buffer; its
[name, dtype, shape, offset, nbytes] metadata goes separately (through Ray).

backend="gloo" (CPU) is tested (tests/test_engines_weight_sync.py); backend="nccl" is UNTESTED (no GPU here).
torch.distributed is imported inside the functions; this module imports torch only.
"""

from __future__ import annotations

import torch


def make_group(host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float):
    """A process group of its own (no torch.distributed global state): a TCPStore plus a backend
    object. Rank 0 (the learner) hosts the store. Returns (group, store)."""
    from datetime import timedelta

    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, is_master=(rank == 0), timeout=timeout)
    prefixed = dist.PrefixStore("rlhf_weight_sync", store)
    if backend == "gloo":
        return dist.ProcessGroupGloo(prefixed, rank, world_size, timeout), store
    if backend == "nccl":  # UNTESTED: needs a GPU; the caller must have set its CUDA device
        return dist.ProcessGroupNCCL(prefixed, rank, world_size), store
    raise ValueError(f"backend {backend!r}: expected 'gloo' or 'nccl'")


def broadcast(group, tensor: torch.Tensor, root: int = 0) -> None:
    """Broadcast `tensor` from `root` in `group` (in place on the receivers); waits for it."""
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank = root
    group.broadcast([tensor], opts).wait()


def pack_bucket(bucket: list[tuple[str, torch.Tensor]]) -> tuple[list, torch.Tensor]:
    """One flat uint8 buffer and [name, dtype, shape, offset, nbytes] per tensor."""
    meta, parts, offset = [], [], 0
    for name, t in bucket:
        flat = t.contiguous().reshape(-1).view(torch.uint8)
        meta.append([name, str(t.dtype).removeprefix("torch."), list(t.shape), offset, flat.numel()])
        parts.append(flat)
        offset += flat.numel()
    return meta, torch.cat(parts)


def unpack_bucket(meta: list, buffer: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tensors of `pack_bucket`'s buffer: views into `buffer`, no copy."""
    return {
        name: buffer[off: off + n].view(getattr(torch, dtype)).reshape(shape)
        for name, dtype, shape, off, n in meta
    }


def free_port() -> int:
    """A TCP port that was free a moment ago (for rank 0's TCPStore)."""
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]
