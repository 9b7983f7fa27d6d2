"""Calls into a vLLM engine from the process that holds it, and the Ray actor mixin built on them.

The engine (a `VLLMRolloutEngine` or a raw `vllm.LLM`, started with
`worker_extension_cls=EXTENSION_CLS`) is driven through `collective_rpc` into the worker extension
(receiver.py); every worker answers, so a tensor-parallel engine returns one value per worker.

After the final bucket of a push, `finish_push`:
- resets the prefix cache. It lives in the engine core's scheduler, not in the worker, so the
  worker extension cannot do it: `LLM.reset_prefix_cache()` here. Without the reset a prompt
  whose KV blocks were cached under the old weights reuses them (a test shows the stale output).
- reads the version back from the workers and checks it. Never trust a return value alone (vLLM's
  native NCCL weight transfer reports success on CPU and keeps the old weights): the tests check
  by greedy output against HF; `weight_fingerprint` is a cheap debugging aid showing whether
  the engine's weights changed at all.

`WeightSyncActorMixin`: the methods the Ray transports (transports.py) call on a rollout actor
whose engine is `self.engine` (rlhf_dist/actors/rollout.py mixes it in); with
rollout.lora_sync=adapter, the adapter buckets too (adapters.py).
"""

from __future__ import annotations

import torch

from rlhf_dist.engines.weight_sync.adapters import AdapterSpec, adapter_version, close_adapter_receiver, load_adapter_bucket


def llm_of(engine):
    """A `VLLMRolloutEngine` (has `.llm`) or a raw `vllm.LLM`."""
    return getattr(engine, "llm", engine)


def engine_dtype(engine) -> torch.dtype:
    return llm_of(engine).llm_engine.model_config.dtype


def _one_value(values: list, what: str):
    """collective_rpc returns one value per worker (tensor parallel): they must agree."""
    if len(set(values)) != 1:
        raise RuntimeError(f"workers disagree on {what}: {values}")
    return values[0]


def engine_version(engine) -> int:
    """The weight version the engine's workers hold (0: the weights it was started with)."""
    return _one_value(llm_of(engine).collective_rpc("rlhf_weight_version"), "the weight version")


def weight_fingerprint(engine) -> float:
    """Sum of the engine's parameters in float64 (vLLM layout): changes when the weights change. Debugging only."""
    return _one_value(llm_of(engine).collective_rpc("rlhf_weight_fingerprint"), "the weight fingerprint")


def finish_push(engine, version: int, reset_prefix_cache: bool = True) -> int:
    """After a final bucket: drop KV blocks cached under the old weights, read the version back."""
    llm = llm_of(engine)
    if reset_prefix_cache:
        llm.reset_prefix_cache()
    got = engine_version(llm)
    if got != version:
        raise RuntimeError(f"engine reports weight version {got} after pushing {version}")
    if llm is not engine:
        engine.weight_version = got  # for stamping trajectories with the version that sampled them
    return got


def load_weight_bucket(engine, blob: bytes, version: int, final: bool) -> int:
    """`WeightSyncActorMixin.load_weight_bucket` as a function of the engine."""
    llm_of(engine).collective_rpc("rlhf_load_weight_bucket", args=(blob, int(version), bool(final)))
    return finish_push(engine, version) if final else -1


class WeightSyncActorMixin:
    """Methods the Ray senders call on a rollout actor whose engine is `self.engine`
    (a `VLLMRolloutEngine` or `vllm.LLM` started with `worker_extension_cls=EXTENSION_CLS`)."""

    def load_weight_bucket(self, blob: bytes, version: int, final: bool) -> int:
        """One safetensors blob (Ray passes the object-store ref's value). Returns the version
        the workers report after the final bucket, else -1."""
        llm_of(self.engine).collective_rpc("rlhf_load_weight_bucket", args=(blob, int(version), bool(final)))
        return finish_push(self.engine, version) if final else -1

    def init_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                          timeout_s: float = 300.0) -> list[int]:
        """Join the broadcast group of `BroadcastWeightSync` (worker w gets rank rank_offset + w)."""
        return llm_of(self.engine).collective_rpc(
            "rlhf_init_weight_group", args=(host, int(port), int(rank_offset), int(world_size), backend, float(timeout_s))
        )

    def receive_weight_broadcast(self, meta: list, version: int, final: bool) -> int:
        llm_of(self.engine).collective_rpc("rlhf_receive_weight_broadcast", args=(meta, int(version), bool(final)))
        return finish_push(self.engine, version) if final else -1

    def close_weight_group(self) -> None:
        llm_of(self.engine).collective_rpc("rlhf_close_weight_group")

    def load_adapter_bucket(self, blob: bytes, version: int, final: bool, spec: AdapterSpec) -> int:
        """One safetensors blob of LoRA adapter tensors (rollout.lora_sync=adapter); after the final
        bucket the engine serves the adapter as version `version`. Returns the version read back
        after the final bucket, else -1."""
        return load_adapter_bucket(self.engine, blob, version, final, spec)

    def close_adapter_sync(self) -> None:
        """Delete the actor's adapter folders (before the actor is stopped)."""
        close_adapter_receiver(self.engine)

    def weight_version(self) -> int:
        """The version the engine samples with: its adapter's (read back from vLLM) when it serves
        one, else its workers' weight version."""
        version = adapter_version(self.engine)
        return engine_version(self.engine) if version is None else version
