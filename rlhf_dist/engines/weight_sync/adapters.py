"""LoRA adapter sync (`rollout.lora_sync=adapter`): the rollout engines keep their base weights and
serve the policy's LoRA adapter, which is all a push sends.

Sender (learner rank 0): `TrainEngine.named_adapter_tensors()`, the trainable A and B tensors
under the names of peft's adapter file (`base_model.model.<module>.lora_A.weight`, ...: a few MB
where the merged model is the whole model). They travel in buckets, through the object store
(`ObjectStoreWeightSync(..., adapter=spec)`) or to engines in this process (`push_adapter`).

Receiver (the process holding the engine, not vLLM's worker): the buckets of one version are
collected; after the final one they are written as a peft adapter folder (adapter_config.json from
the learner's LoRA settings, `AdapterSpec`, + adapter_model.safetensors) in the engine's own temp
folder, one folder per version (the previous one is deleted once the new one is loaded). vLLM loads
it at once (`add_lora`, so a bad adapter fails the push, not a later sampling call) and reports it
back (`list_loras`): that read-back is the engine's version. Every later generate uses
`LoRARequest(f"v{version}", version + 1, folder)`. Before the first push (version 0) the engine
samples its base weights, which equal the LoRA model at initialisation (peft's B starts at 0).

The prefix cache needs no reset: vLLM keys cached KV blocks by the request's adapter name and
folder (vllm/v1/core/kv_cache_utils.py), and every push is a new folder.

Heavy imports (safetensors, vllm, peft through rlhf_dist.models.lora) happen inside functions.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhf_dist.engines.weight_sync.buckets import DEFAULT_BUCKET_BYTES, NamedTensors, bucketize, cast_tensors, with_final


@dataclass(frozen=True)
class AdapterSpec:
    """The learner's LoRA settings, written into every adapter folder (adapter_config.json)."""

    rank: int
    alpha: float
    dropout: float = 0.0
    targets: str | list[str] = field(default="all-linear")
    base_model: str = ""


def lora_request_of(version: int, folder: str | Path):
    """The vLLM request of adapter version `version` (ids start at 1: version 0 is id 1)."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(f"v{version}", int(version) + 1, str(folder))


def adapter_version(engine) -> int | None:
    """The adapter version the engine serves, read back from vLLM's loaded adapters; None when it
    serves no adapter (base weights)."""
    request = getattr(engine, "lora_request", None)
    if request is None:
        return None
    loaded = engine.llm.llm_engine.list_loras()
    if request.lora_int_id not in loaded:
        raise RuntimeError(f"the engine serves adapter {request.lora_name} (id {request.lora_int_id}) but vLLM "
                           f"has adapters {sorted(loaded)} loaded")
    return request.lora_int_id - 1


def use_adapter(engine, folder: str | Path, version: int) -> int:
    """Load the peft adapter folder into the engine as version `version`, drop the previous adapter,
    and make every later `generate` use it; returns the version read back from vLLM."""
    if not hasattr(engine, "lora_request"):
        raise TypeError("adapters need a VLLMRolloutEngine started with lora_rank > 0")
    llm_engine = engine.llm.llm_engine
    request = lora_request_of(version, folder)
    old = engine.lora_request
    if old is not None:  # also for the same id again: vLLM would keep the cached adapter of that id
        llm_engine.remove_lora(old.lora_int_id)
    if not llm_engine.add_lora(request):
        raise RuntimeError(f"vLLM did not load adapter version {version} from {folder}")
    engine.lora_request = request
    got = adapter_version(engine)
    if got != version:
        raise RuntimeError(f"engine reports adapter version {got} after pushing {version}")
    engine.weight_version = got  # for stamping trajectories with the version that sampled them
    return got


class AdapterReceiver:
    """One engine's receiving end: collects a version's buckets, then writes and loads its folder."""

    def __init__(self, engine, root: str | Path | None = None) -> None:
        self.engine = engine
        self.root = Path(root or tempfile.mkdtemp(prefix="rlhf-dist-lora-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.held: dict[str, torch.Tensor] = {}
        self.loading: int | None = None
        self.folder: Path | None = None
        self.pushes = 0
        atexit.register(self.close)

    def ingest(self, tensors: dict[str, torch.Tensor], version: int, final: bool, spec: AdapterSpec) -> int:
        """Add one bucket of version `version`; on `final`, serve the version. Returns the version
        read back after the final bucket, else -1."""
        if self.loading is not None and self.loading != version:  # an earlier push stopped half way
            self.held = {}
        self.loading = version
        self.held.update({n: t.clone() for n, t in tensors.items()})  # do not pin a whole received buffer
        if not final:
            return -1
        state, self.held, self.loading = self.held, {}, None
        if not state:
            raise RuntimeError(f"adapter version {version}: no tensors")
        self.pushes += 1
        folder = self.root / f"v{version}-{self.pushes}"  # a new folder even for a version pushed again
        write_adapter_folder(folder, state, spec)
        try:
            got = use_adapter(self.engine, folder, version)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if self.folder is not None:  # vLLM holds the previous version no more
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = folder
        return got

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def write_adapter_folder(folder: str | Path, state: dict[str, torch.Tensor], spec: AdapterSpec) -> None:
    """A peft adapter folder of a causal LM (what vLLM's LoRA loader and `peft` read)."""
    from rlhf_dist.models.lora import save_adapter

    save_adapter(folder, state, spec.rank, spec.alpha, spec.dropout, spec.targets, scalar=False,
                 base_model=spec.base_model)


def adapter_receiver(engine, root: str | Path | None = None) -> AdapterReceiver:
    """The engine's receiver, kept on the engine object; created on first use, its folders under
    `root` (default: a new temp folder)."""
    receiver = getattr(engine, "_rlhf_adapter_receiver", None)
    if receiver is None:
        receiver = AdapterReceiver(engine, root)
        engine._rlhf_adapter_receiver = receiver
    return receiver


def close_adapter_receiver(engine) -> None:
    """Delete the engine's adapter folders (the engine keeps serving what it has loaded)."""
    receiver = getattr(engine, "_rlhf_adapter_receiver", None)
    if receiver is not None:
        receiver.close()


def load_adapter_bucket(engine, blob: bytes, version: int, final: bool, spec: AdapterSpec) -> int:
    """One safetensors blob of adapter tensors for the engine; the version read back after the final
    bucket, else -1."""
    from safetensors.torch import load

    return adapter_receiver(engine).ingest(load(bytes(blob)), int(version), bool(final), spec)


def push_adapter(engines: Sequence | object, named_tensors: NamedTensors, version: int, spec: AdapterSpec,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> dict:
    """The adapter tensors (peft adapter-file names) to every engine in this process (each a
    `VLLMRolloutEngine` started with lora_rank > 0), stamped `version`. Returns {"buckets", "bytes"}."""
    if not isinstance(engines, (list, tuple)):
        engines = [engines]
    if not engines:
        raise ValueError("no engines")
    stats: dict = {"buckets": 0, "bytes": 0}
    versions = []
    dtype = engines[0].llm.llm_engine.model_config.dtype
    for blob, final in with_final(bucketize(cast_tensors(named_tensors, dtype), bucket_bytes, None)):
        versions = [load_adapter_bucket(e, blob, version, final, spec) for e in engines]
        stats["buckets"] += 1
        stats["bytes"] += len(blob)
    if any(v != version for v in versions):
        raise RuntimeError(f"engines report adapter versions {versions} after pushing {version}")
    stats["versions"] = versions
    return stats
