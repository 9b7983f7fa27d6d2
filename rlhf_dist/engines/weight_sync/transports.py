"""The transports, learner side: how each bucket reaches the rollout engines.

Three transports, one receiver path (`WeightSyncExtension`, receiver.py):

- local engines (`VLLMRolloutEngine` or `vllm.LLM` in this process): `push_weights`; each bucket
  is one safetensors blob sent with `collective_rpc`.
- engines inside Ray actors, CPU (the default there): `ObjectStoreWeightSync` / `push_weights_ray`;
  each blob is `ray.put` once and every actor loads it (`WeightSyncActorMixin.load_weight_bucket`;
  LoRA adapters, rollout.lora_sync=adapter: `load_adapter_bucket`, adapters.py, on any device).
- engines inside Ray actors, GPU: `BroadcastWeightSync(backend="nccl")`: learner rank 0 and the
  engines' workers form their own process group and each bucket is broadcast as one flat
  buffer. Tested on CPU with backend="gloo" only: the "nccl" backend is UNTESTED (no GPU here).
`make_weight_sync(actors)` picks: nccl broadcast when CUDA is available, else the object store.
All of them, after the final bucket: reset the engine's prefix cache and read back the version
(engine_calls.py).

Generation must not run while a push is in progress (between buckets the engine holds a mix of
old and new layers); the pushes here are synchronous, so one driver thread guarantees it.
Ray is imported inside the functions; this module imports torch only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rlhf_dist.engines.weight_sync.adapters import AdapterSpec
from rlhf_dist.engines.weight_sync.broadcast_group import broadcast, free_port, make_group, pack_bucket
from rlhf_dist.engines.weight_sync.buckets import (
    DEFAULT_BUCKET_BYTES,
    NamedTensors,
    bucket_tensors,
    bucketize,
    cast_tensors,
    fused_group_key,
    with_final,
)
from rlhf_dist.engines.weight_sync.engine_calls import engine_dtype, finish_push, llm_of

# ----------------------------------------------------------------------------------------------
# Transport 1: local engines, collective_rpc
# ----------------------------------------------------------------------------------------------


def push_weights(
    engines: Sequence | object,
    named_tensors: NamedTensors,
    version: int,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    reset_prefix_cache: bool = True,
    group_key: Callable[[str], str] | None = fused_group_key,
) -> dict:
    """Load `named_tensors` (HF names) into every engine in this process, bucket by bucket; stamp `version`.

    `engines`: one or a list of `VLLMRolloutEngine` / `vllm.LLM` (same dtype; tensors are cast
    to it). Each bucket is serialised once and sent to every engine with `collective_rpc`;
    after the final bucket each engine's prefix cache is reset (`reset_prefix_cache=False` only
    to show the stale-KV effect) and its version read back (an error if it is not `version`).
    A `VLLMRolloutEngine` also gets `weight_version = version`. Returns {"buckets", "bytes",
    "tensors"} (tensors loaded into the first engine).
    """
    if not isinstance(engines, (list, tuple)):
        engines = [engines]
    if not engines:
        raise ValueError("no engines")
    dtypes = {engine_dtype(e) for e in engines}
    if len(dtypes) != 1:
        raise ValueError(f"engines have different dtypes: {dtypes}")
    llms = [llm_of(e) for e in engines]
    stats = {"buckets": 0, "bytes": 0, "tensors": 0}
    for blob, final in with_final(bucketize(cast_tensors(named_tensors, dtypes.pop()), bucket_bytes, group_key)):
        for i, llm in enumerate(llms):
            counts = llm.collective_rpc("rlhf_load_weight_bucket", args=(blob, int(version), final))
            if i == 0:
                stats["tensors"] += counts[0]
        stats["buckets"] += 1
        stats["bytes"] += len(blob)
    for engine in engines:
        finish_push(engine, version, reset_prefix_cache)
    return stats


# ----------------------------------------------------------------------------------------------
# Transport 2: Ray object store (CPU)
# ----------------------------------------------------------------------------------------------


class ObjectStoreWeightSync:
    """Buckets as safetensors blobs through the Ray object store: `ray.put` once per bucket, every
    actor (`WeightSyncActorMixin`) loads it. Up to `max_inflight` buckets are in flight (the next
    is serialised while the actors load the previous); Ray runs one actor's calls in order, so
    the final bucket lands last.

    `adapter` (an `AdapterSpec`, rollout.lora_sync=adapter): the tensors pushed are LoRA adapter
    tensors under peft's adapter-file names; each actor writes them as an adapter folder that its
    engine serves from then on (adapters.py)."""

    def __init__(self, actors: Sequence, bucket_bytes: int = DEFAULT_BUCKET_BYTES, dtype: torch.dtype | None = None,
                 max_inflight: int = 2, adapter: AdapterSpec | None = None):
        if not actors:
            raise ValueError("no actors")
        # dtype: the engines' dtype (cast here, so a bf16 engine is not sent fp32 bytes).
        self.actors, self.bucket_bytes, self.dtype, self.max_inflight = list(actors), bucket_bytes, dtype, max_inflight
        self.adapter = adapter

    def push(self, named_tensors: NamedTensors, version: int) -> dict:
        import ray

        stats: dict = {"buckets": 0, "bytes": 0}
        inflight: list = []
        group_key = None if self.adapter else fused_group_key  # adapters: no fused vLLM parameters to keep whole
        for blob, final in with_final(bucketize(cast_tensors(named_tensors, self.dtype), self.bucket_bytes, group_key)):
            ref = ray.put(blob)
            if self.adapter is None:
                inflight.append([a.load_weight_bucket.remote(ref, int(version), final) for a in self.actors])
            else:
                inflight.append([a.load_adapter_bucket.remote(ref, int(version), final, self.adapter) for a in self.actors])
            stats["buckets"] += 1
            stats["bytes"] += len(blob)
            if len(inflight) >= self.max_inflight and not final:
                ray.get(inflight.pop(0))
        versions = [ray.get(refs) for refs in inflight][-1]
        if any(v != version for v in versions):
            raise RuntimeError(f"actors report weight versions {versions} after pushing {version}")
        stats["versions"] = versions
        return stats

    def close(self) -> None:
        pass


def push_weights_ray(actors: Sequence, named_tensors: NamedTensors, version: int,
                     bucket_bytes: int = DEFAULT_BUCKET_BYTES, dtype: torch.dtype | None = None) -> dict:
    """`ObjectStoreWeightSync(actors, bucket_bytes, dtype).push(named_tensors, version)`."""
    return ObjectStoreWeightSync(actors, bucket_bytes, dtype).push(named_tensors, version)


# ----------------------------------------------------------------------------------------------
# Transport 3: a broadcast group (gloo on CPU: tested; nccl on GPU: UNTESTED)
# ----------------------------------------------------------------------------------------------


class BroadcastWeightSync:
    """Learner rank 0 -> the rollout actors' vLLM workers through a broadcast group.

    The group: the learner is rank 0; actor i's workers are ranks 1 + i * workers_per_actor + w
    (workers_per_actor = the engines' tensor-parallel size). Per bucket the tensor metadata goes
    through Ray (`receive_weight_broadcast.remote`), the bytes through one broadcast of a flat
    buffer (on the GPU with nccl: no host copy, no object store). One group per engine at a
    time: creating another `BroadcastWeightSync` for an actor replaces the actor's group (the
    old sender then fails with "connection closed"); change `bucket_bytes` on the instance
    instead of creating a second one.

    backend="gloo" (CPU) is tested (tests/test_engines_weight_sync.py). backend="nccl" is UNTESTED: it
    needs a GPU; the learner's CUDA device must be set (torch.cuda.set_device) before creating this.
    """

    def __init__(self, actors: Sequence, backend: str | None = None, host: str = "127.0.0.1", port: int | None = None,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES, dtype: torch.dtype | None = None,
                 workers_per_actor: int = 1, timeout_s: float = 300.0):
        import ray

        if not actors:
            raise ValueError("no actors")
        self.backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")
        self.actors, self.bucket_bytes, self.dtype = list(actors), bucket_bytes, dtype
        port = port or free_port()
        world = 1 + workers_per_actor * len(self.actors)
        joins = [a.init_weight_group.remote(host, port, 1 + i * workers_per_actor, world, self.backend, timeout_s)
                 for i, a in enumerate(self.actors)]
        self.group, self._store = make_group(host, port, 0, world, self.backend, timeout_s)
        ray.get(joins)

    def push(self, named_tensors: NamedTensors, version: int) -> dict:
        import ray

        stats: dict = {"buckets": 0, "bytes": 0}
        for bucket, final in with_final(bucket_tensors(cast_tensors(named_tensors, self.dtype, self.device),
                                                       self.bucket_bytes)):
            meta, buffer = pack_bucket(bucket)
            refs = [a.receive_weight_broadcast.remote(meta, int(version), final) for a in self.actors]
            broadcast(self.group, buffer)
            versions = ray.get(refs)
            stats["buckets"] += 1
            stats["bytes"] += buffer.numel()
        if any(v != version for v in versions):
            raise RuntimeError(f"actors report weight versions {versions} after pushing {version}")
        stats["versions"] = versions
        return stats

    def close(self) -> None:
        import ray

        ray.get([a.close_weight_group.remote() for a in self.actors])
        self.group, self._store = None, None


def make_weight_sync(actors: Sequence, transport: str = "auto", adapter: AdapterSpec | None = None, **kwargs):
    """The sender for rollout actors: "broadcast" (nccl) when CUDA is available, else "object_store".
    With `adapter` (LoRA adapter tensors, a few MB): the object store, on any device."""
    if adapter is not None:
        if transport == "broadcast":
            raise ValueError("LoRA adapters are pushed through the Ray object store, not a broadcast group: "
                             "use transport object_store or auto")
        return ObjectStoreWeightSync(actors, adapter=adapter, **kwargs)
    if transport == "auto":
        transport = "broadcast" if torch.cuda.is_available() else "object_store"
    if transport == "object_store":
        return ObjectStoreWeightSync(actors, **kwargs)
    if transport == "broadcast":
        return BroadcastWeightSync(actors, **kwargs)
    raise ValueError(f"transport {transport!r}: expected auto, object_store or broadcast")
