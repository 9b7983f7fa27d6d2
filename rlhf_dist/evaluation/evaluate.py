"""`rlhf-dist eval`: grade any set of model folders against the hidden labeler (InstructGPT's headline measures).

    rlhf-dist eval --out runs/eval data=runs/data reward_model=runs/rm/model \\
        models.base=runs/base/model models.sft=runs/sft/model models.ppo=runs/ppo/model models.ppo_ptx=runs/ppo_ptx/model
    ... baseline=sft prompts=200 temperature=0.7 max_new_tokens=48 seed=0 pretrain_texts=200

Per model, on the first `prompts` held-out prompts (one vLLM sample each, the same seed for
every model):
    gold_score            mean hidden gold score of the samples (the simulated labeler's judgement)
    proxy_score           mean reward-model score of the same samples (bias-normalised RM reward)
    win_rate_vs_<base>    how often the labeler prefers the model's sample to the baseline's on the
                          same prompt (ties count half), with `win_rate_ci95`; InstructGPT's headline
    win_prob_vs_<base>    the same without the labeler's noise: the mean over prompts of the
                          labeler's probability of preferring the model's sample (its expectation)
    kl_to_<base>          mean over prompts of sum_t log pi_T(y_t) - log pi_base_T(y_t) on the model's
                          own samples (pi_T: softmax(logits / temperature), as PPO's KL penalty)
    pretrain_nll          token-mean NLL on held-out pretraining text: the alignment tax
    response_len, eos_rate
    gold_parts            mean of each part of the gold score, when the task exposes `gold_parts`
and once: `rm_accuracy` (the RM's pairwise accuracy on held-out rankings), `labeler_agreement`
(the gold scorer's own accuracy on the same pairs: the ceiling for any RM) and, with
`gold_parts`, `rm_accuracy_by_part` (how often the RM orders held-out pairs as gold does,
by the part they differ in: a part the RM is blind to is one PPO cannot improve).

Files in `out`: eval.json (the numbers and the config) and eval_samples.jsonl (one row per model
and prompt: prompt, response, token ids, vLLM log-probs, gold, proxy, KL, win outcome), both
written at the very end (atomically), so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rlhf_dist.config import config_to_dict, parse_cli
from rlhf_dist.config.evaluation import EvalConfig
from rlhf_dist.evaluation.metrics import accuracy_by_part, fair_coin_ci95, labeler_ceiling, mean_ci95, mean_parts, seen_alone, standard_error
from rlhf_dist.evaluation.sample_and_score import sample_and_score, sample_models


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def pairs_table(prompt_ids: list, response_ids: list):
    """An Arrow table of (prompt, response) token-id pairs in the rollout schema, for the frozen
    scorers (`engines.scoring`); log-probs are not needed there and set to 0."""
    from types import SimpleNamespace

    import pyarrow as pa

    from rlhf_dist.buffer import rollouts_to_batch

    rows = [SimpleNamespace(prompt_ids=list(p), response_ids=list(r), logprobs=[0.0] * len(r), finished_with_eos=False)
            for p, r in zip(prompt_ids, response_ids)]
    return pa.Table.from_batches([rollouts_to_batch(rows, list(range(len(rows))), 0, 0)])


def pretrain_nll(model, seqs: list, pad_id: int, micro_batch_size: int) -> float:
    """Token-mean next-token NLL over `tokenize_texts` sequences: the pretraining objective's own
    loss (`engines.objectives`, forward only), summed over micro-batches / predicted tokens."""
    from rlhf_dist.engines.objectives import OBJECTIVES, run_micro_batches

    device = next(model.parameters()).device
    sums = run_micro_batches(OBJECTIVES["lm"], model, list(_chunks(seqs, micro_batch_size)), pad_id, 1.0, device, None)
    return sums["nll_sum"] / sums["tokens"]


def rm_accuracy(rm, items: list, pad_id: int, micro_batch_size: int) -> tuple[float, int]:
    """(pairwise accuracy, strict pairs) of the RM over TokenizedComparison items, computed by the
    RM objective itself (`engines.objectives`, forward only): every C(K, 2) pair whose ranks
    differ, a tie in RM scores counting one half (`pairwise_accuracy`)."""
    from rlhf_dist.engines.objectives import OBJECTIVES, run_micro_batches

    device = next(rm.parameters()).device
    sums = run_micro_batches(OBJECTIVES["rm"], rm, list(_chunks(items, micro_batch_size)), pad_id, 1.0, device, None)
    return sums["correct_pairs"] / sums["pairs"], int(sums["pairs"])


def rm_accuracy_by_part(reward_engine, inputs: "EvalInputs") -> dict[str, dict]:
    """`accuracy_by_part` of the RM on the held-out comparisons (every response scored once)."""
    from rlhf_dist.data import prompt_text
    from rlhf_dist.tasks.base import gold_parts

    flat = [(it.prompt_ids, r) for it in inputs.comparison_items for r in it.response_ids]
    flat_scores = reward_engine.score(pairs_table([p for p, _ in flat], [r for _, r in flat])).tolist()
    scores, parts, at = [], [], 0
    for c, it in zip(inputs.comparisons, inputs.comparison_items):
        scores.append(flat_scores[at : at + len(it.response_ids)])
        at += len(it.response_ids)
        parts.append([gold_parts(inputs.task, prompt_text(c.prompt), r) for r in c.responses])
    return accuracy_by_part(parts, scores)


# ---------------------------------------------------------------------------------------------
# Inputs: resolved and checked before anything runs


@dataclass
class EvalInputs:
    """What `resolve_inputs` read and checked: the task, the shared tokenizer and the data."""

    task: object
    tokenizer: object
    prompts: list
    prompt_ids: list
    pretrain_seqs: list
    comparisons: list  # Comparison objects kept (all when there is no RM)
    comparison_items: list  # their TokenizedComparison (empty without an RM)


def _file(cfg: EvalConfig, key: str, name: str) -> Path | None:
    value = getattr(cfg, key)
    return Path(value) if value else Path(cfg.data) / name if cfg.data else None


def _same_tokenizer(a, b) -> bool:
    return a.get_vocab() == b.get_vocab() and (a.bos_token_id, a.eos_token_id, a.pad_token_id) == (
        b.bos_token_id, b.eos_token_id, b.pad_token_id)


def resolve_inputs(cfg: EvalConfig) -> EvalInputs:
    """Check every folder, file and tokenizer and read the data; raise with the key at fault.

    One tokenizer for all models and the RM: the KL compares log-probs of the same token ids,
    and the RM scores the policy's token ids (as in PPO), so they must share a vocabulary.
    """
    from rlhf_dist.data import (format_prompts, load_comparisons, load_prompts, load_texts, source_exists,
                                tokenize_comparisons, tokenize_texts)
    from rlhf_dist.models import check_model_dir, load_tokenizer
    from rlhf_dist.tasks.base import load_task

    for name, path in cfg.models.items():
        check_model_dir(path, f"models.{name}")
    if cfg.reward_model:
        check_model_dir(cfg.reward_model, "reward_model")
    task = load_task(cfg.task)
    tok = load_tokenizer(cfg.models[cfg.baseline])
    for key, path in [(f"models.{n}", p) for n, p in cfg.models.items()] + [("reward_model", cfg.reward_model)]:
        if path and not _same_tokenizer(load_tokenizer(path), tok):
            raise ValueError(f"{key}={path}: its tokenizer differs from the baseline's ({cfg.models[cfg.baseline]}); "
                             "KL and RM scores compare token ids, so every model must share one tokenizer")

    prompts_file = _file(cfg, "prompts_file", "eval_prompts.jsonl")
    if prompts_file is None:
        raise ValueError("give data=DIR (a task-data folder) or prompts_file=FILE")
    if not source_exists(prompts_file):
        raise FileNotFoundError(f"prompts_file={prompts_file}: no such file or folder")
    prompts = load_prompts(prompts_file)[: cfg.prompts]

    pretrain_seqs: list = []
    if cfg.pretrain_texts:
        pretrain_file = _file(cfg, "pretrain_file", "pretrain_heldout.jsonl")
        if pretrain_file is None or not source_exists(pretrain_file):
            raise FileNotFoundError(f"pretrain_file={pretrain_file}: no held-out pretraining texts (pretrain_texts=0 skips the NLL)")
        pretrain_seqs, _ = tokenize_texts(load_texts(pretrain_file)[: cfg.pretrain_texts], tok, cfg.pretrain_max_len)

    comparisons, items = [], []
    comparisons_file = _file(cfg, "comparisons_file", "comparisons_heldout.jsonl")
    if cfg.reward_model and (comparisons_file is None or not source_exists(comparisons_file)):
        raise FileNotFoundError(f"comparisons_file={comparisons_file}: the RM accuracy needs held-out rankings")
    if comparisons_file is not None and source_exists(comparisons_file):
        comparisons = load_comparisons(comparisons_file)
        if cfg.reward_model:
            # One at a time, so we know which comparisons a too-long response drops: the labeler's
            # agreement is then measured on exactly the pairs the RM is.
            kept = [(c, tokenize_comparisons([c], tok, cfg.rm_max_len)[0]) for c in comparisons]
            comparisons = [c for c, its in kept if its]
            items = [its[0] for _, its in kept if its]
            if not items:
                raise ValueError(f"comparisons_file={comparisons_file}: no comparison fits rm_max_len={cfg.rm_max_len}")
    return EvalInputs(task, tok, prompts, format_prompts(tok, prompts), pretrain_seqs, comparisons, items)


# ---------------------------------------------------------------------------------------------
# The evaluation


def _judge_rng(seed: int, name: str):
    """The labeler's verdicts for one model: its own stream of (seed, name), so adding a model to
    the set leaves every other model's verdicts unchanged."""
    from rlhf_dist.tasks.generate import stream

    return stream(seed, f"eval-judge/{name}")


