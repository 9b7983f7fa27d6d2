"""LoRA adapter sync (`rollout.lora_sync=adapter`) on real vLLM (CPU build), Ray and DeepSpeed:

- a vLLM engine given adapters through the adapter path (`push_adapter`: buckets -> a peft adapter
  folder per version -> a vLLM LoRA request) samples with the log-probs that transformers computes
  for the peft model holding the same adapter (random A and B: an adapter that changes the model),
  version after version; before any push it samples the base model; one folder is kept;
- a LoRA PPO run with rollout.lora_sync=adapter whose rollout worker is killed after the first
  iteration: every iteration's rollouts carry the version of the adapter they were sampled with,
  vLLM's log-probs equal the learner's (`rollout/logprob_gap_max`, the replacement worker's rows
  included), each push is the adapter's size, the policy moved, and no adapter folder is left;
- the one-line refusals: adapter sync without LoRA, or through the broadcast transport.

The engine test runs the engine in a fresh child process (spawn), as tests/test_engines_weight_sync.py
does and for the same reason.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("vllm")

REPO = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).with_name("rlhf-dist"))
RANK, ALPHA = 8, 16.0
NEW_TOKENS, TEMPERATURE = 16, 0.7
PROMPTS = ["the cat", "a red box is under the mat and", "count one two", "list", "blue dog ran"]


# ------------------------------------------------------------------------------------------------
# One engine, adapters pushed to it: vLLM's log-probs = transformers' with peft
# ------------------------------------------------------------------------------------------------


def _peft_policy(model_dir: str):
    """The learner's policy: the model with peft adapters injected (rlhf_dist.models.lora.add_lora)."""
    from rlhf_dist.models import load_causal_lm
    from rlhf_dist.models.lora import add_lora

    return add_lora(load_causal_lm(model_dir), RANK, ALPHA, 0.0, "all-linear").eval()


def _randomise_adapters(model, seed: int) -> dict[str, torch.Tensor]:
    """Random A and B (peft starts B at 0: the adapter would change nothing); the adapter tensors
    under peft's adapter-file names, as the learner pushes them."""
    from rlhf_dist.models.lora import adapter_state

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return {n: t.detach().clone() for n, t in adapter_state(model.named_parameters()).items()}


