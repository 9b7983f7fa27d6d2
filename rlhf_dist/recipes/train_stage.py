"""The training loop shared by `pretrain`, `sft` and `rm`: epochs of seeded minibatches through the
learner group, with evaluation, DeepSpeed checkpoints, metrics and a final HF model folder (the run
folder's layout: rlhf_dist/runtime.py).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from rlhf_dist.config import config_to_dict, save_config
from rlhf_dist.config.stages import StageConfig
from rlhf_dist.runtime import RunLog, ensure_ray


def run_stage(cfg: StageConfig, objective: str, model_kind: str, train_items: list, eval_items: list,
              pad_id: int, summarize_eval) -> dict:
    """Train `objective` on `train_items`; returns the summary. `summarize_eval(sums) -> dict` turns
    the summed evaluation metrics into named numbers (e.g. loss, accuracy)."""
    from tqdm import tqdm

    from rlhf_dist.actors.learner_group import LearnerGroup, ModelSpec
    from rlhf_dist.data import minibatches

    from rlhf_dist.actors.resources import Role, check_resources

    out = Path(cfg.out)
    steps_per_epoch = len(train_items) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_items)} training items is less than one batch of {cfg.batch_size}")
    total_steps = max(1, math.floor(cfg.epochs * steps_per_epoch))
    ensure_ray(cfg.ray_address)
    lr = cfg.learner
    check_resources([Role("learner rank", lr.num_ranks, lr.cpus_per_rank, lr.gpus_per_rank)])  # before anything is written
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    start = time.perf_counter()
    group = LearnerGroup(ModelSpec(cfg.init, model_kind, cfg.seed), cfg.learner, cfg.optim, cfg.batch_size, total_steps, pad_id)
    print(f"   {cfg.learner.num_ranks} learner rank(s), ZeRO-{cfg.learner.zero_stage}, {group.info[0]['params']:,} parameters on rank 0, "
          f"global batch {cfg.batch_size} = {cfg.learner.micro_batch_size} x {group.grad_accum} accum x {cfg.learner.num_ranks} ranks, "
          f"{total_steps} steps ({cfg.epochs:g} epochs of {len(train_items)} items); set-up {time.perf_counter() - start:.1f} s", flush=True)
    log = RunLog(out)
    last_eval: dict = {}

    def evaluate(step: int) -> None:
        nonlocal last_eval
        last_eval = {f"eval/{k}": v for k, v in summarize_eval(group.evaluate(objective, eval_items)).items()}
        log.write(step, last_eval)
        tqdm.write("   eval @ step %d: %s" % (step, ", ".join(f"{k[5:]} {v:.4f}" for k, v in last_eval.items())))

    try:
        evaluate(0)
        bar = tqdm(total=total_steps, desc=f"   {objective}", unit="step", dynamic_ncols=True, mininterval=1.0)
        step, train_start, units = 0, time.perf_counter(), 0.0
        for epoch in range(math.ceil(cfg.epochs)):
            for batch_indices in minibatches(len(train_items), cfg.batch_size, cfg.seed, epoch):
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
                    group.save_checkpoint(out / "checkpoints", tag=f"step{step}")
        bar.close()
        evaluate(step)
        group.save_model(out / "model", tokenizer_path=cfg.init)
    finally:
        group.shutdown()
        log.close()
    summary = {"steps": step, "wall_time_s": time.perf_counter() - start, **last_eval, "model": str(out / "model"),
               "config": config_to_dict(cfg)}
    return summary
