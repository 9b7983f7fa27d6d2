"""Weight sync, learner -> vLLM rollout engines: buckets of tensors, stamped with a version.

Sender (learner rank 0): `named_tensors` = (HF state-dict name of `LlamaForCausalLM`, tensor)
pairs, e.g. `gathered_named_tensors(train_engine)` (ZeRO-3: one parameter gathered at a time)
or `TrainEngine.full_state_dict().items()`. They are cut into buckets of about `bucket_bytes`
and every engine loads each bucket through one receiver, the vLLM worker extension. After the
final bucket the engine's prefix cache is reset and its workers' version read back; rollouts are
stamped with that version.

By concern:
- buckets.py          planning buckets (never splitting a fused q/k/v or gate/up group), safetensors blobs
- transports.py       learner side: `push_weights` (local engines), `ObjectStoreWeightSync` (Ray, CPU),
                      `BroadcastWeightSync` (gloo/NCCL group), `make_weight_sync` (picks one)
- broadcast_group.py  the broadcast transport's own process group and flat-buffer wire format
- engine_calls.py     calls into an engine held in this process (finish a push: reset prefix cache,
                      check the version) and `WeightSyncActorMixin` for rollout actors
- receiver.py         `WeightSyncExtension`, inside vLLM's worker (`reload_weights`), and EXTENSION_CLS
- gather.py           learner side: the gathered (name, tensor) stream of a `TrainEngine`

Heavy imports (vllm, safetensors, ray, deepspeed) happen inside functions; the package imports
torch only (tests/test_layering.py).
"""

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
    "DEFAULT_BUCKET_BYTES",
    "EXTENSION_CLS",
    "LLAMA_PACKED_MODULES",
    "BroadcastWeightSync",
    "NamedTensors",
    "ObjectStoreWeightSync",
    "WeightSyncActorMixin",
    "WeightSyncExtension",
    "bucket_tensors",
    "bucketize",
    "engine_dtype",
    "engine_version",
    "fused_group_key",
    "gathered_named_tensors",
    "load_weight_bucket",
    "make_weight_sync",
    "push_weights",
    "push_weights_ray",
    "weight_fingerprint",
]
