"""Write every data file of a task for one seed, atomically, and report headroom and label quality.

    rlhf-dist task-data --out runs/data                 # built-in task, defaults (rlhf_dist/recipes/task_data.py)
    rlhf-dist task-data --out runs/data seed=1 n_sft=1000 k=4 labeler_temperature=0.05
    rlhf-dist task-data --out runs/echo task=examples/echo_task.py:task

Files (JSON Lines, keys sorted; see docs/tasks.md):
    pretrain.jsonl, pretrain_heldout.jsonl   {"text"}
    sft.jsonl                                 {"prompt", "response"}     imperfect demonstrations
                                              {"prompt", "turns"}        ... using the task's tool (tool_share)
    rl_prompts.jsonl, eval_prompts.jsonl      {"prompt"}                 disjoint
    comparisons.jsonl, comparisons_heldout.jsonl  {"prompt", "responses": [K], "ranking": [best first]}
    manifest.json                             seed, config, counts, sha256 of each file, statistics

Held-out by construction: a keyed hash splits the prompt space; eval prompts and held-out
comparisons come from the eval side, everything trained on (pretraining pairs, SFT, comparisons,
RL prompts) from the other. Every file has its own random stream derived from (seed, file name),
so changing one count leaves the other files byte-identical.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Callable, Optional

from . import base
from .labeler import Labeler, agreement_with_gold
from .probe import BagOfWordsRM, ranking_pairs
from ..config import ConfigError
from ..config.pipeline import TaskDataConfig as Config


# ---------------------------------------------------------------------------------- randomness
def stream(seed: int, name: str) -> random.Random:
    """An independent generator per (seed, stream name), via SHA-256 (Python's hash() is salted)."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def prompt_split(task, seed: int, eval_fraction: float) -> Callable[[str], bool]:
    """is_eval(prompt): a keyed hash of the task's prompt key (default the prompt itself), so a
    prompt's side never depends on how many prompts were drawn."""
    key_fn = getattr(task, "prompt_key", None) or (lambda p: p)

    def is_eval(prompt: str) -> bool:
        digest = hashlib.sha256(f"{seed}/split/{key_fn(prompt)}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2.0 ** 64 < eval_fraction

    return is_eval


def draw_prompts(task, rng: random.Random, n: int, keep: Callable[[str], bool], unique: bool,
                 what: str) -> list[str]:
    """n prompts with keep(prompt) true; distinct while the prompt space allows it."""
    out, seen, tries, budget = [], set(), 0, 200 * n + 10_000
    while len(out) < n:
        tries += 1
        if tries > budget:
            raise RuntimeError(f"could not draw {n} {what} in {budget} tries: the task's prompt space is too small")
        prompt = task.sample_prompt(rng)
        if not keep(prompt) or (unique and prompt in seen and tries < budget // 2):
            continue
        seen.add(prompt)
        out.append(prompt)
    return out


# ---------------------------------------------------------------------------------- files
def build_files(task, cfg: Config) -> tuple[dict[str, list[dict]], dict]:
    """All rows of all files, and the statistics for the manifest."""
    is_eval = prompt_split(task, cfg.seed, cfg.eval_fraction)
    train_side = lambda p: not is_eval(p)  # noqa: E731
    labeler = Labeler.for_task(task, cfg.labeler_temperature)

    def pretrain(name: str, n: int) -> list[dict]:
        rng, rows = stream(cfg.seed, name), []
        for _ in range(100 * n + 10_000):
            if len(rows) == n:
                return rows
            text = task.pretrain_text(rng)
            head, sep, _ = text.partition(base.RESPONSE_SEPARATOR)
            if not (sep and is_eval(head)):  # no eval prompt in any corpus
                rows.append({"text": text})
        if len(rows) < n:
            raise RuntimeError(f"{name}: the task's pretraining texts keep starting with eval prompts")
        return rows

    def comparisons(name: str, n: int, keep) -> list[dict]:
        prompts = draw_prompts(task, stream(cfg.seed, name + "/prompts"), n, keep, True, name)
        rng_cand, rng_label = stream(cfg.seed, name + "/candidates"), stream(cfg.seed, name + "/labels")
        rows = []
        for prompt in prompts:
            responses = base.candidates(task, prompt, rng_cand, cfg.k)
            rows.append({"prompt": prompt, "responses": responses,
                         "ranking": labeler.rank(prompt, responses, rng_label)})
        return rows

    sft_prompts = draw_prompts(task, stream(cfg.seed, "sft/prompts"), cfg.n_sft, train_side, False, "sft prompts")
    files = {
        "pretrain.jsonl": pretrain("pretrain", cfg.n_pretrain),
        "pretrain_heldout.jsonl": pretrain("pretrain_heldout", cfg.n_pretrain_heldout),
        "sft.jsonl": demonstrations(task, sft_prompts, stream(cfg.seed, "sft"), cfg.tool_share),
        "rl_prompts.jsonl": [{"prompt": p} for p in draw_prompts(
            task, stream(cfg.seed, "rl_prompts"), cfg.n_rl_prompts, train_side, True, "rl prompts")],
        "eval_prompts.jsonl": [{"prompt": p} for p in draw_prompts(
            task, stream(cfg.seed, "eval_prompts"), cfg.n_eval_prompts, is_eval, True, "eval prompts")],
        "comparisons.jsonl": comparisons("comparisons", cfg.n_comparisons, train_side),
        "comparisons_heldout.jsonl": comparisons("comparisons_heldout", cfg.n_comparisons_heldout, is_eval),
    }
    return files, statistics_of(task, cfg, files, labeler)


def demonstrations(task, prompts: list[str], rng: random.Random, tool_share: float) -> list[dict]:
    """SFT rows: {"prompt", "response"}, or {"prompt", "turns"} for a demonstration in several
    turns (policy, environment, ..., policy) from the task's `demonstrate_turns`, which is asked
    only when tool_share > 0 (so the rows without tools are those of `demonstrate`)."""
    if tool_share <= 0:
        return [{"prompt": p, "response": task.demonstrate(p, rng)} for p in prompts]
    turns_fn = getattr(task, "demonstrate_turns", None)
    if not callable(turns_fn):
        raise ConfigError(f"tool_share={tool_share}: task {task.name!r} has no demonstrate_turns(prompt, rng, p_tool)")
    rows = []
    for p in prompts:
        turns = [str(t) for t in turns_fn(p, rng, tool_share)]
        if not turns or len(turns) % 2 == 0:
            raise RuntimeError(f"task {task.name!r}: demonstrate_turns returned {len(turns)} turns, expected an odd "
                               f"number (policy, environment, ..., policy)")
        rows.append({"prompt": p, "turns": turns} if len(turns) > 1 else {"prompt": p, "response": turns[0]})
    return rows


def response_text(row: dict) -> str:
    """A demonstration's whole response as text: the response, or its turns joined by spaces (the
    decoded episode, as a reward source sees a rollout)."""
    return row["response"] if "response" in row else " ".join(row["turns"])


# ---------------------------------------------------------------------------------- statistics
def _mean(xs) -> Optional[float]:
    xs = list(xs)
    return round(statistics.fmean(xs), 4) if xs else None


def _sem(xs) -> Optional[float]:
    xs = list(xs)
    return round(statistics.stdev(xs) / len(xs) ** 0.5, 4) if len(xs) > 1 else None


def statistics_of(task, cfg: Config, files: dict[str, list[dict]], labeler: Labeler) -> dict:
    """Headroom (demonstrator vs optimal), label quality, and the exploit, for the manifest."""
    gold = task.gold_score
    sft = [{"prompt": r["prompt"], "response": response_text(r)} for r in files["sft.jsonl"]]
    eval_prompts = [r["prompt"] for r in files["eval_prompts.jsonl"]]
    demo_gold = [gold(r["prompt"], r["response"]) for r in sft]
    stats = {
        "demonstrator_mean_gold": _mean(demo_gold),
        "demonstrator_sem": _sem(demo_gold),
        "demonstrator_fraction_optimal": _mean(
            g >= gold(r["prompt"], task.optimal_response(r["prompt"])) - 1e-9 for g, r in zip(demo_gold, sft)),
        "optimal_mean_gold": _mean(gold(r["prompt"], task.optimal_response(r["prompt"])) for r in sft),
        "demonstrator_parts": _mean_parts(task, [(r["prompt"], r["response"]) for r in sft]),
        "length_gold_correlation": _correlation([len(r["response"].split()) for r in sft], demo_gold),
    }
    if cfg.tool_share > 0:
        stats["demonstrations_with_tool"] = _mean("turns" in r for r in files["sft.jsonl"])
    eval_rng = stream(cfg.seed, "stats/eval_demos")
    stats["eval_demonstrator_mean_gold"] = _mean(gold(p, task.demonstrate(p, eval_rng)) for p in eval_prompts)
    stats["eval_optimal_mean_gold"] = _mean(gold(p, task.optimal_response(p)) for p in eval_prompts)
    exploit = getattr(task, "exploit_response", None)
    if callable(exploit):
        stats["exploit_mean_gold"] = _mean(gold(p, exploit(p)) for p in eval_prompts)

    pair_rng = stream(cfg.seed, "stats/agreement")
    pair_prompts = draw_prompts(task, pair_rng, cfg.n_agreement_pairs, lambda p: True, False, "agreement prompts")
    gold_pairs = []
    for prompt in pair_prompts:
        a, b = base.candidates(task, prompt, pair_rng, 2)
        gold_pairs.append((gold(prompt, a), gold(prompt, b)))
    stats["labeler"] = {"temperature": cfg.labeler_temperature,
                        **_rounded(agreement_with_gold(gold_pairs, cfg.labeler_temperature, pair_rng))}

    rows = files["comparisons.jsonl"]
    stats["comparisons"] = {
        "mean_gold": _mean(gold(r["prompt"], y) for r in rows for y in r["responses"]),
        "fraction_all_tied": _mean(len({round(gold(r["prompt"], y), 9) for y in r["responses"]}) == 1 for r in rows),
    }
    if cfg.probe and rows:
        stats["probe_rm"] = _probe(task, rows, files["comparisons_heldout.jsonl"], eval_prompts, cfg.seed)
    stats["language"] = {
        "distinct_words_pretrain": len({w for r in files["pretrain.jsonl"]
                                        for w in re.findall(r"\w+", r["text"].lower())}),
        "max_prompt_chars": max((len(r["prompt"]) for r in sft), default=0),
        "mean_response_words": _mean(len(r["response"].split()) for r in sft),
        "max_response_words": max((len(r["response"].split()) for r in sft), default=0),
        "mean_pretrain_chars": _mean(len(r["text"]) for r in files["pretrain.jsonl"]),
    }
    return stats


def _mean_parts(task, pairs) -> Optional[dict]:
    """Mean of each gold part (when the task exposes them) over (prompt, response) pairs."""
    if not callable(getattr(task, "gold_parts", None)) or not pairs:
        return None
    parts = [base.gold_parts(task, p, y) for p, y in pairs]
    return {k: _mean(float(d[k]) for d in parts) for k in sorted(parts[0])}


def _correlation(xs, ys) -> Optional[float]:
    try:
        return round(statistics.correlation(xs, ys), 4)
    except (statistics.StatisticsError, ValueError):  # fewer than 2 points, or a constant
        return None


def _rounded(d: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


def _probe(task, rows, heldout, eval_prompts, seed: int) -> dict:
    """Fit the shallow RM on the comparisons; does it prefer the exploit to a demonstration?"""
    rm = BagOfWordsRM().fit(ranking_pairs(rows), seed=seed)
    gold = task.gold_score
    result = {"heldout_pair_accuracy": round(rm.accuracy(ranking_pairs(heldout)), 4) if heldout else None,
              "top_features": [[f, round(w, 3)] for f, w in rm.top_features(6)]}
    exploit = getattr(task, "exploit_response", None)
    if callable(exploit) and eval_prompts:
        rng = stream(seed, "stats/probe_demos")
        fooled = []
        for p in eval_prompts:
            demo, hack = task.demonstrate(p, rng), exploit(p)
            if gold(p, hack) < gold(p, demo):  # gold says the exploit is worse ...
                fooled.append(rm.score(hack) > rm.score(demo))  # ... does the shallow RM disagree?
        result["exploit_beats_better_demo"] = _mean(fooled)
        result["mean_reward"] = {
            "exploit": _mean(rm.score(exploit(p)) for p in eval_prompts),
            "optimal": _mean(rm.score(task.optimal_response(p)) for p in eval_prompts),
        }
    return result


# ---------------------------------------------------------------------------------- writing
def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")


def write_all(out: Path, files: dict[str, list[dict]], manifest: dict) -> None:
    """Write into a temporary sibling directory, then rename it into place: a failure leaves
    nothing half-written. An existing `out` is replaced only if it is empty or was written here."""
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / "manifest.json").is_file())):
        raise ConfigError(f"refusing to replace {str(out)!r}: it exists and has no manifest.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name, rows in files.items():
            write_jsonl(tmp / name, rows)
        manifest["sha256"] = {name: _sha256(tmp / name) for name in files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def report(manifest: dict, seconds: float) -> str:
    """The lines printed after a generation."""
    s = manifest["stats"]
    lab = s["labeler"]
    lines = [
        f"task {manifest['task_name']} ({manifest['config']['task']}), seed {manifest['seed']}: "
        f"{seconds:.1f} s",
        f"demonstrator mean gold {s['demonstrator_mean_gold']} (+- {s['demonstrator_sem']}), "
        f"optimal mean gold {s['optimal_mean_gold']}, demonstrations optimal {s['demonstrator_fraction_optimal']}",
        f"eval prompts: demonstrator {s['eval_demonstrator_mean_gold']}, optimal {s['eval_optimal_mean_gold']}"
        + (f", exploit {s['exploit_mean_gold']}" if "exploit_mean_gold" in s else ""),
        f"labeler (T={lab['temperature']}) agrees with gold on K=2 pairs: {lab['sampled']} "
        f"(expected {lab['expected']}, {lab['pairs']} pairs, {lab['ties_excluded']} ties excluded)",
    ]
    if "probe_rm" in s:
        p = s["probe_rm"]
        line = f"bag-of-words RM (no prompt, surface only): held-out pair accuracy {p['heldout_pair_accuracy']}"
        if "exploit_beats_better_demo" in p:
            line += f", scores the exploit above a gold-better demonstration {p['exploit_beats_better_demo']}"
        lines.append(line)
    lines.append("rows: " + ", ".join(f"{k} {v}" for k, v in manifest["counts"].items()))
    return "\n".join(lines)


def generate(out: Path, cfg: Config) -> dict:
    """Load the task, build and write everything; returns the manifest."""
    task = base.load_task(cfg.task)
    files, stats = build_files(task, cfg)
    manifest = {
        "seed": cfg.seed,
        "task": cfg.task,
        "task_name": task.name,
        "counts": {name: len(rows) for name, rows in files.items()},
        # the headline numbers, also in "stats" with their details
        "demonstrator_mean_gold": stats["demonstrator_mean_gold"],
        "optimal_mean_gold": stats["optimal_mean_gold"],
        "exploit_mean_gold": stats.get("exploit_mean_gold"),
        "labeler_agreement_k2": stats["labeler"]["sampled"],
        "response_separator": base.RESPONSE_SEPARATOR,
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "out"},  # same data wherever it is written
        "stats": stats,
    }
    write_all(out, files, manifest)
    return manifest
