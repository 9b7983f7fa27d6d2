"""The architecture matrix through the commands. For Qwen2 (tied embeddings, attention biases),
Mistral, Gemma (tied) and GPT-2 (tied, learned positions) (Llama: the other command tests), tiny random configs built here
from transformers' config classes (`tests/test_models_architectures.py`) run through the
`rlhf-dist` entry point (`cli.main`, in process) as a user runs them, on one small task-data folder:

    sft -> rm -> dpo -> ppo (GAE: critic from the RM; or GRPO: no critic) -> eval

- every command exits 0 and writes its model folder with the architecture's config; the training
  losses are finite; the trained policies' weights (DPO, PPO) differ from the SFT model's, under
  the same names (tied embeddings stay tied: no separate LM head is written);
- PPO pushes the learner's weights into vLLM after each iteration, and vLLM's log-probs of the next
  iteration's samples equal the learner's (`rollout/logprob_gap_max` < 1e-3, fp32): the push maps
  each architecture's names, tied embeddings included;
- eval samples each policy in one vLLM engine (weights swapped between policies): the KL it writes
  per sample equals an independent transformers computation of the same sample, so the engine held
  each policy's weights;
- Qwen2 carries a ChatML template and Gemma its `<start_of_turn>` template (turn markers added as
  special tokens, as in the released tokenizers): the prompts the rollout workers and eval sampled
  from are exactly the template's rendering of each prompt.

Each architecture runs one of the two PPO estimators (GAE, GRPO alternate; both reach every
architecture-dependent part: the policy's forward, update and push; the scalar head trains in
`rm` and, with GAE, as the critic). One PPO run per architecture rather than two: PPO is the
costliest command here (about 25-35 s on 2 cores, most of it the roles' process and engine
start-up), and the matrix is about 2 minutes per architecture in all."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("ray")
pytest.importorskip("vllm")

REPO = Path(__file__).resolve().parents[1]
# architecture -> the PPO estimator it runs (GAE and GRPO each on tied and untied embeddings, each
# with one chat template)
# Llama, the built-in task's architecture, runs through every command and estimator in the other
# command tests (test_recipes_stages, test_recipes_dpo, test_recipes_ppo, test_evaluation_evaluate).
PPO = {"qwen2": "grpo", "mistral": "grpo", "gemma": "gae", "gpt2": "gae"}
ITERATIONS = 2  # the second iteration samples with weights pushed after the first
EVAL_PROMPTS, EVAL_TEMPERATURE = 4, 0.7

# Chat templates of the released tokenizers' kind, trimmed to the user and assistant turns.
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
GEMMA = ("{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
         "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
         "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
TEMPLATES = {"qwen2": (CHATML, ["<|im_start|>", "<|im_end|>"], "<|im_start|>assistant\n"),
             "gemma": (GEMMA, ["<start_of_turn>", "<end_of_turn>"], "<start_of_turn>model\n")}


def cli(*args) -> None:
    from rlhf_dist import cli as rlhf_cli

    rc = rlhf_cli.main([str(a) for a in args])
    assert rc == 0, f"rlhf-dist {args[0]} exited {rc}"


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def one_ray(ray_local):
    """The module's Ray instance serves every command. `rlhf-dist` stops Ray after each command
    (`cli._stop_local_ray`); a local instance's start and stop per command cost ~7 s each on 2
    cores, minutes over the matrix. A command joins a running Ray (`runtime.ensure_ray`), as the
    runs of `rlhf-dist compare` share one."""
    from rlhf_dist import cli as rlhf_cli

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rlhf_cli, "_stop_local_ray", lambda: None)
        yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("arch_data") / "data"
    cli("task-data", "--out", out, "n_pretrain=32", "n_pretrain_heldout=8", "n_sft=32", "n_rl_prompts=32",
        "n_eval_prompts=8", "n_comparisons=16", "n_comparisons_heldout=8", "n_agreement_pairs=20", "probe=0")
    return out


def build_model(arch: str, tiny_model_dir, out: Path) -> Path:
    """A random-init model of `arch` with the tiny BPE tokenizer; for Qwen2 and Gemma with their
    chat template, its turn markers added as special tokens (the vocabulary grows by two)."""
    from transformers import AutoModelForCausalLM

    from rlhf_dist.models import load_tokenizer
    from tests.test_models_architectures import _configs

    tok = load_tokenizer(tiny_model_dir)
    if arch in TEMPLATES:
        template, markers, _ = TEMPLATES[arch]
        tok.add_special_tokens({"additional_special_tokens": markers})
        tok.chat_template = template
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(_configs(tok)[arch]).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=list(PPO))
def pipeline(request, one_ray, tiny_model_dir, data_dir, tmp_path_factory):
    """(arch, root): root/{sft,rm,dpo,ppo,eval} written by the commands, in order."""
    arch, estimator = request.param, PPO[request.param]
    root = tmp_path_factory.mktemp(f"cmd_{arch}")
    init = build_model(arch, tiny_model_dir, root / "init")
    stage = [f"data={data_dir}", "batch_size=8", "learner.micro_batch_size=8", "learner.cpus_per_rank=1",
             "log_every=1", "eval_every=0"]
    sft, rm = root / "sft" / "model", root / "rm" / "model"
    cli("sft", "--out", root / "sft", f"init={init}", "epochs=1", "gold_prompts=0", *stage)
    cli("rm", "--out", root / "rm", f"init={sft}", *stage)
    cli("dpo", "--out", root / "dpo", f"init={sft}", "optim.lr=1e-3", *stage)
    rows = ["prompts_per_iteration=8"] if estimator == "gae" else [
        "prompts_per_iteration=4", "rollout.samples_per_prompt=2", "ppo.kl_coef=0"]
    cli("ppo", "--config", REPO / "configs" / "tiny.yaml", f"out={root / 'ppo'}", f"sft={sft}", f"reward_model={rm}",
        f"data={data_dir}", f"ppo.advantage={estimator}", *rows, f"iterations={ITERATIONS}", "ppo.minibatch_size=8",
        "ppo.epochs=1", "eval_prompts=0", "max_prompt_len=96", "rollout.max_new_tokens=8",
        "reference.colocate_with_reward=true", "optim.lr=1e-3", "critic_optim.lr=1e-3", "optim.warmup_steps=0",
        "critic_optim.warmup_steps=0")
    cli("eval", "--out", root / "eval", f"data={data_dir}", f"reward_model={rm}", f"models.sft={sft}",
        f"models.dpo={root / 'dpo' / 'model'}", f"models.ppo={root / 'ppo' / 'model'}", f"prompts={EVAL_PROMPTS}",
        f"temperature={EVAL_TEMPERATURE}", "max_new_tokens=8", "pretrain_texts=4")
    return arch, root


@pytest.mark.slow
def test_every_command_writes_its_model_with_finite_losses(pipeline):
    arch, root = pipeline
    for stage in ("sft", "rm", "dpo", "ppo"):
        model = root / stage / "model"
        assert (model / "config.json").is_file() and (model / "tokenizer.json").is_file(), (arch, stage)
        assert json.loads((model / "config.json").read_text())["model_type"] == arch, (arch, stage)
    for stage in ("sft", "rm", "dpo"):
        losses = [r["train/loss"] for r in metrics(root / stage) if "train/loss" in r]
        assert losses and all(math.isfinite(x) for x in losses), (arch, stage, losses)
    critic = root / "ppo" / "critic" / "config.json"
    assert critic.is_file() == (PPO[arch] == "gae"), arch  # GRPO builds no critic
    if critic.is_file():
        assert json.loads(critic.read_text())["model_type"] == arch


@pytest.mark.slow
def test_ppo_vllm_logprobs_equal_the_learners_after_weight_pushes(pipeline):
    arch, root = pipeline
    recs = [r for r in metrics(root / "ppo") if "objective/score" in r]
    assert len(recs) == ITERATIONS, arch
    for r in recs:
        assert r["rollout/logprob_gap_max"] < 1e-3, (arch, r["rollout/logprob_gap_max"])
        losses = {k: v for k, v in r.items() if k.startswith("loss/")}
        assert "loss/policy" in losses and ("loss/value" in losses) == (PPO[arch] == "gae"), (arch, losses)
        assert all(math.isfinite(v) for v in losses.values()), (arch, losses)


@pytest.mark.slow
def test_trained_policies_differ_from_the_sft_model(pipeline):
    arch, root = pipeline
    sft = weights(root / "sft" / "model")
    tied = json.loads((root / "sft" / "model" / "config.json").read_text()).get("tie_word_embeddings", False)
    assert tied == (arch in ("qwen2", "gemma", "gpt2")), arch
    for stage in ("dpo", "ppo"):
        w = weights(root / stage / "model")
        assert set(w) == set(sft), (arch, stage, set(w) ^ set(sft))
        assert ("lm_head.weight" in w) != tied, (arch, stage)  # tied: the embedding is the LM head
        moved = max((w[k].float() - sft[k].float()).abs().max().item() for k in sft)
        assert moved > 1e-6, (arch, stage)


def _response_logprob(model, prompt_ids, response_ids, temperature) -> float:
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1 : -1].double() / temperature
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(response_ids).unsqueeze(1)).sum().item()


@pytest.mark.slow
def test_eval_writes_every_policys_numbers_from_its_own_weights(pipeline):
    from transformers import AutoModelForCausalLM

    arch, root = pipeline
    report = json.loads((root / "eval" / "eval.json").read_text())
    assert list(report["models"]) == ["sft", "dpo", "ppo"]
    for name, m in report["models"].items():
        for key in ("gold_score", "proxy_score", "kl_to_sft", "pretrain_nll", "win_rate_vs_sft"):
            assert math.isfinite(m[key]), (arch, name, key)
    assert math.isfinite(report["rm_accuracy"])
    rows = [json.loads(line) for line in (root / "eval" / "eval_samples.jsonl").read_text().splitlines()]
    models = {name: AutoModelForCausalLM.from_pretrained(root / name / "model", dtype=torch.float32).eval()
              for name in ("sft", "dpo", "ppo")}
    for name in models:
        kls = []
        for r in (r for r in rows if r["model"] == name):
            kl = (_response_logprob(models[name], r["prompt_ids"], r["response_ids"], EVAL_TEMPERATURE)
                  - _response_logprob(models["sft"], r["prompt_ids"], r["response_ids"], EVAL_TEMPERATURE))
            assert r["kl_to_sft"] == pytest.approx(kl, abs=1e-4), (arch, name, r["index"])
            kls.append(kl)
        assert len(kls) == EVAL_PROMPTS
        assert report["models"][name]["kl_to_sft"] == pytest.approx(sum(kls) / EVAL_PROMPTS, abs=1e-4)


@pytest.mark.slow
def test_chat_templates_render_the_prompts_that_were_sampled(pipeline, data_dir):
    """Independently of the code under test: each prompt rendered by transformers'
    apply_chat_template and tokenized without adding special tokens; the rollout's (trajectories)
    and eval's (eval_samples.jsonl) prompt ids are exactly these."""
    arch, root = pipeline
    if arch not in TEMPLATES:
        pytest.skip(f"{arch}: no chat template (prompts are the prompt and a newline)")
    from transformers import AutoTokenizer

    from rlhf_dist.buffer import read_trajectories
    from rlhf_dist.data import load_prompts

    template, markers, generation_prompt = TEMPLATES[arch]
    for stage in ("sft", "rm", "dpo", "ppo"):  # saved with every command's model folder
        assert AutoTokenizer.from_pretrained(root / stage / "model").chat_template == template, (arch, stage)
    tok = AutoTokenizer.from_pretrained(root / "ppo" / "model")
    marker_ids = tok.convert_tokens_to_ids(markers)
    for marker, i in zip(markers, marker_ids):  # added tokens: one id each, not pieces of the BPE's
        assert tok(marker, add_special_tokens=False).input_ids == [i] and i >= len(tok) - len(markers)

    def rendered(prompt) -> list[int]:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
        assert text.endswith(generation_prompt)
        return tok(text, add_special_tokens=False).input_ids

    prompts = load_prompts(data_dir / "rl_prompts.jsonl")
    table = read_trajectories(root / "ppo" / "trajectories")
    assert table.num_rows == ITERATIONS * 8
    for i, ids in zip(table.column("prompt_id").to_pylist(), table.column("prompt_ids").to_pylist()):
        assert ids == rendered(prompts[i]), (arch, i)
        assert ids.count(marker_ids[0]) == 2  # the user turn and the generation prompt
        if "bos_token" in template:  # the template writes BOS: once, not once more by the tokenizer
            assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    for row in map(json.loads, (root / "eval" / "eval_samples.jsonl").read_text().splitlines()):
        assert row["prompt_ids"] == rendered(row["prompt"]), (arch, row["model"], row["index"])
