"""The training loop shared by `pretrain`, `sft` and `rm`: epochs of seeded minibatches through the
learner group, with evaluation, DeepSpeed checkpoints, metrics and a final HF model folder.

Run folder layout (every stage):
    config.yaml        the resolved config
    metrics.jsonl      one JSON object per logged step (train) and per evaluation (eval/...)
    tb/                TensorBoard events
    checkpoints/       DeepSpeed checkpoints every `save_every` steps (resumable, sharded)
    model/             the final model in Hugging Face format (+ tokenizer)
    summary.json       the stage's headline numbers and wall time
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_dist.config import config_to_dict, save_config
from rlhf_dist.engines.deepspeed_engine import LearnerConfig, OptimConfig


@dataclass
class StageConfig:
    """Fields shared by every training stage (each stage subclasses it with its own defaults)."""

    out: str = field(default="", metadata={"help": "run folder (required)"})
    init: str = field(default="", metadata={"help": "model folder to start from (HF format, with tokenizer)"})
    train_file: str = field(default="", metadata={"help": "training data (JSONL or Parquet)"})
    eval_file: str = field(default="", metadata={"help": "held-out data; empty: hold out eval_fraction of train_file"})
    eval_fraction: float = field(default=0.05, metadata={"help": "share of train_file held out when eval_file is empty"})
    seed: int = field(default=0, metadata={"help": "data order and initialisation seed"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the training data"})
    batch_size: int = field(default=32, metadata={"help": "global batch (sequences, or prompts for rm) per optimizer step"})
    max_len: int = field(default=128, metadata={"help": "token budget per sequence (prompt + response)"})
    max_prompt_len: int | None = field(default=None, metadata={"help": "token budget for the prompt (default: what fits)"})
    truncation: str = field(default="middle", metadata={"help": "over-long prompts: middle | skip | error"})
    log_every: int = field(default=10, metadata={"help": "steps between metric lines"})
    eval_every: int = field(default=100, metadata={"help": "steps between evaluations (0: only at the end)"})
    save_every: int = field(default=0, metadata={"help": "steps between DeepSpeed checkpoints (0: none)"})
    ray_address: str = field(default="", metadata={"help": "Ray cluster address; empty: $RAY_ADDRESS or a local Ray"})
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("missing --out DIR")
        if self.truncation not in ("middle", "skip", "error"):
            raise ValueError(f"truncation={self.truncation!r}: expected middle, skip or error")
        if self.batch_size < 1 or self.epochs <= 0:
            raise ValueError("batch_size must be >= 1 and epochs > 0")


def ensure_ray(address: str = "") -> None:
    """Connect to the given cluster, or $RAY_ADDRESS, or start Ray in-process on this machine."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # address="local": always a fresh in-process instance, even when a `ray start` cluster runs on
        # this machine (plain ray.init would try to join it and refuse num_cpus).
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)


class RunLog:
    """metrics.jsonl + TensorBoard, one call per record."""

    def __init__(self, out: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # A new run in an old folder starts its logs afresh (there is no resume yet).
        shutil.rmtree(out / "tb", ignore_errors=True)
        self.file = (out / "metrics.jsonl").open("w")
        self.tb = SummaryWriter(str(out / "tb"))

    def write(self, step: int, record: dict) -> None:
        self.file.write(json.dumps({"step": step, **record}) + "\n")
        self.file.flush()
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        self.file.close()
        self.tb.close()


def split_eval(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out a seeded `fraction` of items (at least one) for evaluation."""
    import random

    order = list(range(len(items)))
    random.Random(f"{seed}/eval-split").shuffle(order)
    n_eval = max(1, int(round(fraction * len(items))))
    held = set(order[:n_eval])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def run_stage(cfg: StageConfig, objective: str, model_kind: str, train_items: list, eval_items: list,
              pad_id: int, summarize_eval) -> dict:
    """Train `objective` on `train_items`; returns the summary. `summarize_eval(sums) -> dict` turns
    the summed evaluation metrics into named numbers (e.g. loss, accuracy)."""
    from tqdm import tqdm

    from rlhf_dist.actors.learner_group import LearnerGroup, ModelSpec
    from rlhf_dist.data import minibatches

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    steps_per_epoch = len(train_items) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_items)} training items is less than one batch of {cfg.batch_size}")
    total_steps = max(1, math.floor(cfg.epochs * steps_per_epoch))
    ensure_ray(cfg.ray_address)
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