def evaluate_models(cfg: EvalConfig) -> dict:
    """Sample, grade and score every model in `cfg.models`; write eval.json and eval_samples.jsonl
    in `cfg.out`; return the eval.json dict (see the module docstring)."""
    from rlhf_dist.data import prompt_text
    from rlhf_dist.engines.scoring import ReferenceEngine, RewardEngine
    from rlhf_dist.models import load_causal_lm
    from rlhf_dist.runtime import print_table, write_text_atomic
    from rlhf_dist.tasks.base import gold_parts
    from rlhf_dist.tasks.labeler import Labeler

    inputs = resolve_inputs(cfg)
    tok, task, base = inputs.tokenizer, inputs.task, cfg.baseline
    pad, n = tok.pad_token_id, len(inputs.prompts)
    texts_of_prompts = [prompt_text(p) for p in inputs.prompts]
    labeler = Labeler.for_task(task, cfg.labeler_temperature)
    has_parts = callable(getattr(task, "gold_parts", None))  # optional in the task protocol
    print(f"== eval: {len(cfg.models)} models on {n} held-out prompts (T={cfg.temperature}, {cfg.max_new_tokens} new tokens, "
          f"seed {cfg.seed}); baseline {base}; {len(inputs.pretrain_seqs)} pretraining sequences; "
          f"{len(inputs.comparisons)} held-out comparisons", flush=True)

    # 1. One vLLM sample per prompt and model, in a child process, before any model is loaded
    #    here (so a GPU is the engine's alone); checkpoints of one model share one engine, their
    #    weights swapped. The same seed for every model: the per-request random streams are
    #    equal, so differences come from the models, not the dice.
    env = episode_settings(cfg)
    tables = sample_models(cfg.models, inputs.prompt_ids, cfg.temperature, cfg.max_new_tokens, cfg.seed, env,
                           texts_of_prompts)

    # 2. Score every model's samples on the same engines: gold, the RM's proxy score, and the KL
    #    to the baseline (the policy's vLLM log-probs minus the baseline's at the same T).
    reference = ReferenceEngine(cfg.models[base], pad, cfg.temperature, cfg.micro_batch_size)
    reward = RewardEngine(cfg.reward_model, pad, cfg.micro_batch_size) if cfg.reward_model else None
    scored = {name: sample_and_score(lambda ids, name=name: tables[name], inputs.prompts, inputs.prompt_ids, task, tok,
                                     reward=reward.score if reward else None, reference=reference.logprobs)
              for name in cfg.models}
    results: dict[str, dict] = {}
    rows: dict[str, list[dict]] = {}
    for name, path in cfg.models.items():
        s = scored[name]
        proxy = s.proxy if s.proxy is not None else [None] * n
        # 3. the labeler's verdict against the baseline's sample of the same prompt
        if name == base:
            outcomes, probs = [None] * n, [None] * n
            win, lo, hi = fair_coin_ci95(n)
            win_prob = 0.5
        else:
            rng, theirs = _judge_rng(cfg.seed, name), scored[base].answers
            outcomes = [labeler.judge(p, y, b, rng) for p, y, b in zip(texts_of_prompts, s.answers, theirs)]
            probs = [labeler.win_probability(p, y, b) for p, y, b in zip(texts_of_prompts, s.answers, theirs)]
            win, lo, hi = mean_ci95(outcomes)
            win_prob = sum(probs) / n
        # 4. alignment tax: NLL of held-out pretraining text
        nll = None
        if inputs.pretrain_seqs:
            model = reference.model if name == base else load_causal_lm(path).to(reference.device)
            nll = pretrain_nll(model, inputs.pretrain_seqs, pad, cfg.micro_batch_size)
            del model
        summary = s.summary()
        results[name] = {
            "path": path,
            "gold_score": summary["gold"],
            "gold_score_sem": standard_error(s.gold),
            "proxy_score": summary["proxy"],
            f"kl_to_{base}": summary["kl"],
            "pretrain_nll": nll,
            "response_len": summary["response_len"],
            "eos_rate": summary["eos_rate"],
            f"win_rate_vs_{base}": win,
            "win_rate_ci95": [lo, hi],
            f"win_prob_vs_{base}": win_prob,
            "win_rate_by_definition": name == base,
        }
        if env is not None:
            results[name].update(episode_summary(s.table))
        if has_parts:  # what changed, part by part (e.g. correctness vs habits)
            results[name]["gold_parts"] = mean_parts([gold_parts(task, p, y) for p, y in zip(texts_of_prompts, s.answers)])
        t = s.table
        rows[name] = [
            {"model": name, "index": i, "prompt": p, "response": y, "prompt_ids": pi, "response_ids": ri,
             "logprobs": lp, "finished_with_eos": e, "gold": g, "proxy": q, f"kl_to_{base}": k, f"win_vs_{base}": o,
             f"win_prob_vs_{base}": w, **({"answer": a, **episode} if env is not None else {})}
            for i, (p, y, pi, ri, lp, e, g, q, k, o, w, a, episode) in enumerate(zip(
                inputs.prompts, s.responses, t.column("prompt_ids").to_pylist(), t.column("response_ids").to_pylist(),
                t.column("rollout_logprobs").to_pylist(), s.eos, s.gold, proxy, s.kl, outcomes, probs, s.answers,
                _episode_rows(t)))
        ]
        print(f"   scored  {name:<10} {_summary_line(results[name], base)}", flush=True)

    report = {
        "models": results,
        "baseline": base,
        "prompts": n,
        "rm_accuracy": None,
        "rm_pairs": 0,
        "labeler_agreement": None,
    }
    if reward is not None:
        report["rm_accuracy"], report["rm_pairs"] = rm_accuracy(reward.model, inputs.comparison_items, pad, cfg.micro_batch_size)
        if has_parts:
            report["rm_accuracy_by_part"] = rm_accuracy_by_part(reward, inputs)
    if inputs.comparisons:
        report["labeler_agreement"] = labeler_ceiling(inputs.comparisons, task)
    report["config"] = config_to_dict(cfg)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "eval_samples.jsonl", "".join(json.dumps(r) + "\n" for name in cfg.models for r in rows[name]))
    write_text_atomic(out / "eval.json", json.dumps(report, indent=2))
    table = [("model", f"{'gold':>6} {'proxy':>7} {'win vs ' + base:>24} {'KL':>7} {'NLL':>6} {'len':>5}")]
    table += [(name, _table_cells(report["models"][name], base)) for name in cfg.models]
    if report["rm_accuracy"] is not None:
        table.append(("RM accuracy", f"{report['rm_accuracy']:.3f} on {report['rm_pairs']} held-out pairs"))
    alone = seen_alone(report.get("rm_accuracy_by_part") or {})
    if alone:
        table.append(("RM vs gold, one part", ", ".join(f"{k} {v:.2f}" for k, v in alone.items())
                      + " (held-out pairs that differ in that part alone)"))
    if report["labeler_agreement"] is not None:
        table.append(("labeler ceiling", f"{report['labeler_agreement']:.3f} (the gold scorer on the same rankings)"))
    print_table(table, f"Evaluation on {n} held-out prompts -> {out / 'eval.json'}")
    return report


