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
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_dist.config import config_to_dict, parse_cli
from rlhf_dist.tasks.base import DEFAULT_TASK
from rlhf_dist.tasks.labeler import DEFAULT_TEMPERATURE

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


@dataclass
class EvalConfig:
    out: str = field(default="", metadata={"help": "folder for eval.json and eval_samples.jsonl (required)"})
    models: dict[str, str] = field(default_factory=dict, metadata={"help": "name -> model folder: models.sft=DIR models.ppo=DIR ..."})
    baseline: str = field(default="sft", metadata={"help": "the model win rates and KL are measured against (a key of models)"})
    reward_model: str = field(default="", metadata={"help": "RM folder for proxy scores and RM accuracy (empty: skip both)"})
    data: str = field(default="", metadata={"help": "task-data folder (eval_prompts.jsonl, pretrain_heldout.jsonl, comparisons_heldout.jsonl)"})
    prompts_file: str = field(default="", metadata={"help": "held-out prompts (default: DATA/eval_prompts.jsonl)"})
    pretrain_file: str = field(default="", metadata={"help": "held-out pretraining texts (default: DATA/pretrain_heldout.jsonl)"})
    comparisons_file: str = field(default="", metadata={"help": "held-out rankings (default: DATA/comparisons_heldout.jsonl)"})
    task: str = field(default=DEFAULT_TASK, metadata={"help": "task whose gold scorer is the labeler (module:attr)"})
    prompts: int = field(default=200, metadata={"help": "held-out prompts sampled per model (the first N of the file)"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature; KL uses pi_T at the same T"})
    max_new_tokens: int = field(default=48, metadata={"help": "response budget"})
    seed: int = field(default=0, metadata={"help": "sampling seed (the same for every model) and the labeler's verdicts"})
    pretrain_texts: int = field(default=200, metadata={"help": "held-out pretraining texts for the NLL (0: skip)"})
    pretrain_max_len: int = field(default=96, metadata={"help": "token window for those texts (pretrain's max_len)"})
    rm_max_len: int = field(default=128, metadata={"help": "token budget of a ranked response with its prompt (rm's max_len)"})
    labeler_temperature: float = field(default=DEFAULT_TEMPERATURE, metadata={"help": "Bradley-Terry noise of the labeler's verdicts (0: gold order)"})
    micro_batch_size: int = field(default=16, metadata={"help": "sequences per forward pass (KL, NLL, RM)"})

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("missing --out DIR")
        if not self.models:
            raise ValueError("no models: give models.NAME=FOLDER (e.g. models.sft=runs/sft/model models.ppo=runs/ppo/model)")
        for name, path in self.models.items():
            if isinstance(path, (int, float)) and not isinstance(path, bool):
                self.models[name] = path = str(path)  # a folder named like a number, as `str` fields allow
            if not isinstance(path, str) or not path:
                raise ValueError(f"models.{name}: expected a model folder, got {path!r}")
        if self.baseline not in self.models:
            raise ValueError(f"baseline={self.baseline!r} is not one of the models ({', '.join(self.models)})")
        if self.prompts < 1:
            raise ValueError(f"prompts={self.prompts}: must be >= 1")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature}: must be > 0 (KL and log-probs are of pi_T)")
        if self.max_new_tokens < 1 or self.micro_batch_size < 1:
            raise ValueError("max_new_tokens and micro_batch_size must be >= 1")
        if self.pretrain_texts < 0:
            raise ValueError(f"pretrain_texts={self.pretrain_texts}: must be >= 0")
        if self.pretrain_max_len < 2 or self.rm_max_len < 2:
            raise ValueError("pretrain_max_len and rm_max_len must be >= 2")
        if self.labeler_temperature < 0:
            raise ValueError(f"labeler_temperature={self.labeler_temperature}: must be >= 0")


# ---------------------------------------------------------------------------------------------
# Statistics (pure Python)


def standard_error(xs: list[float]) -> float:
    """s / sqrt(n) of a mean (0 for n < 2): the gold score's sampling error over prompts."""
    n = len(xs)
    if n < 2:
        return 0.0
    mean = sum(xs) / n
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1) / n)


