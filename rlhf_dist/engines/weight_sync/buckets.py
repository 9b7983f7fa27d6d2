"""Buckets: cutting a stream of (HF name, tensor) pairs into pushes of about `bucket_bytes`.

Every transport sends the same buckets (`bucket_tensors`), in the order the tensors arrive. A
bucket never splits a group of HF tensors that vLLM fuses into one parameter (q/k/v_proj ->
qkv_proj, gate/up_proj -> gate_up_proj; `fused_group_key`): vLLM's `reload_weights` builds a
fused layer that gets only part of its tensors from uninitialised memory (receiver.py has the
details). The object-store and local transports send a bucket as one safetensors blob
(`bucketize`); the broadcast transport packs it into one flat buffer (broadcast_group.py).

Also here: the sender-side helpers every transport shares (cast to the engine's dtype and device,
mark the final bucket, after which the engine stamps the pushed version).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch

DEFAULT_BUCKET_BYTES = 256 * 2**20

# vLLM's Llama `packed_modules_mapping`: HF tensors that vLLM fuses into one parameter.
LLAMA_PACKED_MODULES = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}

NamedTensors = Iterable[tuple[str, torch.Tensor]]


def member_to_packed(packed: dict[str, list[str]]) -> dict[str, str]:
    """{'q_proj': 'qkv_proj', ...} from a `packed_modules_mapping`."""
    return {member: fused for fused, members in packed.items() for member in members}


def fused_group_key(name: str, packed: dict[str, list[str]] = LLAMA_PACKED_MODULES) -> str:
    """The vLLM parameter an HF tensor loads into: 'x.q_proj.weight' -> 'x.qkv_proj.weight'; others unchanged."""
    parts = name.split(".")
    to_packed = member_to_packed(packed)
    for i, part in enumerate(parts):
        if part in to_packed:
            return ".".join(parts[:i] + [to_packed[part]] + parts[i + 1:])
    return name


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def bucket_tensors(
    named_tensors: NamedTensors,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    group_key: Callable[[str], str] | None = fused_group_key,
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Lists of (name, tensor) with at most `bucket_bytes` tensor bytes each, streaming.

    Tensors with the same `group_key` that arrive next to each other (HF order: q, k, v; gate,
    up) stay in one bucket, so no vLLM fused parameter is split; a group (or tensor) larger than
    the limit goes alone. `group_key=None`: every tensor is its own group. At most one bucket
    plus one group is held at a time, so a generator of gathered parameters is never
    materialised whole.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    group: list[tuple[str, torch.Tensor]] = []
    group_id: str | None = None
    seen: set[str] = set()

    def add_group():
        """Put the pending group into the bucket; return the bucket it closed, if any."""
        nonlocal bucket, size, group
        gsize = sum(_nbytes(t) for _, t in group)
        closed = None
        if bucket and size + gsize > bucket_bytes:
            closed, bucket, size = bucket, [], 0
        bucket += group
        size += gsize
        group = []
        return closed

    for name, tensor in named_tensors:
        if name in seen:
            raise ValueError(f"tensor {name!r} appears twice")
        seen.add(name)
        key = group_key(name) if group_key is not None else name
        if group and key != group_id:
            closed = add_group()
            if closed:
                yield closed
        group_id = key
        group.append((name, tensor.detach()))
    if group:
        closed = add_group()
        if closed:
            yield closed
    if bucket:
        yield bucket


def bucketize(
    named_tensors: NamedTensors,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    group_key: Callable[[str], str] | None = fused_group_key,
) -> Iterator[bytes]:
    """`bucket_tensors` as safetensors blobs (`safetensors.torch.save`; CPU tensors, sent as they are)."""
    from safetensors.torch import save

    for bucket in bucket_tensors(named_tensors, bucket_bytes, group_key):
        yield save({n: t.contiguous() for n, t in bucket})


def with_final(items: Iterable) -> Iterator[tuple[object, bool]]:
    """(item, is_last) pairs, one item of look-ahead; an error if there are none.
    The receiver stamps the pushed version when it loads the bucket marked last."""
    pending, have = None, False
    for item in items:
        if have:
            yield pending, False
        pending, have = item, True
    if not have:
        raise ValueError("no tensors to push")
    yield pending, True


def cast_tensors(named_tensors: NamedTensors, dtype: torch.dtype | None, device: str | torch.device = "cpu"):
    """(name, tensor) on `device`, floating-point tensors in `dtype` (None: as they are)."""
    for name, t in named_tensors:
        t = t.detach()
        if t.device != torch.device(device):
            t = t.to(device)
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        yield name, t
