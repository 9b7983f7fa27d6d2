"""Configs of the measuring commands: `eval`, `overopt` and `report`."""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_dist.config.ppo import PPOConfig
from rlhf_dist.config.fields import DEFAULT_LABELER_TEMPERATURE, DEFAULT_TASK, param


@dataclass
class EvalConfig:
    out: str = param("", "folder for eval.json and eval_samples.jsonl (required)")
    models: dict[str, str] = param({}, "name -> model folder: models.sft=DIR models.ppo=DIR ...")
    baseline: str = param("sft", "the model win rates and KL are measured against (a key of models)")
    reward_model: str = param("", "RM folder for proxy scores and RM accuracy (empty: skip both)")
    data: str = param("", "task-data folder (eval_prompts.jsonl, pretrain_heldout.jsonl, comparisons_heldout.jsonl)")
    prompts_file: str = param("", "held-out prompts (default: DATA/eval_prompts.jsonl); each file may also be "
                                  "Parquet or a dataset folder (FOLDER#SPLIT), as ppo's prompts_file")
    pretrain_file: str = param("", "held-out pretraining texts (default: DATA/pretrain_heldout.jsonl)")
    comparisons_file: str = param("", "held-out rankings (default: DATA/comparisons_heldout.jsonl)")
    task: str = param(DEFAULT_TASK, "task whose gold scorer is the labeler (module:attr)")
    prompts: int = param(200, "held-out prompts sampled per model (the first N of the file)", ge=1)
    temperature: float = param(0.7, "sampling temperature; KL uses pi_T at the same T", gt=0)
    max_new_tokens: int = param(48, "response budget", ge=1)
    seed: int = param(0, "sampling seed (the same for every model) and the labeler's verdicts")
    pretrain_texts: int = param(200, "held-out pretraining texts for the NLL (0: skip)", ge=0)
    pretrain_max_len: int = param(96, "token window for those texts (pretrain's max_len)", ge=2)
    rm_max_len: int = param(128, "token budget of a ranked response with its prompt (rm's max_len)", ge=2)
    labeler_temperature: float = param(DEFAULT_LABELER_TEMPERATURE, "Bradley-Terry noise of the labeler's verdicts (0: gold order)", ge=0)
    micro_batch_size: int = param(16, "sequences per forward pass (KL, NLL, RM)", ge=1)
    env: str = param("", "environment 'module:attr' or 'path/to/file.py:attr': every model runs one episode per prompt "
                         "(max_new_tokens per turn); gold and the labeler read each episode's last turn")
    max_turns: int = param(4, "with env=: policy turns per episode", ge=1)
    max_episode_tokens: int = param(128, "with env=: tokens after the prompt, the policy's and the observations", ge=1)
    env_timeout_s: float = param(30.0, "with env=: seconds an environment's reset or step may take", gt=0)
    env_workers: int = param(2, "with env=: environment processes", ge=1)

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("missing --out DIR")
        if not self.models:
            raise ValueError("no models: give models.NAME=FOLDER (e.g. models.sft=runs/sft/model models.ppo=runs/ppo/model)")
        for name, path in self.models.items():
            if not isinstance(path, str) or not path:
                raise ValueError(f"models.{name}: expected a model folder, got {path!r}")
        if self.baseline not in self.models:
            raise ValueError(f"baseline={self.baseline!r} is not one of the models ({', '.join(self.models)})")


@dataclass
class OveroptConfig:
    out: str = param("runs/overopt", "output folder")
    sft: str = param("", "SFT model folder (the starting policy and KL reference)")
    reward_model: str = param("", "the proxy reward model folder")
    data: str = param("", "task-data folder (rl_prompts.jsonl, eval_prompts.jsonl)")
    task: str = param(DEFAULT_TASK, "task whose gold scorer is the ground truth")
    kl_coefs: list[float] = param([0.0, 0.05, 0.2], "PPO runs, one per KL coefficient", ge=0)
    iterations: int = param(40, "PPO iterations per run", ge=1)
    eval_every: int = param(5, "iterations between held-out evaluations (points on the curve)", ge=1)
    eval_prompts: int = param(128, "held-out prompts per evaluation and for best-of-n", ge=1)
    bon_n: list[int] = param([1, 2, 4, 8, 16], "best-of-n values (N = the largest)", ge=1)
    ppo_config: str = param("configs/tiny.yaml", "base config file of the PPO runs")
    ppo_overrides: list[str] = param([], "extra key=value (`rlhf-dist ppo` keys) for every PPO run", overrides_of=PPOConfig)
    temperature: float = param(0.7, "sampling temperature (PPO rollouts and best-of-n)", gt=0)
    max_new_tokens: int = param(32, "response budget", ge=1)
    seed: int = param(0, "seed")

    def __post_init__(self) -> None:
        if not self.sft or not self.reward_model or not self.data:
            raise ValueError("overopt needs sft=, reward_model= and data=")
        if not self.bon_n:
            raise ValueError("bon_n: give at least one n")


@dataclass
class ReportConfig:
    out: str = param("runs/quickstart", "run folder to report on (report.html goes there)")