def episode_settings(cfg: EvalConfig):
    """The `EnvSettings` of an eval with env= (the spec checked here, in one line), else None."""
    if not cfg.env.strip():
        return None
    from rlhf_dist.engines.episodes import EnvSettings
    from rlhf_dist.envs import load_env
    from rlhf_dist.tasks.base import absolute_spec

    spec = absolute_spec(cfg.env)
    load_env(spec)
    return EnvSettings.of(spec, cfg)


def _episode_rows(table) -> list[dict]:
    """Per row of an episode table: policy_mask, turns, end_reason, env_error ({} per row otherwise)."""
    names = [c for c in ("policy_mask", "turns", "end_reason", "env_error") if c in table.column_names]
    if not names:
        return [{}] * table.num_rows
    return table.select(names).to_pylist()


def episode_summary(table) -> dict:
    """A model's episodes: turns per episode, the share that ended in each way, failed share."""
    from rlhf_dist.engines.episodes import episode_metrics

    m = episode_metrics(table.column("end_reason").to_pylist(), table.column("turns").to_pylist())
    return {"turns_mean": m["env/turns_mean"], "env_failed_share": m["env/failed_share"],
            "end_reasons": {k.removeprefix("env/end_").removesuffix("_share"): v for k, v in m.items()
                            if k.startswith("env/end_") and v}}


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _summary_line(r: dict, base: str) -> str:
    lo, hi = r["win_rate_ci95"]
    return (f"gold {r['gold_score']:.3f}  proxy {_fmt(r['proxy_score'], '.3f')}  win vs {base} "
            f"{r[f'win_rate_vs_{base}']:.3f} [{lo:.3f}, {hi:.3f}]  KL {r[f'kl_to_{base}']:.3f}  "
            f"NLL {_fmt(r['pretrain_nll'], '.3f')}  len {r['response_len']:.1f}")


def _table_cells(r: dict, base: str) -> str:
    lo, hi = r["win_rate_ci95"]
    win = f"{r[f'win_rate_vs_{base}']:.3f} [{lo:.3f}, {hi:.3f}]"
    return (f"{r['gold_score']:>6.3f} {_fmt(r['proxy_score'], '>7.3f')} {win:>24} {r[f'kl_to_{base}']:>7.3f} "
            f"{_fmt(r['pretrain_nll'], '>6.3f')} {r['response_len']:>5.1f}")


def main(argv: list[str]) -> int:
    evaluate_models(parse_cli(EvalConfig, argv, "rlhf-dist eval", __doc__))
    return 0
