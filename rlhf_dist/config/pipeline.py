"""Configs of the data and pipeline commands: `task-data`, `build-model`, `label` and
`quickstart` (`make demo`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhf_dist.config.fields import DEFAULT_LABELER_TEMPERATURE, DEFAULT_TASK, param
from rlhf_dist.config.ppo import PPOConfig

# The PPO-ptx run's LM data, by `QuickstartConfig.ptx_data` (files of the task-data folder).
PTX_DATA = {"demonstrations": ["sft.jsonl"], "pretraining": ["pretrain.jsonl"], "both": ["pretrain.jsonl", "sft.jsonl"]}


@dataclass
class TaskDataConfig:
    out: str = param("", "output folder (required)")
    seed: int = param(0, "one seed for every file")
    task: str = param(DEFAULT_TASK, "module:attr or path/to/file.py:attr")
    n_pretrain: int = param(20_000, "base-model corpus: ~1M bytes, enough for a 1-5M model in minutes", ge=0)
    n_pretrain_heldout: int = param(1_000, "NLL on these measures the alignment tax", ge=0)
    n_sft: int = param(5_000, "demonstrations (InstructGPT: ~13k for 175B)", ge=0)
    tool_share: float = param(0.0, "share of demonstrations that use the task's tool; needs a task with "
                                   "`demonstrate_turns`", ge=0, le=1)
    n_rl_prompts: int = param(2_000, "PPO prompts", ge=0)
    n_eval_prompts: int = param(500, "held-out prompts for gold score and win rate", ge=0)
    n_comparisons: int = param(2_000, "ranked prompts; x C(k,2) = 12k pairs at k=4 (Gao et al.: ~2k minimum)", ge=0)
    n_comparisons_heldout: int = param(500, "RM accuracy, on held-out prompts", ge=0)
    k: int = param(4, "responses ranked per prompt (InstructGPT: 4 to 9)", ge=2)
    labeler_temperature: float = param(DEFAULT_LABELER_TEMPERATURE, "Plackett-Luce noise on gold in [0, 1]", ge=0)
    eval_fraction: float = param(0.1, "share of the prompt space kept for evaluation", gt=0, lt=1)
    n_agreement_pairs: int = param(4_000, "random pairs for the labeler-agreement statistic", ge=0)
    probe: int = param(1, "1: fit a bag-of-words RM on the comparisons and report what it rewards", ge=0, le=1)

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("missing --out DIR")


@dataclass
class BuildModelConfig:
    out: str = param("runs/base_init", "output model folder (HF format)")
    data: str = param("", "task-data folder whose pretrain.jsonl trains the tokenizer")
    size: Literal["tiny", "small"] = param("small", "model size: tiny (tests) or small (~5M, the demo)")
    vocab_size: int | None = param(None, "BPE vocabulary size, at most (incl. 256 bytes + specials; null: 1024)", ge=260)
    seed: int = param(0, "weight-init seed")


@dataclass
class LabelConfig:
    out: str = param("", "output folder (comparisons.jsonl, comparisons_heldout.jsonl)")
    policy: str = param("", "model whose samples are ranked (the SFT model)")
    data: str = param("", "task-data folder (rl_prompts.jsonl, eval_prompts.jsonl)")
    task: str = param(DEFAULT_TASK, "task whose labeler ranks (module:attr)")
    k: int = param(4, "responses ranked per prompt (InstructGPT: 4 to 9)", ge=2)
    prompts: int = param(2000, "training prompts ranked", ge=1)
    heldout_prompts: int = param(250, "held-out prompts ranked (from the end of eval_prompts.jsonl)", ge=0)
    temperature: float = param(1.0, "sampling temperature (1: the policy's own diversity)", gt=0)
    max_new_tokens: int = param(32, "response budget", ge=1)
    labeler_temperature: float = param(DEFAULT_LABELER_TEMPERATURE, "labeler noise (Bradley-Terry temperature on gold)", ge=0)
    seed: int = param(0, "sampling and labeling seed")

    def __post_init__(self) -> None:
        if not self.out or not self.policy or not self.data:
            raise ValueError("label needs out=, policy= and data=")


@dataclass
class QuickstartConfig:
    out: str = param("runs/quickstart", "run folder")
    seed: int = param(0, "seed for the task data, the models and sampling")
    task: str = param(DEFAULT_TASK, "task plug-in, module:attr or file.py:attr")
    size: Literal["tiny", "small"] = param("tiny", "model size")
    vocab_size: int | None = param(None, "BPE vocabulary of the random-init base model (null: 1024)", ge=260)
    cpus: float = param(2.0, "CPUs for the learner rank in stages 2-4", gt=0)
    pretrain_epochs: float = param(9.0, "passes over the pretraining corpus", gt=0)
    base: str = param("", "an existing base model folder (e.g. a previous run's base/model) to start from instead of "
                          "pretraining; it must have been pretrained on the same task's corpus")
    sft_epochs: float = param(6.0, "passes over the demonstrations", gt=0)
    rm_data: Literal["policy", "task"] = param("policy", "RM rankings: policy (the labeler ranks SFT samples) or task "
                                                         "(the task's comparisons)")
    rank_k: int = param(8, "SFT samples ranked per prompt (InstructGPT: 4 to 9)", ge=2)
    rank_prompts: int = param(3000, "prompts whose SFT samples are ranked (the RL prompts, at least this many)", ge=1)
    rm_epochs: float = param(1.0, "passes over the rankings (InstructGPT: 1)", gt=0)
    ppo_config: str = param("configs/tiny.yaml", "base config of the PPO runs")
    ppo_iterations: int = param(40, "PPO iterations (each run)", ge=1)
    ppo_overrides: list[str] = param([], "extra key=value (`rlhf-dist ppo` keys) for both PPO runs and the "
                                         "over-optimisation runs, on top of ppo_config", overrides_of=PPOConfig)
    ptx_coef: float = param(0.5, "gamma of the PPO-ptx run", ge=0)
    ptx_ratio: float = param(1.0, "ptx sequences per RL episode in the PPO-ptx run", gt=0)
    # InstructGPT mixes pretraining data to keep general skills; here the skill PPO erodes is the
    # task itself (answers cut short when the RM cannot check them), which only the
    # demonstrations teach (docs/results.md, "ptx data").
    ptx_data: Literal["demonstrations", "pretraining", "both"] = param(
        "demonstrations", "what the PPO-ptx run's LM term trains on: data/sft.jsonl, data/pretrain.jsonl or both")
    eval_prompts: int = param(500, "held-out prompts for the evaluation (at most the task data's eval prompts)", ge=1)
    temperature: float = param(0.7, "sampling temperature of the rollouts (rankings, PPO, over-optimisation)", gt=0)
    eval_temperature: float = param(0.5, "sampling temperature of the evaluation, the same for every model "
                                         "(a trained policy is deployed cooler than it explored)", gt=0)
    max_new_tokens: int = param(32, "response budget", ge=1)
    overopt: bool = param(True, "run the over-optimisation study")
    overopt_kl_coefs: list[float] = param([0.0], "KL coefficients of its PPO runs", ge=0)
    overopt_iterations: int = param(60, "iterations of its PPO runs", ge=1)
    overopt_eval_every: int = param(10, "iterations between the held-out evaluations of its PPO runs", ge=1)
    bon_n: list[int] = param([1, 2, 4, 8, 16], "best-of-n values", ge=1)
