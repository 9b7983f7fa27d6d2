"""Build the tiny base model's starting point: a BPE tokenizer trained on a task's pretraining
corpus and a random-init Llama of a named size, saved as one Hugging Face folder.

    rlhf-dist build-model --out runs/base_init data=runs/demo/data size=small

Also the models a PPO run needs when none are given: `find_or_build_models` (tiny SFT and RM
built once with the real stages) and `placeholder_ppo_models` (seconds, for tests and benchmarks).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from rlhf_dist.config import derive, parse_cli
from rlhf_dist.config.pipeline import BuildModelConfig, TaskDataConfig


def build_model(cfg: BuildModelConfig) -> Path:
    from rlhf_dist.data import load_texts
    from rlhf_dist.models import TINY_SIZES, save_tiny_model

    if not cfg.data:
        raise ValueError("data=: give the task-data folder (write one with `rlhf-dist task-data --out DIR`)")
    texts = load_texts(Path(cfg.data) / "pretrain.jsonl")
    out = save_tiny_model(cfg.out, texts, TINY_SIZES[cfg.size], vocab_size=cfg.vocab_size, seed=cfg.seed)
    (out / "rlhf_dist_build.json").write_text(json.dumps(asdict(cfg), indent=2))
    return out


def placeholder_ppo_models(root: str | Path, sft_dir: str | Path) -> tuple[str, str, str]:
    """What a PPO run needs, built in seconds, for tests and benchmarks: (sft, rm, data).

    `sft_dir` (any causal LM folder with its tokenizer) stands in for the SFT model; the RM is its
    backbone with a fresh scalar head (a random reward model), tokenizer included; the data are
    the built-in task's files at small counts. Quality is irrelevant: these exercise machinery.
    """
    from rlhf_dist.models import init_scalar_from_causal_lm, load_tokenizer
    from rlhf_dist.recipes.task_data import write_task_data

    root = Path(root)
    rm_dir = root / "rm"
    init_scalar_from_causal_lm(sft_dir, seed=1).save_pretrained(rm_dir)
    load_tokenizer(sft_dir).save_pretrained(rm_dir)
    data = root / "data"
    write_task_data(TaskDataConfig(out=str(data), seed=0, n_pretrain=400, n_pretrain_heldout=50, n_sft=50, n_rl_prompts=200,
                                   n_eval_prompts=40, n_comparisons=20, n_comparisons_heldout=10, n_agreement_pairs=100,
                                   probe=0), quiet=True)
    return str(sft_dir), str(rm_dir), str(data)


def find_or_build_models(cfg):
    """A `PPOConfig` with `sft`, `reward_model` and `data` filled in from `cfg.models` when empty;
    the models are built there once when missing (task data -> pretrain -> SFT -> RM on the
    learner group). A given `sft=`/`reward_model=`/`data=` wins."""
    from rlhf_dist.config.stages import PretrainConfig, RMConfig, SFTConfig
    from rlhf_dist.recipes.stages import pretrain, rm, sft
    from rlhf_dist.recipes.task_data import write_task_data

    # A reward model is read for the reward (rm, rm+fn) and as the critic's start (GAE without critic=).
    needs_rm = cfg.reward_source in ("rm", "rm+fn") or (cfg.ppo.advantage == "gae" and not cfg.critic)
    if cfg.sft and (cfg.reward_model or not needs_rm):
        return cfg
    root = Path(cfg.models)
    data, sft_dir, rm_dir = root / "data", root / "sft" / "model", root / "rm" / "model"
    ready = lambda d: (d / "config.json").is_file() and (d / "tokenizer.json").is_file()  # noqa: E731
    if not (ready(Path(cfg.sft or sft_dir)) and (ready(Path(cfg.reward_model or rm_dir)) or not needs_rm)
            and (cfg.data or (data / "manifest.json").exists())):
        print(f"   no SFT/RM models in {root}: building them once (task data -> pretrain -> SFT -> RM, "
              f"{cfg.build_size} size)", flush=True)
        if not (data / "manifest.json").exists():
            write_task_data(TaskDataConfig(out=str(data), seed=cfg.seed, task=cfg.task, probe=0), quiet=True)
        common = dict(data=str(data), seed=cfg.seed, ray_address=cfg.ray_address, eval_every=0, overwrite=True,
                      learner={"cpus_per_rank": cfg.learner.cpus_per_rank})
        base = pretrain(derive(PretrainConfig(out=str(root / "base")), size=cfg.build_size, **common))
        tuned = sft(derive(SFTConfig(out=str(root / "sft")), init=base["model"], task=cfg.task, gold_prompts=0, **common))
        rm(derive(RMConfig(out=str(root / "rm")), init=tuned["model"], task=cfg.task, **common))
    rm_path = cfg.reward_model or (str(rm_dir) if needs_rm or ready(rm_dir) else "")
    return derive(cfg, sft=cfg.sft or str(sft_dir), reward_model=rm_path, data=cfg.data or str(data))


def main(argv: list[str]) -> int:
    cfg = parse_cli(BuildModelConfig, argv, "rlhf-dist build-model", __doc__)
    out = build_model(cfg)
    print(f"saved tokenizer + random-init {cfg.size} Llama to {out}")
    return 0