def mean_ci95(outcomes: list[float]) -> tuple[float, float, float]:
    """(mean, lo, hi): the normal-approximation (Wald) 95% interval of a mean, clipped to [0, 1].

    mean +- Z95 * s / sqrt(n), s the sample standard deviation (n - 1 in the denominator). Chosen
    over Wilson because the outcomes are not Bernoulli (ties give 0.5), and at the hundreds of
    prompts an evaluation uses the normal approximation is accurate. Caveat: when every outcome
    is the same (a tiny n) s = 0 and the interval has zero width; with n = 1 it is [0, 1].
    """
    mean = sum(outcomes) / len(outcomes)
    if len(outcomes) < 2:
        return mean, 0.0, 1.0
    half = Z95 * standard_error(outcomes)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def fair_coin_ci95(n: int) -> tuple[float, float, float]:
    """(0.5, lo, hi): the interval a fair coin's win rate has on n prompts (sd 0.5, no ties).

    Used for the baseline against itself, whose win rate is 0.5 by definition. Judging its samples
    against themselves would give all ties, an interval of width 0 that looks like certainty; a
    second, independent sample set would cost a sampling pass and only add noise around a known
    value. The fair-coin width is the noise floor the other models' intervals are read against.
    """
    half = Z95 * 0.5 / math.sqrt(n)
    return 0.5, max(0.0, 0.5 - half), min(1.0, 0.5 + half)


# ---------------------------------------------------------------------------------------------
# Forward passes (torch), in micro-batches, no grad


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def sequence_logprob_sums(model, rollouts, pad_id: int, temperature: float, micro_batch_size: int) -> list[float]:
    """sum_t log pi_T(y_t) over each rollout's response tokens under `model` (HF forward)."""
    import torch

    from rlhf_dist.models import pad_prompt_response, response_logprobs

    device, out = next(model.parameters()).device, []
    with torch.no_grad():
        for chunk in _chunks(list(rollouts), micro_batch_size):
            batch = pad_prompt_response([r.prompt_ids for r in chunk], [r.response_ids for r in chunk], pad_id).to(device)
            lp = response_logprobs(model, batch, temperature)
            out += torch.where(batch.response_mask, lp, 0.0).sum(1).cpu().tolist()
    return out


def rm_rewards(rm, prompt_ids: list, response_ids: list, pad_id: int, micro_batch_size: int) -> list[float]:
    """`ScalarHeadModel.reward` (read at the last real token, minus the saved bias) of each pair."""
    import torch

    from rlhf_dist.models import pad_prompt_response

    device, out = next(rm.parameters()).device, []
    pairs = list(zip(prompt_ids, response_ids))
    with torch.no_grad():
        for chunk in _chunks(pairs, micro_batch_size):
            b = pad_prompt_response([p for p, _ in chunk], [r for _, r in chunk], pad_id).to(device)
            out += rm.reward(b.input_ids, b.attention_mask, b.position_ids).float().cpu().tolist()
    return out


def pretrain_nll(model, seqs: list, pad_id: int, micro_batch_size: int) -> float:
    """Token-mean next-token NLL over `tokenize_texts` sequences: the pretraining objective's own
    loss (`engines.objectives`, forward only), summed over micro-batches / predicted tokens."""
    from rlhf_dist.engines.objectives import OBJECTIVES, run_micro_batches

    device = next(model.parameters()).device
    sums = run_micro_batches(OBJECTIVES["lm"], model, list(_chunks(seqs, micro_batch_size)), pad_id, 1.0, device, None)
    return sums["nll_sum"] / sums["tokens"]


def rm_accuracy_by_part(rm, inputs: "EvalInputs", pad_id: int, micro_batch_size: int) -> dict[str, dict]:
    """`accuracy_by_part` of the RM on the held-out comparisons (every response scored once)."""
    from rlhf_dist.data import prompt_text
    from rlhf_dist.tasks.base import gold_parts

    flat = [(it.prompt_ids, r) for it in inputs.comparison_items for r in it.response_ids]
    flat_scores = rm_rewards(rm, [p for p, _ in flat], [r for _, r in flat], pad_id, micro_batch_size)
    scores, parts, at = [], [], 0
    for c, it in zip(inputs.comparisons, inputs.comparison_items):
        scores.append(flat_scores[at : at + len(it.response_ids)])
        at += len(it.response_ids)
        parts.append([gold_parts(inputs.task, prompt_text(c.prompt), r) for r in c.responses])
    return accuracy_by_part(parts, scores)


