"""Checkpoints of a PPO run and resuming from them (`resume=auto`).

A checkpoint `out/checkpoints/iter_NNNNNN/` holds the learner's DeepSpeed checkpoints (policy and
critic: weights, AdamW states, LR-schedule position) and the driver's state (state.json, written
last: rlhf_dist/runtime.py `new_checkpoint`): the iteration, the KL controller's beta, the score
statistics, the ptx sampler's position and the evaluations so far. The prompt order and every
sampling seed are functions of (seed, iteration), so the iteration restores them.

Resuming a synchronous run (rollout.overlap=false) repeats the uninterrupted run exactly: the same
weights and optimizer states, the same prompts and seeds, the same driver state; the metrics match
to the last bit on the same machine (tests/test_recipes_ppo_resume.py). With rollout.overlap=true
the first batch after a resume is sampled with the checkpoint's weights rather than one version
older, so the run continues correctly but not bit for bit.
"""

from __future__ import annotations

from pathlib import Path

from rlhf_dist.runtime import latest_checkpoint, new_checkpoint, prepare_run_folder
from rlhf_dist.trackers import RUN_FOLDER_FILES, mlflow_store_in

# Everything a PPO run writes into its folder (what `overwrite=true` removes), the trackers' files included.
RUN_ARTIFACTS = ("config.yaml", "metrics.jsonl", "summary.json", "tb", "trajectories", "checkpoints", "model", "critic",
                 *RUN_FOLDER_FILES)
TAG = "state"  # the DeepSpeed tag inside each engine's folder


def prepare_ppo_folder(cfg) -> bool:
    """Refuse, resume or overwrite `cfg.out` (a PPOConfig's) before the run writes anything; True
    when resuming. An MLflow folder inside `cfg.out` (log.mlflow_uri) counts as part of the run."""
    return prepare_run_folder(cfg.out, cfg.resume, cfg.overwrite, RUN_ARTIFACTS + mlflow_store_in(cfg.log, cfg.out))


def save(out: Path, iteration: int, learner, kl_ctl, score_stats, ptx, evals: dict, keep: int) -> None:
    """Checkpoint after `iteration` iterations (every learner rank writes its shards)."""
    state = {"iteration": iteration, "beta": kl_ctl.beta,
             "score_stats": {"count": score_stats.count, "mean": score_stats.mean, "m2": score_stats.m2},
             "ptx": ptx.state_dict() if ptx else None, "evals": evals}
    with new_checkpoint(out / "checkpoints", f"iter_{iteration:06d}", state, keep) as folder:
        learner.save_checkpoint(folder, TAG)


def restore(out: Path, learner, kl_ctl, score_stats, prompts, ptx) -> tuple[int, dict]:
    """Load the newest complete checkpoint into the learner and the driver's state; returns
    (iteration to continue from, evaluations so far); (0, {}) when there is none."""
    found = latest_checkpoint(out / "checkpoints")
    folder, state = found if found else (None, {"iteration": 0, "evals": {}})
    for stale in (out / "trajectories").glob("iter_*"):  # written after the checkpoint: redone
        if int(stale.stem.split("_")[1]) >= state["iteration"]:
            stale.unlink()
    if folder is None:
        print(f"   resume=auto: no complete checkpoint in {out / 'checkpoints'}: starting from iteration 0", flush=True)
        return 0, {}
    learner.load_checkpoint(folder, TAG)
    kl_ctl.beta = state["beta"]
    score_stats.count, score_stats.mean, score_stats.m2 = (state["score_stats"][k] for k in ("count", "mean", "m2"))
    if ptx:
        ptx.load_state_dict(state["ptx"])
    prompts.load_state_dict({"iteration": state["iteration"]})
    print(f"   resumed from {folder} (iteration {state['iteration']})", flush=True)
    return state["iteration"], state["evals"]
