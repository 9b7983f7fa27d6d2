"""Config of `rlhf-dist compare`: several RL methods from one SFT model and reward model, each
trained into its own folder, then evaluated together against SFT."""

from __future__ import annotations

import re
from dataclasses import dataclass

from rlhf_dist.config.fields import DEFAULT_TASK, param
from rlhf_dist.config.ppo import PPOConfig
from rlhf_dist.config.stages import DPOConfig

# Names the command gives folders or models of its own: a method may not take them.
RESERVED_NAMES = ("sft", "eval")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass
class CompareConfig:
    out: str = param("runs/compare", "output folder, owned by the command: DIR/<method> (each run overwritten), DIR/eval, "
                                     "compare.json, compare.md, compare.png")
    from_run: str = param("", "a finished `rlhf-dist quickstart` folder: its sft/model, rm/model, data/ and rankings/ "
                              "(rankings/ absent: data/) fill in sft=, reward_model=, data= and rankings= left empty")
    sft: str = param("", "SFT model folder: every method's start, the KL reference and the win-rate baseline")
    reward_model: str = param("", "reward model folder: the RM methods' reward, every GAE critic's start, the eval's proxy")
    data: str = param("", "task-data folder (rl_prompts.jsonl, eval_prompts.jsonl, pretrain_heldout.jsonl)")
    rankings: str = param("", "folder with the rm stage's comparison files (comparisons.jsonl, comparisons_heldout.jsonl): "
                              "DPO's data and the eval's RM accuracy (default: data)")
    task: str = param(DEFAULT_TASK, "task plug-in whose labeler and gold scorer evaluate (module:attr or file.py:attr)")
    ppo_config: str = param("configs/tiny.yaml", "base config of every PPO method")
    iterations: int = param(40, "PPO iterations of every method (a method's own `iterations=` wins)", ge=1)
    ppo_overrides: list[str] = param([], "key=value for every PPO method, before the method's own", overrides_of=PPOConfig)
    methods: dict[str, list[str]] = param({"ppo": []}, "method name -> its PPO key=value overrides on top of ppo_config: "
                                                        "methods.grpo=[ppo.advantage=grpo,rollout.samples_per_prompt=4]",
                                                        overrides_of=PPOConfig)
    only: list[str] = param([], "train and evaluate only these methods (names of methods, or dpo); empty: all")
    dpo: bool = param(False, "also train DPO from the SFT model on the rankings (the method named dpo)")
    dpo_overrides: list[str] = param([], "key=value for the DPO stage (`rlhf-dist dpo --help`)", overrides_of=DPOConfig)
    rm_counterpart: str = param("ppo", "the RM-trained method whose correctness the verifiable-reward methods "
                                       "(reward_source fn, rm+fn, gold) are compared with, besides SFT")
    cpus: float = param(2.0, "CPUs of the DPO stage's learner rank (the PPO methods take theirs from ppo_config)", gt=0)
    temperature: float = param(0.7, "sampling temperature of the PPO rollouts", gt=0)
    eval_prompts: int = param(500, "held-out prompts of the evaluation (at most the task data's eval prompts)", ge=1)
    eval_temperature: float = param(0.5, "sampling temperature of the evaluation, the same for every model", gt=0)
    max_new_tokens: int = param(32, "response budget (rollouts and evaluation)", ge=1)
    seed: int = param(0, "seed of every run and of the evaluation")
    env: str = param("", "environment 'module:attr' or 'file.py:attr' (docs/environments.md): every PPO method trains "
                         "on episodes in it (a method's own env= wins) and every model is evaluated on episodes in it, "
                         "with ppo_config's rollout limits")

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("missing --out DIR")
        names = list(self.methods) + (["dpo"] if self.dpo else [])
        for name in self.methods:
            if not _NAME.fullmatch(name):
                raise ValueError(f"methods.{name}: a method name is a folder name (letters, digits, _ and -)")
            if name in RESERVED_NAMES:
                raise ValueError(f"methods.{name}: '{name}' is reserved ({', '.join(RESERVED_NAMES)} are the command's own)")
            if name == "dpo" and self.dpo:
                raise ValueError("methods.dpo: with dpo=true the name dpo is the DPO stage's; rename the PPO method")
        unknown = [n for n in self.only if n not in names]
        if unknown:
            raise ValueError(f"only: {', '.join(unknown)} not among the methods ({', '.join(names) or 'none'})")
        if not self.selected():
            raise ValueError("nothing to compare: give methods.NAME=[key=value,...] or dpo=true")

    def selected(self) -> list[str]:
        """The methods this run trains, in order (the PPO methods as listed, then dpo)."""
        names = list(self.methods) + (["dpo"] if self.dpo else [])
        return [n for n in names if not self.only or n in self.only]
