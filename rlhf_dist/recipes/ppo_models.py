"""The models a PPO run starts from when none are given: `find_or_build_models` fills in `sft=`,
`reward_model=` and `data=` from the folder `models=`, building them there once with the real
stages (task data -> pretrain -> SFT -> RM on the learner group) when missing.

    rlhf-dist ppo --config configs/tiny.yaml          # sft/reward_model empty: runs/tiny_models
"""

from __future__ import annotations

from pathlib import Path

from rlhf_dist.config import derive
from rlhf_dist.config.pipeline import TaskDataConfig
from rlhf_dist.config.ppo import PPOConfig
from rlhf_dist.config.stages import PretrainConfig, RMConfig, SFTConfig


def find_or_build_models(cfg: PPOConfig) -> PPOConfig:
    """A `PPOConfig` with `sft`, `reward_model` (where the run reads one: `reads_reward_model`) and
    `data` filled in from `cfg.models` when empty; the models are built there once when missing.
    A given `sft=`/`reward_model=`/`data=` wins."""
    from rlhf_dist.recipes.stages import pretrain, rm, sft
    from rlhf_dist.recipes.task_data import write_task_data

    needs_rm = cfg.reads_reward_model
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
    rm_path = cfg.reward_model or (str(rm_dir) if needs_rm else "")
    return derive(cfg, sft=cfg.sft or str(sft_dir), reward_model=rm_path, data=cfg.data or str(data))
