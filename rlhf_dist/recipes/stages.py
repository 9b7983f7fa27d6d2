"""Training stages on the DeepSpeed learner group: `pretrain`, `sft`, `rm` (stages 0-2 of the recipe) and `dpo`.

    rlhf-dist pretrain --out runs/base data=runs/data            # the stand-in for GPT-3
    rlhf-dist sft      --out runs/sft  data=runs/data init=runs/base/model
    rlhf-dist rm       --out runs/rm   data=runs/data init=runs/sft/model
    rlhf-dist dpo      --out runs/dpo  data=runs/data init=runs/sft/model beta=0.1   # ref= defaults to init
    ... learner.num_ranks=2 learner.zero_stage=3 optim.lr=3e-4 epochs=2 ...

`data=DIR` points at a task-data folder (`rlhf-dist task-data`) and fills in the standard file
names; `train_file=`/`eval_file=` name files directly (JSONL, Parquet, or a dataset folder such as
`datasets` writes, `FOLDER#SPLIT` for a split; schemas in the README) and `columns.*` maps a file's
own column names to the standard ones (`columns.prompt=question`).
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_dist.config import parse_cli
from rlhf_dist.config.stages import DPOConfig, PretrainConfig, RMConfig, SFTConfig
from rlhf_dist.recipes.train_stage import prepare_stage_folder, run_stage


def _files(cfg, train_name: str, eval_name: str | None) -> tuple[Path, Path | None]:
    train = Path(cfg.train_file) if cfg.train_file else Path(cfg.data) / train_name if cfg.data else None
    if train is None:
        raise ValueError("give data=DIR (a task-data folder) or train_file=FILE")
    # An eval_file named outright must be read (a missing one is an error, not a silent hold-out);
    # the data folder's held-out file is optional.
    if cfg.eval_file:
        return train, Path(cfg.eval_file)
    evaluation = Path(cfg.data) / eval_name if cfg.data and eval_name else None
    return train, evaluation if evaluation is not None and evaluation.exists() else None


def _print_stats(name: str, stats: dict) -> None:
    print(f"   {name}: kept {stats['kept']}/{stats['total']}, prompt truncated {stats.get('prompt_truncated', 0)}, "
          f"dropped {stats.get('dropped_too_long', 0) + stats.get('dropped_response_too_long', 0)}, "
          f"longest sequence {stats.get('seq_len_max_after', '?')} tokens")


def _lm_summary(sums: dict) -> dict:
    return {"loss": sums["nll_sum"] / sums["tokens"]}


def _write_summary(out: str, summary: dict) -> None:
    Path(out, "summary.json").write_text(json.dumps(summary, indent=2))


def pretrain(cfg: PretrainConfig) -> dict:
    from rlhf_dist.data import load_texts, split_eval, tokenize_texts
    from rlhf_dist.models import check_model_dir, load_tokenizer

    train_file, eval_file = _files(cfg, "pretrain.jsonl", "pretrain_heldout.jsonl")
    resuming = prepare_stage_folder(cfg)
    if not cfg.init and resuming and (Path(cfg.out) / "init" / "config.json").is_file():
        cfg.init = str(Path(cfg.out) / "init")  # the resumed run's own random init
    if not cfg.init:
        from rlhf_dist.config.pipeline import BuildModelConfig
        from rlhf_dist.recipes.build_model import build_model

        cfg.init = str(build_model(BuildModelConfig(out=str(Path(cfg.out) / "init"), data=str(train_file.parent),
                                                     size=cfg.size, vocab_size=cfg.vocab_size, seed=cfg.seed)))
        print(f"   random-init {cfg.size} model and tokenizer: {cfg.init}")
    check_model_dir(cfg.init, "init")
    tok = load_tokenizer(cfg.init)
    train, stats = tokenize_texts(load_texts(train_file, cfg.columns), tok, cfg.max_len)
    print(f"   {len(train)} training sequences from {stats['texts']} texts ({stats['tokens']} tokens)")
    if eval_file:
        held, _ = tokenize_texts(load_texts(eval_file, cfg.columns), tok, cfg.max_len)
    else:
        train, held = split_eval(train, cfg.eval_fraction, cfg.seed)
    summary = run_stage(cfg, "lm", "causal_lm", train, held, tok.pad_token_id, _lm_summary, resuming)
    _write_summary(cfg.out, summary)
    return summary


def sft(cfg: SFTConfig) -> dict:
    from rlhf_dist.data import load_prompts, load_sft, split_eval, tokenize_sft
    from rlhf_dist.evaluation.sample_and_score import gold_of_samples
    from rlhf_dist.models import check_model_dir, load_tokenizer
    from rlhf_dist.tasks.base import load_task

    if not cfg.init:
        raise ValueError("init=: the model to fine-tune (e.g. runs/base/model from `rlhf-dist pretrain`)")
    check_model_dir(cfg.init, "init")
    resuming = prepare_stage_folder(cfg)
    task = load_task(cfg.task) if cfg.gold_prompts else None
    train_file, eval_file = _files(cfg, "sft.jsonl", None)
    tok = load_tokenizer(cfg.init)
    items, stats = tokenize_sft(load_sft(train_file, cfg.columns), tok, cfg.max_len, cfg.max_prompt_len, cfg.truncation)
    _print_stats(str(train_file), stats)
    if eval_file:
        held, _ = tokenize_sft(load_sft(eval_file, cfg.columns), tok, cfg.max_len, cfg.max_prompt_len, cfg.truncation)
    else:
        items, held = split_eval(items, cfg.eval_fraction, cfg.seed)

    def add_to_summary(summary: dict) -> None:
        summary["data_stats"] = stats
        if task is None:
            return
        prompts_file = Path(cfg.data) / "eval_prompts.jsonl" if cfg.data else None
        if prompts_file is None or not prompts_file.exists():
            print("   (no eval_prompts.jsonl: gold comparison skipped)")
            return
        prompts = load_prompts(prompts_file)[: cfg.gold_prompts]
        models = {"init": cfg.init, "sft": str(Path(cfg.out) / "model")}
        for name, result in gold_of_samples(models, prompts, task, cfg.gold_temperature, cfg.max_new_tokens,
                                            cfg.seed).items():
            summary[f"gold/{name}"] = result["gold_mean"]
            summary[f"eos_rate/{name}"] = result["eos_rate"]
            Path(cfg.out, f"samples_{name}.jsonl").write_text("".join(json.dumps(s) + "\n" for s in result["samples"]))
        print(f"   mean gold of samples on {len(prompts)} held-out prompts (T={cfg.gold_temperature}): "
              f"init {summary['gold/init']:.3f} -> SFT {summary['gold/sft']:.3f}")

    summary = run_stage(cfg, "sft", "causal_lm", items, held, tok.pad_token_id, _lm_summary, resuming, add_to_summary)
    _write_summary(cfg.out, summary)
    return summary


def _rm_summary(sums: dict) -> dict:
    out = {"loss": sums["loss_sum"] / sums["prompts"], "accuracy": sums["correct_pairs"] / sums["pairs"]}
    mean = sums["reward_sum"] / sums["responses"]
    out["reward_mean"] = mean
    out["reward_std"] = max(sums["reward_sq_sum"] / sums["responses"] - mean**2, 0.0) ** 0.5
    return out


def rm(cfg: RMConfig) -> dict:
    from rlhf_dist.data import load_comparisons, split_eval, tokenize_comparisons
    from rlhf_dist.evaluation.metrics import labeler_ceiling
    from rlhf_dist.models import check_model_dir, load_tokenizer
    from rlhf_dist.tasks.base import load_task

    if not cfg.init:
        raise ValueError("init=: the model the reward model starts from (e.g. runs/sft/model)")
    check_model_dir(cfg.init, "init")
    resuming = prepare_stage_folder(cfg)
    task = load_task(cfg.task)
    train_file, eval_file = _files(cfg, "comparisons.jsonl", "comparisons_heldout.jsonl")
    tok = load_tokenizer(cfg.init)
    comparisons = load_comparisons(train_file, cfg.columns)
    items, stats = tokenize_comparisons(comparisons, tok, cfg.max_len, cfg.max_prompt_len, cfg.truncation)
    _print_stats(str(train_file), stats)
    if eval_file:
        held_comparisons = load_comparisons(eval_file, cfg.columns)
        held, _ = tokenize_comparisons(held_comparisons, tok, cfg.max_len, cfg.max_prompt_len, cfg.truncation)
    else:
        items, held = split_eval(items, cfg.eval_fraction, cfg.seed)
        held_comparisons = None

    def add_to_summary(summary: dict) -> None:
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

    summary = run_stage(cfg, "rm", "scalar_from_lm", items, held, tok.pad_token_id, _rm_summary, resuming, add_to_summary)
    _write_summary(cfg.out, summary)
    return summary


def _dpo_summary(sums: dict) -> dict:
    return {"loss": sums["loss_sum"] / sums["prompts"], "accuracy": sums["correct_pairs"] / sums["pairs"],
            "margin": sums["margin_sum"] / sums["pairs"]}


def dpo(cfg: DPOConfig) -> dict:
    """DPO (Rafailov et al. 2023, eq. 7) from `init` against the frozen `ref` (default: init) on the
    comparison files the rm stage reads; the output is a policy folder like sft's."""
    import time

    from rlhf_dist.actors.learner_group import ReferenceRanks
    from rlhf_dist.actors.resources import Role, check_resources
    from rlhf_dist.data import load_comparisons, split_eval, tokenize_comparisons
    from rlhf_dist.engines.objectives import ReferencedComparison, dpo_objective
    from rlhf_dist.models import check_model_dir, load_tokenizer
    from rlhf_dist.runtime import ensure_ray

    if not cfg.init:
        raise ValueError("init=: the policy DPO starts from (e.g. runs/sft/model)")
    check_model_dir(cfg.init, "init")
    ref = cfg.ref or cfg.init
    tok = load_tokenizer(cfg.init)
    if cfg.ref:
        check_model_dir(cfg.ref, "ref")
        if load_tokenizer(cfg.ref).get_vocab() != tok.get_vocab():
            raise ValueError(f"ref={cfg.ref}: its tokenizer differs from init's ({cfg.init}); the implicit reward "
                             "compares log-probs of the same token ids")
    if cfg.data and not Path(cfg.data).is_dir():
        raise FileNotFoundError(f"data={cfg.data}: no such folder (a task-data folder with comparisons.jsonl)")
    resuming = prepare_stage_folder(cfg)
    train_file, eval_file = _files(cfg, "comparisons.jsonl", "comparisons_heldout.jsonl")
    items, stats = tokenize_comparisons(load_comparisons(train_file, cfg.columns), tok, cfg.max_len, cfg.max_prompt_len, cfg.truncation)
    _print_stats(str(train_file), stats)
    if eval_file:
        held, _ = tokenize_comparisons(load_comparisons(eval_file, cfg.columns), tok, cfg.max_len, cfg.max_prompt_len, cfg.truncation)
    else:
        items, held = split_eval(items, cfg.eval_fraction, cfg.seed)
    # The reference is frozen (DPO section 4), so its log-probs are computed once, on actors placed
    # as the learner ranks, and travel with the items: no training step forwards it.
    ensure_ray(cfg.ray_address)
    lr = cfg.learner
    check_resources([Role("learner rank", lr.num_ranks, lr.cpus_per_rank, lr.gpus_per_rank)])
    start = time.perf_counter()
    ranks = ReferenceRanks(cfg.learner)
    try:
        logps = ranks.sequence_logprobs(ref, items + held, tok.pad_token_id)
    finally:
        ranks.shutdown()
    items, held = ([ReferencedComparison(it.prompt_ids, it.response_ids, it.ranks, lp) for it, lp in zip(part, part_logps)]
                   for part, part_logps in ((items, logps[: len(items)]), (held, logps[len(items):])))
    print(f"   reference log-probs of {sum(len(it.ranks) for it in items + held)} responses under {ref} "
          f"({lr.num_ranks} rank(s)): {time.perf_counter() - start:.1f} s", flush=True)
    summary = run_stage(cfg, dpo_objective(cfg.beta), "causal_lm", items, held, tok.pad_token_id, _dpo_summary, resuming,
                        lambda summary: summary.update({"ref": ref, "beta": cfg.beta, "data_stats": stats}))
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


def dpo_main(argv: list[str]) -> int:
    dpo(parse_cli(DPOConfig, argv, "rlhf-dist dpo", __doc__))
    return 0
