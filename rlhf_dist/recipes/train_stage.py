"""The training loop shared by `pretrain`, `sft` and `rm`: epochs of seeded minibatches through the
learner group, with evaluation, checkpoints, metrics and a final HF model folder (the run folder's
layout: rlhf_dist/runtime.py).

Resume (`resume=auto`): a checkpoint `out/checkpoints/step_NNNNNN/` holds the learner's DeepSpeed
checkpoint (weights, optimizer, LR-schedule position) and the step; the data order is a function of
(seed, epoch), so the run continues at the next minibatch and repeats the uninterrupted run exactly.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

from rlhf_dist.config import config_to_dict, save_config
from rlhf_dist.config.stages import StageConfig
from rlhf_dist.runtime import RunLog, ensure_ray, latest_checkpoint, new_checkpoint, prepare_run_folder
from rlhf_dist.trackers import RUN_FOLDER_FILES, make_trackers, mlflow_store_in

# Everything a stage writes into its folder (what `overwrite=true` removes), the trackers' files included.
STAGE_ARTIFACTS = ("config.yaml", "metrics.jsonl", "summary.json", "tb", "checkpoints", "model", "init",
                   "samples_init.jsonl", "samples_sft.jsonl", *RUN_FOLDER_FILES)


def prepare_stage_folder(cfg: StageConfig) -> bool:
    """Refuse, resume or overwrite `cfg.out` before the stage writes anything; True when resuming.
    An MLflow folder inside `cfg.out` (log.mlflow_uri) counts as part of the run."""
    return prepare_run_folder(cfg.out, cfg.resume, cfg.overwrite, STAGE_ARTIFACTS + mlflow_store_in(cfg.log, cfg.out))


def run_stage(cfg: StageConfig, objective: str, model_kind: str, train_items: list, eval_items: list,
              pad_id: int, summarize_eval, resuming: bool = False,
              add_to_summary: Callable[[dict], None] | None = None) -> dict:
    """Train `objective` on `train_items`; returns the summary. `summarize_eval(sums) -> dict` turns
    the summed evaluation metrics into named numbers (e.g. loss, accuracy). `resuming`: continue
    from the newest complete checkpoint in `cfg.out` (`prepare_stage_folder`). `add_to_summary(summary)`:
    the stage's own results (gold of samples, the RM's bias, ...), added in place once the learner
    group has stopped and before the trackers get the summary."""
    from tqdm import tqdm

    from rlhf_dist.actors.learner_group import LearnerGroup, ModelSpec
    from rlhf_dist.actors.resources import Role, check_resources
    from rlhf_dist.data import minibatches

    out = Path(cfg.out)
    steps_per_epoch = len(train_items) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_items)} training items is less than one batch of {cfg.batch_size}")
    total_steps = max(1, math.floor(cfg.epochs * steps_per_epoch))
    ensure_ray(cfg.ray_address)
    lr = cfg.learner
    check_resources([Role("learner rank", lr.num_ranks, lr.cpus_per_rank, lr.gpus_per_rank)])  # before anything is written
    if lr.lora_rank:  # peft would fail inside a rank: refuse in one line first
        from rlhf_dist.models.lora import check_lora_targets

        check_lora_targets(cfg.init, lr.lora_targets, "learner.lora_targets", scalar=model_kind != "causal_lm")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    start = time.perf_counter()
    group = LearnerGroup(ModelSpec(cfg.init, model_kind, cfg.seed), cfg.learner, cfg.optim, cfg.batch_size, total_steps, pad_id)
    print(f"   {cfg.learner.num_ranks} learner rank(s), ZeRO-{cfg.learner.zero_stage}, {group.info[0]['params']:,} parameters on rank 0 "
          f"({group.info[0]['trainable_params']:,} trained{', LoRA rank %d' % lr.lora_rank if lr.lora_rank else ''}), "
          f"global batch {cfg.batch_size} = {cfg.learner.micro_batch_size} x {group.grad_accum} accum x {cfg.learner.num_ranks} ranks, "
          f"{total_steps} steps ({cfg.epochs:g} epochs of {len(train_items)} items); set-up {time.perf_counter() - start:.1f} s", flush=True)
    found = latest_checkpoint(out / "checkpoints") if resuming else None
    first = 0
    if found:
        group.load_checkpoint(found[0], "state")
        first, last_eval = found[1]["step"], found[1]["last_eval"]
        print(f"   resumed from {found[0]} (step {first})", flush=True)
    elif resuming:
        print(f"   resume=auto: no complete checkpoint in {out / 'checkpoints'}: starting from step 0", flush=True)
    log = RunLog(out, resume_step=first or None, trackers=make_trackers(cfg.log, out, config_to_dict(cfg)))
    if not first:
        last_eval = {}

    def evaluate(step: int) -> None:
        nonlocal last_eval
        last_eval = {f"eval/{k}": v for k, v in summarize_eval(group.evaluate(objective, eval_items)).items()}
        log.write(step, last_eval)
        tqdm.write("   eval @ step %d: %s" % (step, ", ".join(f"{k[5:]} {v:.4f}" for k, v in last_eval.items())))

    try:
        if not first:
            evaluate(0)
        bar = tqdm(total=total_steps, initial=first, desc=f"   {objective}", unit="step", dynamic_ncols=True, mininterval=1.0)
        step, train_start, units = first, time.perf_counter(), 0.0
        for epoch in range(first // steps_per_epoch, math.ceil(cfg.epochs)):
            batches = minibatches(len(train_items), cfg.batch_size, cfg.seed, epoch)  # steps_per_epoch of them
            for batch_indices in batches[step - epoch * steps_per_epoch:]:  # a resumed epoch skips the done ones
                if step == total_steps:
                    break
                sums = group.train_step(objective, [train_items[i] for i in batch_indices])
                step += 1
                units += sums.get("tokens", sums.get("prompts", 0.0))
                record = {f"train/{k}": v for k, v in summarize_eval(sums).items()}
                record.update({"train/lr": sums["lr"], "train/epoch": step / steps_per_epoch,
                               "train/units_per_s": units / (time.perf_counter() - train_start)})
                if "grad_norm" in sums:
                    record["train/grad_norm"] = sums["grad_norm"]
                if step % cfg.log_every == 0 or step == total_steps:
                    log.write(step, record)
                bar.set_postfix(loss=f"{record['train/loss']:.4f}", lr=f"{sums['lr']:.2e}")
                bar.update(1)
                if cfg.eval_every and step % cfg.eval_every == 0 and step != total_steps:
                    evaluate(step)
                if cfg.save_every and step % cfg.save_every == 0:
                    with new_checkpoint(out / "checkpoints", f"step_{step:06d}", {"step": step, "last_eval": last_eval},
                                        cfg.keep_checkpoints) as folder:
                        group.save_checkpoint(folder, "state")
        bar.close()
        evaluate(step)
        group.save_model(out / "model", tokenizer_path=cfg.init)
        peak_mb, optimizer_mb = group.peak_memory_mb(), group.optimizer_state_mb()
    finally:
        group.shutdown()
        log.close()
    summary = {"steps": step, "wall_time_s": time.perf_counter() - start, **last_eval, "model": str(out / "model"),
               "learner_peak_memory_mb": peak_mb, "learner_optimizer_state_mb": optimizer_mb,
               "trainable_params": group.info[0]["trainable_params"], "config": config_to_dict(cfg)}
    try:
        if add_to_summary is not None:
            add_to_summary(summary)
    except BaseException:
        log.close()  # again, with the error on its way out: the trackers end FAILED (KILLED for Ctrl-C)
        raise
    log.finish(summary, [out / "report.html"])
    return summary