def _in_child(model_dir: str, prompts, adapters: list[dict], spec) -> dict:
    """Spawned: one in-process engine with LoRA enabled; sample at version 0, then push each adapter
    (version 1, 2, ...) and sample with it."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from rlhf_dist.engines.vllm_rollout import VLLMRolloutEngine
    from rlhf_dist.engines.weight_sync import EXTENSION_CLS, WeightSyncActorMixin, push_adapter

    engine = VLLMRolloutEngine(model_dir, seed=0, max_model_len=256, lora_rank=spec.rank, worker_extension_cls=EXTENSION_CLS)
    actor = WeightSyncActorMixin()  # what a rollout actor reports as its version
    actor.engine = engine

    def sample():
        rollouts = engine.generate(prompts, NEW_TOKENS, temperature=TEMPERATURE, seed=3)
        return [(r.response_ids, r.logprobs, r.weight_version) for r in rollouts]

    out = {"v0": {"sampled": sample(), "version": actor.weight_version()}}
    for version, state in enumerate(adapters, start=1):
        # version 1 in one bucket, version 2 in several (each bucket about one layer's adapters)
        stats = push_adapter(engine, state.items(), version, spec, bucket_bytes=10**9 if version == 1 else 40_000)
        receiver = engine._rlhf_adapter_receiver
        out[f"v{version}"] = {"sampled": sample(), "version": actor.weight_version(), "stats": stats,
                              "folders": sorted(p.name for p in receiver.root.iterdir()),
                              "files": sorted(p.name for p in receiver.folder.iterdir()),
                              "config": json.loads((receiver.folder / "adapter_config.json").read_text())}
    root = engine._rlhf_adapter_receiver.root
    actor.close_adapter_sync()
    out["root_left"] = root.exists()
    return out


@pytest.fixture(scope="module")
def pushed(tiny_model_dir):
    from rlhf_dist.engines.weight_sync import AdapterSpec
    from rlhf_dist.models import load_tokenizer

    model_dir = str(tiny_model_dir)
    tok = load_tokenizer(model_dir)
    prompts = [tok(t).input_ids for t in PROMPTS]
    policy = _peft_policy(model_dir)
    adapters = [_randomise_adapters(policy, seed) for seed in (1, 2)]
    spec = AdapterSpec(RANK, ALPHA, 0.0, "all-linear", model_dir)
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        res = pool.submit(_in_child, model_dir, prompts, adapters, spec).result(timeout=300)
    return res, prompts, adapters, tok


def _logprob_gap(model, prompts, sampled, pad_id) -> float:
    """max |transformers' log pi_T - vLLM's| over the sampled response tokens."""
    from rlhf_dist.models import pad_prompt_response, response_logprobs

    batch = pad_prompt_response(prompts, [ids for ids, _, _ in sampled], pad_id)
    with torch.no_grad():
        ref = response_logprobs(model, batch, temperature=TEMPERATURE)
    got = torch.zeros(batch.response_mask.shape)
    for i, (_, lps, _) in enumerate(sampled):
        got[i, : len(lps)] = torch.tensor(lps)
    return (ref - got).abs()[batch.response_mask].max().item()


def test_vllm_serving_a_pushed_adapter_has_the_logprobs_of_the_peft_model(pushed, tiny_model_dir):
    from rlhf_dist.models import load_causal_lm
    from rlhf_dist.models.lora import ADAPTER

    res, prompts, adapters, tok = pushed
    base = load_causal_lm(str(tiny_model_dir)).eval()
    policy = _peft_policy(str(tiny_model_dir))
    # version 0: no adapter yet, the base model
    assert res["v0"]["version"] == 0 and {v for _, _, v in res["v0"]["sampled"]} == {0}
    assert _logprob_gap(base, prompts, res["v0"]["sampled"], tok.pad_token_id) < 1e-4
    for version, state in enumerate(adapters, start=1):
        with torch.no_grad():  # the peft model holding this version's adapter
            params = dict(policy.named_parameters())
            for name, tensor in state.items():
                params[name.removeprefix("base_model.model.").replace(".weight", f".{ADAPTER}.weight")].copy_(tensor)
        got = res[f"v{version}"]
        assert got["version"] == version and {v for _, _, v in got["sampled"]} == {version}
        gap = _logprob_gap(policy, prompts, got["sampled"], tok.pad_token_id)
        assert gap < 1e-4, f"version {version}: max |peft - vLLM| = {gap:.2e}"
        # the adapter really changes the model: the base model's log-probs are far off
        assert _logprob_gap(base, prompts, got["sampled"], tok.pad_token_id) > 0.05


def test_each_push_is_the_adapter_alone_in_one_folder_per_version(pushed):
    res, _, adapters, _ = pushed
    for version, state in enumerate(adapters, start=1):
        got = res[f"v{version}"]
        adapter_bytes = sum(t.numel() * t.element_size() for t in state.values())
        assert adapter_bytes <= got["stats"]["bytes"] < adapter_bytes + 16_384  # + the safetensors headers
        assert got["folders"] == [f"v{version}-{version}"]  # the previous version's folder is gone
        assert got["files"] == ["adapter_config.json", "adapter_model.safetensors"]
        assert got["config"]["r"] == RANK and got["config"]["lora_alpha"] == ALPHA
        assert got["config"]["peft_type"] == "LORA" and got["config"]["task_type"] == "CAUSAL_LM"
    assert res["v1"]["stats"]["buckets"] == 1 and res["v2"]["stats"]["buckets"] > 1
    assert res["root_left"] is False  # close_adapter_sync removes the engine's adapter folders


# ------------------------------------------------------------------------------------------------
# PPO with rollout.lora_sync=adapter, the rollout worker killed after the first iteration
# ------------------------------------------------------------------------------------------------

ITERATIONS = 3


def _ppo(ppo_models, out, *extra):
    """tests/test_recipes_lora.py's LoRA PPO command, adapter sync."""
    sft, rm, data = ppo_models
    return [EXE, "ppo", "--config", "configs/tiny.yaml", "--out", str(out), f"sft={sft}", f"reward_model={rm}",
            f"data={data}", f"iterations={ITERATIONS}", "prompts_per_iteration=16", "ppo.minibatch_size=8",
            "learner.micro_batch_size=4", "eval_prompts=8", "eval_every=2", "rollout.max_new_tokens=12",
            "optim.lr=5e-3", "critic_optim.lr=5e-3", "optim.warmup_steps=0", "save_every=2", "keep_checkpoints=1",
            f"learner.lora_rank={RANK}", f"learner.lora_alpha={ALPHA:g}", "rollout.lora_sync=adapter", *extra]


def _rollout_worker_pids(sid: int) -> list[int]:
    rows = [line.split(None, 2) for line in subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True,
                                                           text=True).stdout.splitlines()]
    return [int(r[0]) for r in rows if len(r) == 3 and int(r[1]) == sid and r[2].startswith("ray::RolloutWorker")]


