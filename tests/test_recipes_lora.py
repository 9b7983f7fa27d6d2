"""LoRA through the commands on real Ray, vLLM and DeepSpeed (`learner.lora_rank=8`):

- sft, rm and dpo train adapters only: every weight outside the adapted linear layers (embeddings,
  norms, the LM head) of the saved model equals the start's, bit for bit, the adapted ones moved,
  and the rm's scalar head trained in full;
- the output folder holds the merged model and an adapter folder that `peft` loads on the start
  model to the same outputs;
- PPO (GAE: policy and critic with adapters) pushes merged weights to vLLM: the rollout's log-probs
  equal the learner's after every push (`rollout/logprob_gap_max`), and the checkpoints hold the
  trainable weights only;
- a LoRA PPO run killed after a checkpoint and resumed ends with the uninterrupted run's metrics and
  trajectories, to the last bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("vllm")

REPO = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).with_name("rlhf-dist"))
LORA = ["learner.lora_rank=8", "learner.lora_alpha=16"]
ITERATIONS = 4
pytestmark = pytest.mark.slow  # whole command runs


def _weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def _only_adapted_layers_moved(start: dict, trained: dict, head: str | None = None) -> None:
    """Linear layers of the decoder blocks moved; everything else equals the start bit for bit."""
    adapted = [k for k in start if ".layers." in k and k.endswith("proj.weight")]
    assert adapted
    for name, tensor in start.items():
        if name in adapted:
            continue
        if head and name.startswith(head):
            continue
        assert torch.equal(trained[name], tensor), f"{name} changed: only adapters train"
    moved = [k for k in adapted if not torch.equal(trained[k], start[k])]
    assert len(moved) == len(adapted), f"unchanged adapted layers: {sorted(set(adapted) - set(moved))[:3]}"


def _cli(*args) -> None:
    from rlhf_dist import cli

    assert cli.main([str(a) for a in args]) == 0, f"rlhf-dist {args[0]} failed"


@pytest.fixture(scope="module")
def stages(ppo_models, tmp_path_factory, ray_local):
    """sft, rm and dpo with adapters, in this process, on the module's Ray instance (`rlhf-dist`
    stops Ray after each command; starting one per command costs seconds each)."""
    from rlhf_dist import cli

    sft, rm, data = ppo_models
    root = tmp_path_factory.mktemp("lora_stages")
    common = ["learner.cpus_per_rank=1", "log_every=1", "eval_every=0", *LORA]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "_stop_local_ray", lambda: None)
        _cli("sft", "--out", root / "sft", f"data={data}", f"init={sft}", "batch_size=16", "epochs=2",
             "learner.micro_batch_size=8", "optim.lr=1e-2", "gold_prompts=0", *common)
        _cli("rm", "--out", root / "rm", f"data={data}", f"init={sft}", "batch_size=4", "epochs=1",
             "learner.micro_batch_size=4", "optim.lr=1e-2", *common)
        _cli("dpo", "--out", root / "dpo", f"data={data}", f"init={sft}", "batch_size=4", "epochs=1",
             "learner.micro_batch_size=4", "optim.lr=1e-2", *common)
    return root


def test_stages_train_adapters_only_and_save_a_merged_model(stages, ppo_models):
    sft = ppo_models[0]
    start = _weights(sft)
    for stage in ("sft", "dpo"):
        _only_adapted_layers_moved(start, _weights(stages / stage / "model"))
    rm = _weights(stages / "rm" / "model")
    backbone = {k.removeprefix("model."): v for k, v in start.items() if k.startswith("model.")}
    _only_adapted_layers_moved({f"model.{k}": v for k, v in backbone.items()},
                               {k: v for k, v in rm.items() if k.startswith("model.")})
    summary = json.loads((stages / "sft" / "summary.json").read_text())
    assert summary["trainable_params"] == _lora_params(sft, rank=8)
    # AdamW's exp_avg and exp_avg_sq in fp32, for the adapters only
    assert summary["learner_optimizer_state_mb"][0] == pytest.approx(2 * _lora_params(sft, rank=8) * 4 / 2**20)


def _lora_params(folder, rank: int) -> int:
    """Adapter parameters of every linear layer of a Llama's blocks: r * (in + out) each (q, k, v, o:
    d -> d with as many kv heads as heads; gate, up: d -> ff; down: ff -> d)."""
    c = json.loads((Path(folder) / "config.json").read_text())
    d, ff = c["hidden_size"], c["intermediate_size"]
    assert c["num_key_value_heads"] == c["num_attention_heads"] and c["head_dim"] * c["num_attention_heads"] == d
    return c["num_hidden_layers"] * (4 * rank * (d + d) + 3 * rank * (d + ff))


def test_adapter_folders_load_in_peft_to_the_merged_models(stages, ppo_models):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlhf_dist.models import load_causal_lm, load_scalar_model
    from rlhf_dist.models.scalar import ScalarHeadModel, init_scalar_from_causal_lm

    sft = ppo_models[0]
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 12, 64]])
    mask = torch.ones_like(ids)
    for stage in ("sft", "dpo"):
        config = json.loads((stages / stage / "model" / "adapter" / "adapter_config.json").read_text())
        assert config["r"] == 8 and config["lora_alpha"] == 16 and config["base_model_name_or_path"] == sft
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sft), stages / stage / "model" / "adapter")
        merged = load_causal_lm(stages / stage / "model")
        with torch.no_grad():
            want = merged(input_ids=ids, attention_mask=mask).logits
            got = peft_model.eval()(input_ids=ids, attention_mask=mask).logits
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (stage, (got - want).abs().max())
    # the RM: the start model's backbone + the trained head and adapters (peft's SEQ_CLS adapter)
    base = init_scalar_from_causal_lm(sft).hf
    rm_peft = PeftModel.from_pretrained(base, stages / "rm" / "model" / "adapter").eval()
    rm = load_scalar_model(stages / "rm" / "model")
    with torch.no_grad():
        got = ScalarHeadModel(rm_peft.merge_and_unload()).values(ids, mask)
        want = rm.values(ids, mask) + rm.reward_bias  # the saved folder carries the bias that normalises rewards
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()


def _ppo(ppo_models, out, *extra):
    sft, rm, data = ppo_models
    return [EXE, "ppo", "--config", "configs/tiny.yaml", "--out", str(out), f"sft={sft}", f"reward_model={rm}",
            f"data={data}", f"iterations={ITERATIONS}", "prompts_per_iteration=16", "ppo.minibatch_size=8",
            "learner.micro_batch_size=4", "eval_prompts=8", "eval_every=2", "rollout.max_new_tokens=12",
            "optim.lr=5e-3", "critic_optim.lr=5e-3", "optim.warmup_steps=0", "save_every=2", "keep_checkpoints=1",
            *LORA, *extra]


def _metrics(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


@pytest.fixture(scope="module")
def lora_ppo(ppo_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora_ppo") / "run"
    res = subprocess.run(_ppo(ppo_models, out), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_lora_ppo_pushes_merged_weights_and_checkpoints_adapters(lora_ppo, ppo_models):
    rows = [r for r in _metrics(lora_ppo) if "objective/score" in r]
    assert len(rows) == ITERATIONS
    # vLLM samples with the pushed (merged) weights: its log-probs equal the learner's at every iteration
    assert max(r["rollout/logprob_gap_max"] for r in rows) < 1e-4
    assert all(r["policy/first_minibatch_ratio_dev_max"] < 1e-5 for r in rows)
    _only_adapted_layers_moved(_weights(ppo_models[0]), _weights(lora_ppo / "model"))
    assert (lora_ppo / "model" / "adapter" / "adapter_model.safetensors").is_file()
    assert (lora_ppo / "critic" / "adapter" / "adapter_model.safetensors").is_file()
    for role in ("policy", "critic"):
        [states] = (lora_ppo / "checkpoints").glob(f"iter_*/{role}/state/mp_rank_00_model_states.pt")
        module = torch.load(states, map_location="cpu", weights_only=False)["module"]
        assert module and all(".lora_" in k or k.startswith("hf.score.") for k in module), sorted(module)[:5]
    summary = json.loads((lora_ppo / "summary.json").read_text())
    assert summary["policy_trainable_params"] == _lora_params(ppo_models[0], rank=8)


def test_lora_ppo_killed_after_a_checkpoint_resumes_to_the_same_metrics(lora_ppo, ppo_models, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "run"
    proc = subprocess.Popen(_ppo(ppo_models, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (out / "checkpoints" / "iter_000002" / "state.json").exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(0.2)
        assert (out / "checkpoints" / "iter_000002" / "state.json").exists()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    resumed = subprocess.run(_ppo(ppo_models, out, "resume=auto"), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    assert _metrics(out) == _metrics(lora_ppo)

    def trajectories(d):
        return {p.name: pq.read_table(p).drop_columns(["worker_id"]).to_pylist() for p in sorted((d / "trajectories").glob("*"))}

    assert trajectories(out) == trajectories(lora_ppo)
    assert _weights(out / "model").keys() == _weights(lora_ppo / "model").keys()
    assert all(torch.equal(a, _weights(lora_ppo / "model")[k]) for k, a in _weights(out / "model").items())


def test_unknown_lora_target_is_refused_before_anything_starts(ppo_models, tmp_path):
    out = tmp_path / "run"
    res = subprocess.run(_ppo(ppo_models, out, "learner.lora_targets=[q_proj,c_attn]"), capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "learner.lora_targets=q_proj,c_attn: no linear layer named c_attn" in lines[0], lines
    assert not (out / "metrics.jsonl").exists()