def rm_accuracy(rm, items: list, pad_id: int, micro_batch_size: int) -> tuple[float, int]:
    """(pairwise accuracy, strict pairs) of the RM over TokenizedComparison items, computed by the
    RM objective itself (`engines.objectives`, forward only): every C(K, 2) pair whose ranks
    differ, a tie in RM scores counting one half (`pairwise_accuracy`)."""
    from rlhf_dist.engines.objectives import OBJECTIVES, run_micro_batches

    device = next(rm.parameters()).device
    sums = run_micro_batches(OBJECTIVES["rm"], rm, list(_chunks(items, micro_batch_size)), pad_id, 1.0, device, None)
    return sums["correct_pairs"] / sums["pairs"], int(sums["pairs"])


def mean_parts(parts: list[dict]) -> dict[str, float]:
    """Mean of each gold part (`tasks.base.gold_parts`) over a model's responses."""
    return {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]} if parts else {}


def seen_alone(by_part: dict[str, dict], min_pairs: int = 30) -> dict[str, float]:
    """{part: the RM's agreement with gold on pairs differing in it alone}, over the parts of
    `accuracy_by_part` with at least `min_pairs` such pairs (fewer says little)."""
    return {k: v["only_accuracy"] for k, v in by_part.items() if v["only_pairs"] >= min_pairs}


def accuracy_by_part(parts: list[list[dict]], scores: list[list[float]], implied: float = 0.95) -> dict[str, dict]:
    """What a scorer (the RM) sees of each gold part: where an RM is blind, PPO cannot improve.

    parts[c][k]: gold parts of response k to prompt c (with "total"); scores[c][k]: its score.
    Over every pair of responses to one prompt whose gold totals differ, for each part p but
    the total:
      pairs, accuracy: the pairs where p differs, and the share the scorer orders as the gold
          total does (a tie in scores counts half);
      only_pairs, only_accuracy: the same over the pairs where nothing else differs but the
          parts that move with p (those that differ in >= `implied` of the pairs where p does,
          like a sub-total it feeds: "helpful" moves with "correct"). The telling figure: on
          pairs that differ in correctness alone, does the RM prefer the right answer?
    -> {p: {"pairs", "accuracy", "only_pairs", "only_accuracy", "moves_with"}}; only_accuracy
    is None when no pair differs in p alone.
    """
    pairs: list[tuple[frozenset, float]] = []  # (parts that differ, the scorer's credit)
    for ps, ss in zip(parts, scores):
        for i in range(len(ps)):
            for j in range(i + 1, len(ps)):
                gold = ps[i]["total"] - ps[j]["total"]
                if gold == 0:
                    continue
                score = ss[i] - ss[j]
                right = 0.5 if score == 0 else float((score > 0) == (gold > 0))
                pairs.append((frozenset(k for k in ps[i] if k != "total" and ps[i][k] != ps[j][k]), right))
    names = sorted({k for d, _ in pairs for k in d})
    out = {}
    for p in names:
        with_p = [(d, r) for d, r in pairs if p in d]
        moves = {q for q in names if sum(q in d for d, _ in with_p) >= implied * len(with_p)}
        only = [r for d, r in with_p if d <= moves]
        out[p] = {"pairs": len(with_p), "accuracy": sum(r for _, r in with_p) / len(with_p),
                  "only_pairs": len(only), "only_accuracy": sum(only) / len(only) if only else None,
                  "moves_with": sorted(moves - {p})}
    return out


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


