"""Configs of the learner-group stages: `pretrain`, `sft` and `rm` (a shared `StageConfig`, each
stage with its own defaults)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhf_dist.config.data_columns import DataColumnsConfig
from rlhf_dist.config.fields import DEFAULT_TASK, DEFAULT_VOCAB_SIZE, param
from rlhf_dist.config.learner import LearnerConfig, OptimConfig
from rlhf_dist.config.logging import LogConfig


@dataclass
class StageConfig:
    """Fields shared by every training stage (each stage subclasses it with its own defaults)."""

    out: str = param("", "run folder (required)")
    init: str = param("", "model folder to start from (HF format, with tokenizer)")
    train_file: str = param("", "training data: JSONL, JSON, Parquet, or a folder of Parquet shards or from "
                                "datasets' save_to_disk (FOLDER#SPLIT picks a split; default train)")
    eval_file: str = param("", "held-out data (as train_file); empty: hold out eval_fraction of train_file")
    eval_fraction: float = param(0.05, "share of train_file held out when eval_file is empty", gt=0, lt=1)
    seed: int = param(0, "data order and initialisation seed")
    epochs: float = param(1.0, "passes over the training data", gt=0)
    batch_size: int = param(32, "global batch (sequences, or prompts for rm) per optimizer step", ge=1)
    max_len: int = param(128, "token budget per sequence (prompt + response)", ge=2)
    max_prompt_len: int | None = param(None, "token budget for the prompt (default: what fits)", ge=1)
    truncation: Literal["middle", "skip", "error"] = param("middle", "over-long prompts: cut in the middle, skip, or error")
    log_every: int = param(10, "steps between metric lines", ge=1)
    eval_every: int = param(100, "steps between evaluations (0: only at the end)", ge=0)
    save_every: int = param(0, "steps between checkpoints (weights, optimizer, LR schedule, step; 0: none)", ge=0)
    keep_checkpoints: int = param(2, "newest checkpoints kept", ge=1)
    resume: Literal["never", "auto"] = param("never", "auto: continue the run in `out` from its newest complete checkpoint")
    overwrite: bool = param(False, "start over in an `out` that holds a run (its run files are removed)")
    ray_address: str = param("", "Ray cluster address; empty: $RAY_ADDRESS or a local Ray")
    learner: LearnerConfig = param(LearnerConfig(), "learner group")
    optim: OptimConfig = param(OptimConfig(), "optimizer")
    columns: DataColumnsConfig = param(DataColumnsConfig(), "the data files' column names, where not the standard ones")
    log: LogConfig = param(LogConfig(), "experiment trackers")

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("missing --out DIR")


@dataclass
class PretrainConfig(StageConfig):
    data: str = param("", "task-data folder (pretrain.jsonl, pretrain_heldout.jsonl)")
    size: Literal["tiny", "small"] = param("small", "with no init: size of the random-init model")
    vocab_size: int = param(DEFAULT_VOCAB_SIZE, "with no init: BPE vocabulary size (at most)", ge=260)
    epochs: float = 1.0
    batch_size: int = 64
    max_len: int = 96
    optim: OptimConfig = param(OptimConfig(lr=3e-3, warmup_steps=20, min_lr_ratio=0.1), "optimizer")
    learner: LearnerConfig = param(LearnerConfig(micro_batch_size=32), "learner group")


@dataclass
class SFTConfig(StageConfig):
    data: str = param("", "task-data folder (sft.jsonl, eval_prompts.jsonl)")
    task: str = param(DEFAULT_TASK, "task whose gold scorer grades samples (module:attr)")
    gold_prompts: int = param(200, "held-out prompts sampled to compare gold of init vs SFT (0: skip)", ge=0)
    gold_temperature: float = param(0.7, "sampling temperature for that comparison", gt=0)
    max_new_tokens: int = param(48, "response budget when sampling", ge=1)
    epochs: float = 2.0
    batch_size: int = 32
    optim: OptimConfig = param(OptimConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1), "optimizer")
    learner: LearnerConfig = param(LearnerConfig(micro_batch_size=16), "learner group")


@dataclass
class RMConfig(StageConfig):
    data: str = param("", "task-data folder (comparisons.jsonl, comparisons_heldout.jsonl)")
    task: str = param(DEFAULT_TASK, "task whose gold scorer gives the labeler's ceiling (module:attr)")
    epochs: float = 1.0  # InstructGPT C.2: one epoch; more overfits
    batch_size: int = 32  # prompts per step; every C(K,2) pair of a prompt in one batch element
    optim: OptimConfig = param(OptimConfig(lr=1e-3, warmup_steps=5, min_lr_ratio=0.1), "optimizer")
    learner: LearnerConfig = param(LearnerConfig(micro_batch_size=8), "learner group")


@dataclass
class DPOConfig(StageConfig):
    data: str = param("", "task-data folder (comparisons.jsonl, comparisons_heldout.jsonl), the files rm reads")
    ref: str = param("", "frozen reference policy of the implicit reward (default: init)")
    beta: float = param(0.1, "KL strength of the implicit reward beta * log(pi / pi_ref) (DPO eq. 7)", gt=0)
    epochs: float = 1.0
    batch_size: int = 32  # prompts per step; every C(K,2) pair of a prompt in one batch element, as for rm
    optim: OptimConfig = param(OptimConfig(lr=3e-4, warmup_steps=5, min_lr_ratio=0.1), "optimizer")
    learner: LearnerConfig = param(LearnerConfig(micro_batch_size=8), "learner group")