@pytest.mark.slow
def test_ppo_with_adapter_sync_samples_with_the_learners_adapter(ppo_models, tmp_path):
    import pyarrow.parquet as pq
    from safetensors.torch import load_file

    out = tmp_path / "run"
    adapter_folders = set(Path(tempfile.gettempdir()).glob("rlhf-dist-lora-*"))
    proc = subprocess.Popen(_ppo(ppo_models, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not ((out / "metrics.jsonl").exists() and "objective/score" in
                                              (out / "metrics.jsonl").read_text()):
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(0.05)
        pids = _rollout_worker_pids(proc.pid)
        assert pids, "no ray::RolloutWorker process under the run"
        os.kill(pids[0], signal.SIGKILL)  # its replacement must get the current adapter
        _, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "objective/score" in r]
    assert len(rows) == ITERATIONS
    assert rows[-1]["faults/rollout_restarts"] == 1
    # vLLM sampled with the learner's current adapter: its log-probs equal the learner's, every iteration
    assert all(r["rollout/logprob_gap_max"] < 1e-3 for r in rows), [r["rollout/logprob_gap_max"] for r in rows]
    # every row carries the version of the adapter that sampled it: iteration i's rows, version i
    for it, path in enumerate(sorted((out / "trajectories").glob("*"))):
        assert set(pq.read_table(path).column("policy_version").to_pylist()) == {it}, path.name
    # each push is the adapter alone (+ the safetensors headers), a fraction of the model
    adapter = load_file(str(out / "model" / "adapter" / "adapter_model.safetensors"))
    adapter_mb = sum(t.numel() * t.element_size() for t in adapter.values()) / 2**20
    model_mb = (Path(ppo_models[0]) / "model.safetensors").stat().st_size / 2**20
    assert all(adapter_mb <= r["sync/push_mb"] < adapter_mb + 0.02 for r in rows), [r["sync/push_mb"] for r in rows]
    assert adapter_mb < model_mb / 4
    # the policy moved: every adapted layer of the saved (merged) model differs from the start's
    start = load_file(str(Path(ppo_models[0]) / "model.safetensors"))
    trained = load_file(str(out / "model" / "model.safetensors"))
    adapted = [k for k in start if ".layers." in k and k.endswith("proj.weight")]
    assert adapted and all(not torch.equal(start[k], trained[k]) for k in adapted)
    # the workers' adapter folders are gone, the killed worker's too
    assert set(Path(tempfile.gettempdir()).glob("rlhf-dist-lora-*")) <= adapter_folders


# ------------------------------------------------------------------------------------------------
# Refusals
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, message", [
    ([], "rollout.lora_sync=adapter pushes the policy's LoRA adapters: set learner.lora_rank > 0"),
    (["learner.lora_rank=8", "rollout.weight_transport=broadcast"],
     "rollout.lora_sync=adapter sends the adapters through the Ray object store: set rollout.weight_transport=object_store"),
])
def test_adapter_sync_without_lora_or_through_broadcast_is_refused_in_one_line(extra, message, tmp_path):
    out = tmp_path / "run"
    res = subprocess.run([EXE, "ppo", "--config", "configs/tiny.yaml", "--out", str(out), "rollout.lora_sync=adapter", *extra],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


def test_config_refuses_a_rank_vllm_does_not_serve_and_the_sender_refuses_broadcast():
    from rlhf_dist.config import load_config
    from rlhf_dist.config.ppo import PPOConfig
    from rlhf_dist.engines.weight_sync import AdapterSpec, make_weight_sync

    with pytest.raises(ValueError, match=r"learner.lora_rank=1024 is above the largest LoRA rank vLLM serves \(512\)"):
        load_config(PPOConfig, None, ["out=x", "rollout.lora_sync=adapter", "learner.lora_rank=1024"])
    cfg = load_config(PPOConfig, None, ["out=x", "rollout.lora_sync=adapter", "learner.lora_rank=4"])
    assert cfg.rollout.lora_sync == "adapter" and load_config(PPOConfig, None, ["out=x"]).rollout.lora_sync == "merged"
    with pytest.raises(ValueError, match="not a broadcast group"):
        make_weight_sync([object()], "broadcast", adapter=AdapterSpec(8, 16.0))
    assert type(make_weight_sync([object()], "auto", adapter=AdapterSpec(8, 16.0))).__name__ == "ObjectStoreWeightSync"


def test_engine_max_lora_rank_is_the_smallest_vllm_accepts():
    from rlhf_dist.engines.vllm_rollout import vllm_max_lora_rank

    assert [vllm_max_lora_rank(r) for r in (1, 4, 8, 9, 300, 512)] == [1, 8, 8, 16, 320, 512]
    with pytest.raises(ValueError):
        vllm_max_lora_rank(513)