def _check_model_dir(key: str, path: str) -> None:
    p = Path(path)
    if not (p / "config.json").is_file() or not (p / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{key}={path}: not a model folder (needs config.json and tokenizer.json)")


def _same_tokenizer(a, b) -> bool:
    return a.get_vocab() == b.get_vocab() and (a.bos_token_id, a.eos_token_id, a.pad_token_id) == (
        b.bos_token_id, b.eos_token_id, b.pad_token_id)


def resolve_inputs(cfg: EvalConfig) -> EvalInputs:
    """Check every folder, file and tokenizer and read the data; raise with the key at fault.

    One tokenizer for all models and the RM: the KL compares log-probs of the same token ids,
    and the RM scores the policy's token ids (as in PPO), so they must share a vocabulary.
    """
    from rlhf_dist.data import format_prompts, load_comparisons, load_prompts, load_texts, tokenize_comparisons, tokenize_texts
    from rlhf_dist.models import load_tokenizer
    from rlhf_dist.tasks.base import load_task

    for name, path in cfg.models.items():
        _check_model_dir(f"models.{name}", path)
    if cfg.reward_model:
        _check_model_dir("reward_model", cfg.reward_model)
    task = load_task(cfg.task)
    tok = load_tokenizer(cfg.models[cfg.baseline])
    for key, path in [(f"models.{n}", p) for n, p in cfg.models.items()] + [("reward_model", cfg.reward_model)]:
        if path and not _same_tokenizer(load_tokenizer(path), tok):
            raise ValueError(f"{key}={path}: its tokenizer differs from the baseline's ({cfg.models[cfg.baseline]}); "
                             "KL and RM scores compare token ids, so every model must share one tokenizer")

    prompts_file = _file(cfg, "prompts_file", "eval_prompts.jsonl")
    if prompts_file is None:
        raise ValueError("give data=DIR (a task-data folder) or prompts_file=FILE")
    if not prompts_file.is_file():
        raise FileNotFoundError(f"prompts_file={prompts_file}: no such file")
    prompts = load_prompts(prompts_file)[: cfg.prompts]

    pretrain_seqs: list = []
    if cfg.pretrain_texts:
        pretrain_file = _file(cfg, "pretrain_file", "pretrain_heldout.jsonl")
        if pretrain_file is None or not pretrain_file.is_file():
            raise FileNotFoundError(f"pretrain_file={pretrain_file}: no held-out pretraining texts (pretrain_texts=0 skips the NLL)")
        pretrain_seqs, _ = tokenize_texts(load_texts(pretrain_file)[: cfg.pretrain_texts], tok, cfg.pretrain_max_len)

    comparisons, items = [], []
    comparisons_file = _file(cfg, "comparisons_file", "comparisons_heldout.jsonl")
    if cfg.reward_model and (comparisons_file is None or not comparisons_file.is_file()):
        raise FileNotFoundError(f"comparisons_file={comparisons_file}: the RM accuracy needs held-out rankings")
    if comparisons_file is not None and comparisons_file.is_file():
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


def _judge_rng(seed: int, name: str) -> random.Random:
    """The labeler's verdicts for one model: its own stream of (seed, name), so adding a model to
    the set leaves every other model's verdicts unchanged."""
    from rlhf_dist.tasks.generate import stream

    return stream(seed, f"eval-judge/{name}")


def evaluate_models(cfg: EvalConfig) -> dict:
    """Sample, grade and score every model in `cfg.models`; write eval.json and eval_samples.jsonl
    in `cfg.out`; return the eval.json dict (see the module docstring)."""
    from rlhf_dist.data import prompt_text
    from rlhf_dist.evaluation.gold import sample_responses
    from rlhf_dist.models import load_causal_lm, load_scalar_model
    from rlhf_dist.engines.scoring import default_device
    from rlhf_dist.recipes.common import print_table, write_text_atomic
    from rlhf_dist.tasks.base import gold_parts
    from rlhf_dist.tasks.labeler import Labeler

    inputs = resolve_inputs(cfg)
    tok, task, base = inputs.tokenizer, inputs.task, cfg.baseline
    pad, device, n = tok.pad_token_id, default_device(), len(inputs.prompts)
    texts_of_prompts = [prompt_text(p) for p in inputs.prompts]
    labeler = Labeler.for_task(task, cfg.labeler_temperature)
    has_parts = callable(getattr(task, "gold_parts", None))  # optional in the task protocol
    print(f"== eval: {len(cfg.models)} models on {n} held-out prompts (T={cfg.temperature}, {cfg.max_new_tokens} new tokens, "
          f"seed {cfg.seed}); baseline {base}; {len(inputs.pretrain_seqs)} pretraining sequences; "
          f"{len(inputs.comparisons)} held-out comparisons", flush=True)

    # 1. One vLLM sample per prompt and model, in a child process each, before any model is
    #    loaded here (so a GPU is the engine's alone). The same seed for every model: the
    #    per-request random streams are equal, so differences come from the models, not the dice.
    samples: dict[str, tuple[list, list[str], list[float]]] = {}
    for name, path in cfg.models.items():
        start = time.perf_counter()
        rollouts = sample_responses(path, inputs.prompt_ids, cfg.temperature, cfg.max_new_tokens, cfg.seed)
        responses = [tok.decode(r.response_ids, skip_special_tokens=True) for r in rollouts]
        gold = [float(task.gold_score(p, y)) for p, y in zip(texts_of_prompts, responses)]
        samples[name] = (rollouts, responses, gold)
        print(f"   sampled {name:<10} gold {sum(gold) / n:.3f}  len {sum(len(r.response_ids) for r in rollouts) / n:.1f}  "
              f"({time.perf_counter() - start:.1f} s)", flush=True)

    base_model = load_causal_lm(cfg.models[base]).to(device)
    rm = load_scalar_model(cfg.reward_model).to(device) if cfg.reward_model else None
    results: dict[str, dict] = {}
    rows: dict[str, list[dict]] = {}
    for name, path in cfg.models.items():
        rollouts, responses, gold = samples[name]
        # 2. KL(pi || pi_base) per response: vLLM's processed log-probs of the policy minus the
        #    baseline's HF log-probs at the same temperature, summed over the sampled tokens
        base_lp = sequence_logprob_sums(base_model, rollouts, pad, cfg.temperature, cfg.micro_batch_size)
        kl = [sum(r.logprobs) - b for r, b in zip(rollouts, base_lp)]
        # 3. proxy score: the RM on the same token ids
        proxy = (rm_rewards(rm, [r.prompt_ids for r in rollouts], [r.response_ids for r in rollouts], pad, cfg.micro_batch_size)
                 if rm is not None else [None] * n)
        # 4. the labeler's verdict against the baseline's sample of the same prompt
        if name == base:
            outcomes, probs = [None] * n, [None] * n
            win, lo, hi = fair_coin_ci95(n)
            win_prob = 0.5
        else:
            rng, theirs = _judge_rng(cfg.seed, name), samples[base][1]
            outcomes = [labeler.judge(p, y, b, rng) for p, y, b in zip(texts_of_prompts, responses, theirs)]
            probs = [labeler.win_probability(p, y, b) for p, y, b in zip(texts_of_prompts, responses, theirs)]
            win, lo, hi = mean_ci95(outcomes)
            win_prob = sum(probs) / n
        # 5. alignment tax: NLL of held-out pretraining text
        nll = None
        if inputs.pretrain_seqs:
            model = base_model if name == base else load_causal_lm(path).to(device)
            nll = pretrain_nll(model, inputs.pretrain_seqs, pad, cfg.micro_batch_size)
            del model
        results[name] = {
            "path": path,
            "gold_score": sum(gold) / n,
            "gold_score_sem": standard_error(gold),
            "proxy_score": sum(proxy) / n if rm is not None else None,
            f"kl_to_{base}": sum(kl) / n,
            "pretrain_nll": nll,
            "response_len": sum(len(r.response_ids) for r in rollouts) / n,
            "eos_rate": sum(r.finished_with_eos for r in rollouts) / n,
            f"win_rate_vs_{base}": win,
            "win_rate_ci95": [lo, hi],
            f"win_prob_vs_{base}": win_prob,
            "win_rate_by_definition": name == base,
        }
        if has_parts:  # what changed, part by part (e.g. correctness vs habits)
            results[name]["gold_parts"] = mean_parts([gold_parts(task, p, y) for p, y in zip(texts_of_prompts, responses)])
        rows[name] = [
            {"model": name, "index": i, "prompt": p, "response": y, "prompt_ids": r.prompt_ids, "response_ids": r.response_ids,
             "logprobs": r.logprobs, "finished_with_eos": r.finished_with_eos, "gold": g, "proxy": q,
             f"kl_to_{base}": k, f"win_vs_{base}": o, f"win_prob_vs_{base}": w}
            for i, (p, y, r, g, q, k, o, w) in enumerate(zip(inputs.prompts, responses, rollouts, gold, proxy, kl, outcomes, probs))
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
    if rm is not None:
        report["rm_accuracy"], report["rm_pairs"] = rm_accuracy(rm, inputs.comparison_items, pad, cfg.micro_batch_size)
        if has_parts:
            report["rm_accuracy_by_part"] = rm_accuracy_by_part(rm, inputs, pad, cfg.micro_batch_size)
    if inputs.comparisons:
        from rlhf_dist.recipes.stages import labeler_ceiling

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
