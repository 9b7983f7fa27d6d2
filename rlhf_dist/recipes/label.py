"""Rankings of the policy's own samples by the simulated labeler (InstructGPT section 3.5: the
labelers rank K outputs of the SFT model for each prompt).

    rlhf-dist label --out runs/labels policy=runs/sft/model data=runs/data [k=4 prompts=2000 ...]

For each prompt, K responses are sampled from `policy` with vLLM; the task's labeler ranks them
(Plackett-Luce over the hidden gold scores, with the labeler's noise); the rows are written in
the comparisons schema `{prompt, responses, ranking}`:
    comparisons.jsonl          from the RL prompts (the training side)
    comparisons_heldout.jsonl  from the END of the held-out prompt file (evaluations use its start)
A reward model trained on these judges exactly the kind of text PPO will produce, which the
task's own comparisons (built from perturbed demonstrations) do not.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from rlhf_dist.config import parse_cli
from rlhf_dist.config.pipeline import LabelConfig
from rlhf_dist.runtime import write_text_atomic


def rank_samples(cfg: LabelConfig, prompt_sets: list[list], task, labeler, seeds: list[int]) -> list[tuple[list[dict], int]]:
    """K samples per prompt of each set (set j seeded seeds[j]; all sets in one engine), ranked:
    per set (rows, dropped). Prompts whose K responses are all identical carry no preference and
    are dropped (counted)."""
    from rlhf_dist.data import format_prompts, prompt_text
    from rlhf_dist.engines.vllm_rollout import SampleJob, sample_jobs_in_subprocess
    from rlhf_dist.models import load_tokenizer

    tok = load_tokenizer(cfg.policy)
    jobs = [SampleJob(cfg.policy, [p for p in format_prompts(tok, prompts) for _ in range(cfg.k)], cfg.temperature,
                      cfg.max_new_tokens, seed) for prompts, seed in zip(prompt_sets, seeds)]
    results = []
    for prompts, seed, rollouts in zip(prompt_sets, seeds, sample_jobs_in_subprocess(jobs)):
        texts = tok.batch_decode([r.response_ids for r in rollouts], skip_special_tokens=True)
        rng = random.Random(f"{seed}/labeler")
        rows, dropped = [], 0
        for i, prompt in enumerate(prompts):
            responses = texts[i * cfg.k:(i + 1) * cfg.k]
            if len(set(responses)) == 1:
                dropped += 1
                continue
            rows.append({"prompt": prompt, "responses": responses, "ranking": labeler.rank(prompt_text(prompt), responses, rng)})
        results.append((rows, dropped))
    return results


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def label(cfg: LabelConfig) -> dict:
    from rlhf_dist.data import load_prompts
    from rlhf_dist.models import check_model_dir
    from rlhf_dist.tasks.base import load_task
    from rlhf_dist.tasks.labeler import Labeler

    check_model_dir(cfg.policy, "policy")
    task = load_task(cfg.task)
    labeler = Labeler.for_task(task, cfg.labeler_temperature)
    train_prompts = load_prompts(Path(cfg.data) / "rl_prompts.jsonl")[: cfg.prompts]
    held_prompts = load_prompts(Path(cfg.data) / "eval_prompts.jsonl")[-cfg.heldout_prompts:] if cfg.heldout_prompts else []
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    sets, seeds = ([train_prompts, held_prompts], [cfg.seed, cfg.seed + 1]) if held_prompts else ([train_prompts], [cfg.seed])
    ranked = rank_samples(cfg, sets, task, labeler, seeds)
    train, dropped = ranked[0]
    held, dropped_held = ranked[1] if held_prompts else ([], 0)
    _write_jsonl(out / "comparisons.jsonl", train)
    _write_jsonl(out / "comparisons_heldout.jsonl", held)
    summary = {"comparisons": len(train), "comparisons_heldout": len(held), "dropped_identical": dropped + dropped_held,
               "k": cfg.k, "policy": cfg.policy}
    (out / "labels.json").write_text(json.dumps(summary, indent=2))
    print(f"   ranked {cfg.k} samples of {cfg.policy} for {len(train)} + {len(held)} held-out prompts "
          f"({dropped + dropped_held} prompts dropped: all samples identical)", flush=True)
    return {**summary, "train_file": str(out / "comparisons.jsonl"), "eval_file": str(out / "comparisons_heldout.jsonl")}


def main(argv: list[str]) -> int:
    label(parse_cli(LabelConfig, argv, "rlhf-dist label", __doc__))
    return 0
