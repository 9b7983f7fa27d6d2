"""Weight sync, learner -> vLLM rollout engines: buckets of tensors, stamped with a version.

Sender (learner rank 0): `named_tensors` = (HF state-dict name of `LlamaForCausalLM`, tensor)
pairs, e.g. `gathered_named_tensors(train_engine)` (ZeRO-3: one parameter gathered at a time)
or `TrainEngine.full_state_dict().items()`. They are cut into buckets of about `bucket_bytes`
and every engine loads each bucket through one receiver, the vLLM worker extension. After the
final bucket the engine's prefix cache is reset and its workers' version read back; rollouts are
stamped with that version.

A LoRA policy can instead push its adapters alone (rollout.lora_sync=adapter, adapters.py): the
engines keep their base weights, each push sends the LoRA A and B tensors (peft's adapter-file
names), and the receiving process writes them as a peft adapter folder that its engine serves
(vLLM LoRA) from then on, under the pushed version.

By concern:
- buckets.py          planning buckets (never splitting a fused q/k/v or gate/up group), safetensors blobs
- transports.py       learner side: `push_weights` (local engines), `ObjectStoreWeightSync` (Ray, CPU),
                      `BroadcastWeightSync` (gloo/NCCL group), `make_weight_sync` (picks one)
- broadcast_group.py  the broadcast transport's own process group and flat-buffer wire format
- engine_calls.py     calls into an engine held in this process (finish a push: reset prefix cache,
                      check the version) and `WeightSyncActorMixin` for rollout actors
- receiver.py         `WeightSyncExtension`, inside vLLM's worker (`reload_weights`), and EXTENSION_CLS
- adapters.py         LoRA adapter pushes: `AdapterSpec`, the receiving end (adapter folder per version,
                      `use_adapter`), `push_adapter` (local engines)
- gather.py           learner side: the gathered (name, tensor) stream of a `TrainEngine`

Heavy imports (vllm, safetensors, ray, deepspeed) happen inside functions; the package imports
torch only (tests/test_layering.py).
"""

from rlhf_dist.engines.weight_sync.adapters import (
    AdapterReceiver,
    AdapterSpec,
    adapter_receiver,
    adapter_version,
    load_adapter_bucket,
    push_adapter,
    use_adapter,
)
from rlhf_dist.engines.weight_sync.buckets import (
    DEFAULT_BUCKET_BYTES,
    LLAMA_PACKED_MODULES,
    NamedTensors,
    bucket_tensors,
    bucketize,
    fused_group_key,
)
from rlhf_dist.engines.weight_sync.engine_calls import (
    WeightSyncActorMixin,
    engine_dtype,
    engine_version,
    load_weight_bucket,
    weight_fingerprint,
)
from rlhf_dist.engines.weight_sync.gather import gathered_named_tensors
from rlhf_dist.engines.weight_sync.receiver import EXTENSION_CLS, WeightSyncExtension
from rlhf_dist.engines.weight_sync.transports import (
    BroadcastWeightSync,
    ObjectStoreWeightSync,
    make_weight_sync,
    push_weights,
    push_weights_ray,
)

__all__ = [
    "AdapterReceiver",
    "AdapterSpec",
    "DEFAULT_BUCKET_BYTES",
    "EXTENSION_CLS",
    "LLAMA_PACKED_MODULES",
    "BroadcastWeightSync",
    "NamedTensors",
    "ObjectStoreWeightSync",
    "WeightSyncActorMixin",
    "WeightSyncExtension",
    "adapter_receiver",
    "adapter_version",
    "bucket_tensors",
    "bucketize",
    "engine_dtype",
    "engine_version",
    "fused_group_key",
    "gathered_named_tensors",
    "load_adapter_bucket",
    "load_weight_bucket",
    "make_weight_sync",
    "push_adapter",
    "push_weights",
    "push_weights_ray",
    "use_adapter",
    "weight_fingerprint",
]
