"""Stages 0-2 of the recipe on the DeepSpeed learner group: `pretrain`, `sft` and `rm`.

    rlhf-dist pretrain --out runs/base data=runs/data            # the stand-in for GPT-3
    rlhf-dist sft      --out runs/sft  data=runs/data init=runs/base/model
    rlhf-dist rm       --out runs/rm   data=runs/data init=runs/sft/model
    ... learner.num_ranks=2 learner.zero_stage=3 optim.lr=3e-4 epochs=2 ...

`data=DIR` points at a task-data folder (`rlhf-dist task-data`) and fills in the standard file
names; `train_file=`/`eval_file=` name files directly (JSONL or Parquet, schemas in the README).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_dist.config import parse_cli
from rlhf_dist.engines.deepspeed_engine import LearnerConfig, OptimConfig
from rlhf_dist.models.tokenizer import DEFAULT_VOCAB_SIZE
from rlhf_dist.recipes.train_stage import StageConfig, run_stage, split_eval
from rlhf_dist.tasks.base import DEFAULT_TASK


@dataclass
class PretrainConfig(StageConfig):
    data: str = field(default="", metadata={"help": "task-data folder (pretrain.jsonl, pretrain_heldout.jsonl)"})
    size: str = field(default="small", metadata={"help": "with no init: size of the random-init model (tiny|small)"})
    vocab_size: int = field(default=DEFAULT_VOCAB_SIZE, metadata={"help": "with no init: BPE vocabulary size (at most)"})
    epochs: float = 1.0
    batch_size: int = 64
    max_len: int = 96
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3, warmup_steps=20, min_lr_ratio=0.1))
    learner: LearnerConfig = field(default_factory=lambda: LearnerConfig(micro_batch_size=32))


@dataclass
class SFTConfig(StageConfig):
    data: str = field(default="", metadata={"help": "task-data folder (sft.jsonl, eval_prompts.jsonl)"})
    task: str = field(default=DEFAULT_TASK, metadata={"help": "task whose gold scorer grades samples (module:attr)"})
    gold_prompts: int = field(default=200, metadata={"help": "held-out prompts sampled to compare gold of init vs SFT (0: skip)"})
    gold_temperature: float = field(default=0.7, metadata={"help": "sampling temperature for that comparison"})
    max_new_tokens: int = field(default=48, metadata={"help": "response budget when sampling"})
    epochs: float = 2.0
    batch_size: int = 32
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1))
    learner: LearnerConfig = field(default_factory=lambda: LearnerConfig(micro_batch_size=16))


@dataclass
class RMConfig(StageConfig):
    data: str = field(default="", metadata={"help": "task-data folder (comparisons.jsonl, comparisons_heldout.jsonl)"})
    task: str = field(default=DEFAULT_TASK, metadata={"help": "task whose gold scorer gives the labeler's ceiling (module:attr)"})
    epochs: float = 1.0  # InstructGPT C.2: one epoch; more overfits
    batch_size: int = 32  # prompts per step; every C(K,2) pair of a prompt in one batch element
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=5, min_lr_ratio=0.1))
    learner: LearnerConfig = field(default_factory=lambda: LearnerConfig(micro_batch_size=8))


def _files(cfg, train_name: str, eval_name: str | None) -> tuple[Path, Path | None]:
    train = Path(cfg.train_file) if cfg.train_file else Path(cfg.data) / train_name if cfg.data else None
    if train is None:
        raise ValueError("give data=DIR (a task-data folder) or train_file=FILE")
    evaluation = Path(cfg.eval_file) if cfg.eval_file else (Path(cfg.data) / eval_name if cfg.data and eval_name else None)
    return train, evaluation


def _print_stats(name: str, stats: dict) -> None:
    print(f"   {name}: kept {stats['kept']}/{stats['total']}, prompt truncated {stats.get('prompt_truncated', 0)}, "
          f"dropped {stats.get('dropped_too_long', 0) + stats.get('dropped_response_too_long', 0)}, "
          f"longest sequence {stats.get('seq_len_max_after', '?')} tokens")


def _lm_summary(sums: dict) -> dict:
    return {"loss": sums["nll_sum"] / sums["tokens"]}


def _write_summary(out: str, summary: dict) -> None:
    Path(out, "summary.json").write_text(json.dumps(summary, indent=2))


def pretrain(cfg: PretrainConfig) -> dict:
    from rlhf_dist.data import load_texts, tokenize_texts
    from rlhf_dist.models import load_tokenizer

    train_file, eval_file = _files(cfg, "pretrain.jsonl", "pretrain_heldout.jsonl")
    if not cfg.init:
        from rlhf_dist.recipes.build_model import BuildModelConfig, build_model

        cfg.init = str(build_model(BuildModelConfig(out=str(Path(cfg.out) / "init"), data=str(train_file.parent),
                                                     size=cfg.size, vocab_size=cfg.vocab_size, seed=cfg.seed)))
        print(f"   random-init {cfg.size} model and tokenizer: {cfg.init}")
    tok = load_tokenizer(cfg.init)
    train, stats = tokenize_texts(load_texts(train_file), tok, cfg.max_len)
    print(f"   {len(train)} training sequences from {stats['texts']} texts ({stats['tokens']} tokens)")
    if eval_file and eval_file.exists():
        held, _ = tokenize_texts(load_texts(eval_file), tok, cfg.max_len)
    else:
        train, held = split_eval(train, cfg.eval_fraction, cfg.seed)
    summary = run_stage(cfg, "lm", "causal_lm", train, held, tok.pad_token_id, _lm_summary)
    _write_summary(cfg.out, summary)
    return summary


def sft(cfg: SFTConfig) -> dict:
    from rlhf_dist.data import load_prompts, load_sft, tokenize_sft
    from rlhf_dist.evaluation.gold import gold_of_samples
    from rlhf_dist.models import load_tokenizer
    from rlhf_dist.tasks.base import load_task

    if not cfg.init:
        raise ValueError("init=: the model to fine-tune (e.g. runs/base/model from `rlhf-dist pretrain`)")
    task = load_task(cfg.task) if cfg.gold_prompts else None
    train_file, eval_file = _files(cfg, "sft.jsonl", None)
    tok = load_tokenizer(cfg.init)
    items, stats = tokenize_sft(load_sft(train_file), tok, cfg.max_len, cfg.max_prompt_len, cfg.truncation)
    _print_stats(str(train_file), stats)
    if eval_file:
        held, _ = tokenize_sft(load_sft(eval_file), tok, cfg.max_len, cfg.max_prompt_len, cfg.truncation)
    else:
        items, held = split_eval(items, cfg.eval_fraction, cfg.seed)
    summary = run_stage(cfg, "sft", "causal_lm", items, held, tok.pad_token_id, _lm_summary)
    summary["data_stats"] = stats
    if task is not None:
        prompts_file = Path(cfg.data) / "eval_prompts.jsonl" if cfg.data else None
        if prompts_file is None or not prompts_file.exists():
            print("   (no eval_prompts.jsonl: gold comparison skipped)")
        else:
            prompts = load_prompts(prompts_file)[: cfg.gold_prompts]
            for name, model in (("init", cfg.init), ("sft", str(Path(cfg.out) / "model"))):
                result = gold_of_samples(model, prompts, task, cfg.gold_temperature, cfg.max_new_tokens, cfg.seed)
                summary[f"gold/{name}"] = result["gold_mean"]
                summary[f"eos_rate/{name}"] = result["eos_rate"]
                Path(cfg.out, f"samples_{name}.jsonl").write_text("".join(json.dumps(s) + "\n" for s in result["samples"]))
            print(f"   mean gold of samples on {len(prompts)} held-out prompts (T={cfg.gold_temperature}): "
                  f"init {summary['gold/init']:.3f} -> SFT {summary['gold/sft']:.3f}")
    _write_summary(cfg.out, summary)
    return summary


def _rm_summary(sums: dict) -> dict:
    out = {"loss": sums["loss_sum"] / sums["prompts"], "accuracy": sums["correct_pairs"] / sums["pairs"]}
    mean = sums["reward_sum"] / sums["responses"]
    out["reward_mean"] = mean
    out["reward_std"] = max(sums["reward_sq_sum"] / sums["responses"] - mean**2, 0.0) ** 0.5
    return out


def labeler_ceiling(comparisons, task) -> float:
    """Accuracy of the hidden gold scorer itself against the (noisy) recorded rankings: the best
    pairwise accuracy any reward model can expect on these labels. Gold ties count one half."""
    from rlhf_dist.algo import ranks_from_ordering
    from rlhf_dist.data import prompt_text

    correct = total = 0.0
    for c in comparisons:
        gold = [task.gold_score(prompt_text(c.prompt), r) for r in c.responses]
        ranks = ranks_from_ordering(c.ranking)
        for i in range(len(gold)):
            for j in range(len(gold)):
                if ranks[i] < ranks[j]:
                    total += 1
                    correct += 1.0 if gold[i] > gold[j] else 0.5 if gold[i] == gold[j] else 0.0
    return correct / total


def rm(cfg: RMConfig) -> dict:
    from rlhf_dist.data import load_comparisons, tokenize_comparisons
    from rlhf_dist.models import load_tokenizer
    from rlhf_dist.tasks.base import load_task

    if not cfg.init:
        raise ValueError("init=: the model the reward model starts from (e.g. runs/sft/model)")
    task = load_task(cfg.task)
    train_file, eval_file = _files(cfg, "comparisons.jsonl", "comparisons_heldout.jsonl")
    tok = load_tokenizer(cfg.init)
    comparisons = load_comparisons(train_file)
    items, stats = tokenize_comparisons(comparisons, tok, cfg.max_len, cfg.max_prompt_len, cfg.truncation)
    _print_stats(str(train_file), stats)
    if eval_file and eval_file.exists():
        held_comparisons = load_comparisons(eval_file)
        held, _ = tokenize_comparisons(held_comparisons, tok, cfg.max_len, cfg.max_prompt_len, cfg.truncation)
    else:
        items, held = split_eval(items, cfg.eval_fraction, cfg.seed)
        held_comparisons = None
    summary = run_stage(cfg, "rm", "scalar_from_lm", items, held, tok.pad_token_id, _rm_summary)
    # Normalise: shift rewards so the held-out responses (demonstrator-quality samples) score 0 on
    # average (InstructGPT 3.5; N+ detail 15). The ranking loss is unchanged by the shift.
    config_path = Path(cfg.out) / "model" / "config.json"
    model_config = json.loads(config_path.read_text())
    model_config["reward_bias"] = summary["eval/reward_mean"]
    config_path.write_text(json.dumps(model_config, indent=2))
    summary["reward_bias"] = summary["eval/reward_mean"]
    if held_comparisons is not None:
        summary["labeler_ceiling"] = labeler_ceiling(held_comparisons, task)
        print(f"   held-out pairwise accuracy {summary['eval/accuracy']:.3f}; the gold scorer itself agrees with "
              f"the labels on {summary['labeler_ceiling']:.3f} of the same pairs (the ceiling)")
    _write_summary(cfg.out, summary)
    return summary


def pretrain_main(argv: list[str]) -> int:
    pretrain(parse_cli(PretrainConfig, argv, "rlhf-dist pretrain", __doc__))
    return 0


def sft_main(argv: list[str]) -> int:
    sft(parse_cli(SFTConfig, argv, "rlhf-dist sft", __doc__))
    return 0


def rm_main(argv: list[str]) -> int:
    rm(parse_cli(RMConfig, argv, "rlhf-dist rm", __doc__))
    return 0
