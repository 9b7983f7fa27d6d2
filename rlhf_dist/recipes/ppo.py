"""Stage 3: PPO(-ptx) with vLLM rollout workers, frozen reward and reference actors, a DeepSpeed
learner group holding the policy and the critic, weight sync, and an Arrow trajectory buffer.

    rlhf-dist ppo --config configs/tiny.yaml                       # local: Ray starts in-process
    rlhf-dist ppo --config configs/tiny.yaml rollout.num_workers=2 learner.num_ranks=2
    rlhf-dist ppo --out runs/ppo sft=runs/sft/model reward_model=runs/rm/model data=runs/data
    launch/submit.sh configs/tiny.yaml ...                         # the same run on a Ray cluster

With `sft=` and `reward_model=` empty, the models come from the folder `models=` (built there
first with pretrain -> SFT -> RM on the task's data when missing).

One iteration (`train_ppo`, the driver; every arrow is a call on a group of Ray actors):
  prompts -> rollout workers (vLLM; Arrow rows with token ids, log-probs, weight version)
          -> reward actors (RM score) || reference actors (SFT log-probs)
          -> learner: old log-probs and values -> KL-shaped rewards, GAE, whitening (driver)
          -> PPO epochs over minibatches (+ ptx batches) -> weights to every rollout worker -> log
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_dist.config import config_to_dict, parse_cli, save_config
from rlhf_dist.engines.deepspeed_engine import LearnerConfig, OptimConfig
from rlhf_dist.tasks.base import DEFAULT_TASK


@dataclass
class RolloutConfig:
    num_workers: int = field(default=1, metadata={"help": "vLLM rollout workers (Ray actors), independent of learner ranks"})
    cpus_per_worker: float = field(default=0.25, metadata={"help": "Ray CPUs per rollout worker"})
    gpus_per_worker: float = field(default=0.0, metadata={"help": "Ray GPUs per rollout worker (GPU clusters: 1)"})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM tensor parallelism per worker (GPU)"})
    gpu_memory_utilization: float = field(default=0.85, metadata={"help": "vLLM's share of its GPU's memory"})
    dtype: str = field(default="float32", metadata={"help": "vLLM dtype: float32 (CPU) | bfloat16 (GPU)"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature, also applied to every learner/reference log-prob (N+: 0.7; InstructGPT: 1)"})
    top_p: float = field(default=1.0, metadata={"help": "must be 1: PPO needs samples from the full distribution (ppo-details 13)"})
    top_k: int = field(default=-1, metadata={"help": "must be -1 (off), same reason"})
    max_new_tokens: int = field(default=48, metadata={"help": "response budget; responses cut here have no EOS"})
    samples_per_prompt: int = field(default=1, metadata={"help": "responses sampled per prompt"})
    weight_transport: str = field(default="auto", metadata={"help": "auto | object_store (CPU) | broadcast (NCCL on GPU, gloo on CPU)"})
    bucket_mb: int = field(default=256, metadata={"help": "weight-sync bucket size (MiB)"})
    max_staleness: int = field(default=0, metadata={"help": "allowed policy versions between sampling and training (0: on-policy)"})
    overlap: bool = field(default=False, metadata={"help": "sample the next batch while the learner trains on this one "
                                                        "(one step off-policy: needs max_staleness >= 1)"})

    def __post_init__(self) -> None:
        if self.top_p != 1.0 or self.top_k not in (-1, 0):
            raise ValueError(f"rollout.top_p={self.top_p}, rollout.top_k={self.top_k}: PPO's ratio and KL assume samples "
                             "from the full distribution at the temperature; use top_p=1 and top_k=-1 (ppo-details 13)")
        if self.temperature <= 0:
            raise ValueError(f"rollout.temperature={self.temperature}: must be > 0 (greedy samples have no log-probs to train on)")
        if self.weight_transport not in ("auto", "object_store", "broadcast"):
            raise ValueError(f"rollout.weight_transport={self.weight_transport!r}: expected auto, object_store or broadcast")
        if self.overlap and self.max_staleness < 1:
            raise ValueError("rollout.overlap=true samples with weights one version old: set rollout.max_staleness >= 1")
        if self.num_workers < 1 or self.samples_per_prompt < 1:
            raise ValueError("rollout.num_workers and rollout.samples_per_prompt must be >= 1")


@dataclass
class ScorerConfig:
    num_actors: int = field(default=1, metadata={"help": "actors holding a copy of this frozen model"})
    cpus_per_actor: float = field(default=0.25, metadata={"help": "Ray CPUs per actor"})
    gpus_per_actor: float = field(default=0.0, metadata={"help": "Ray GPUs per actor (GPU clusters: e.g. 0.5 or 1)"})
    micro_batch_size: int = field(default=16, metadata={"help": "rows per forward pass"})
    dtype: str = field(default="float32", metadata={"help": "float32 (CPU) | bfloat16 (GPU)"})


@dataclass
class PPOAlgoConfig:
    kl_coef: float = field(default=0.02, metadata={"help": "beta of the per-token KL penalty (InstructGPT 0.02, N+ 0.05)"})
    kl_target: float | None = field(default=None, metadata={"help": "adaptive beta: target KL per sequence (null: fixed beta)"})
    kl_horizon: float = field(default=10000.0, metadata={"help": "adaptive beta horizon in episodes (Ziegler et al.)"})
    kl_estimator: str = field(default="k1", metadata={"help": "k1 | k2 | k3 estimator in the reward (ppo-details 23)"})
    gamma: float = field(default=1.0, metadata={"help": "GAE discount (InstructGPT: none)"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda"})
    clip_eps: float = field(default=0.2, metadata={"help": "policy ratio clip"})
    clip_eps_high: float | None = field(default=None, metadata={"help": "upper ratio clip (null: clip_eps)"})
    value_clip: float | None = field(default=0.2, metadata={"help": "value clip around the old values (null: unclipped)"})
    vf_coef: float = field(default=1.0, metadata={"help": "value-loss weight (separate critic: scales its gradient only)"})
    entropy_coef: float = field(default=0.0, metadata={"help": "entropy bonus (off: Secrets-I, N+)"})
    epochs: int = field(default=1, metadata={"help": "PPO epochs per rollout batch (InstructGPT 1, N+ 4)"})
    minibatch_size: int = field(default=32, metadata={"help": "trajectories per optimizer step (all ranks)"})
    whiten_advantages: bool = field(default=True, metadata={"help": "whiten advantages over the batch's valid tokens"})
    whiten_rewards: bool = field(default=False, metadata={"help": "whiten token rewards, mean kept (N+ detail 24: off)"})
    score_norm: str = field(default="none", metadata={"help": "none | running: normalise RM scores by running mean/std (Secrets-I)"})
    score_clip: float | None = field(default=None, metadata={"help": "clip normalised scores to +-this (with score_norm=running)"})
    missing_eos_penalty: float | None = field(default=1.0, metadata={"help": "subtracted from the score of responses with no EOS (null: off)"})
    ptx_coef: float = field(default=0.0, metadata={"help": "gamma of PPO-ptx (InstructGPT 27.8); 0: plain PPO"})
    ptx_ratio: float = field(default=8.0, metadata={"help": "pretraining sequences per RL episode in each minibatch (InstructGPT 8)"})
    ptx_max_len: int = field(default=96, metadata={"help": "token budget of a pretraining sequence"})

    def __post_init__(self) -> None:
        if self.kl_estimator not in ("k1", "k2", "k3"):
            raise ValueError(f"ppo.kl_estimator={self.kl_estimator!r}: expected k1, k2 or k3")
        if self.score_norm not in ("none", "running"):
            raise ValueError(f"ppo.score_norm={self.score_norm!r}: expected none or running")
        if self.epochs < 1 or self.minibatch_size < 1:
            raise ValueError("ppo.epochs and ppo.minibatch_size must be >= 1")


@dataclass
class PPOConfig:
    out: str = field(default="", metadata={"help": "run folder (required)"})
    task: str = field(default=DEFAULT_TASK, metadata={"help": "task whose gold scorer grades samples (monitoring only: PPO sees the RM)"})
    data: str = field(default="", metadata={"help": "task-data folder (rl_prompts.jsonl, eval_prompts.jsonl, pretrain.jsonl)"})
    prompts_file: str = field(default="", metadata={"help": "RL prompts {prompt} (default: data/rl_prompts.jsonl)"})
    eval_prompts_file: str = field(default="", metadata={"help": "held-out prompts (default: data/eval_prompts.jsonl)"})
    ptx_file: str = field(default="", metadata={"help": "ptx data (default: data/pretrain.jsonl): pretraining texts {text} and/or "
                                                          "demonstrations {prompt, response}; several files: comma-separated"})
    sft: str = field(default="", metadata={"help": "SFT model folder: the policy's start and the frozen reference"})
    reward_model: str = field(default="", metadata={"help": "reward model folder (frozen)"})
    reward_source: str = field(default="rm", metadata={"help": "rm | gold: train on the task's hidden gold scorer instead of "
                                                              "the RM (a rule-based reward: what RL reaches with a perfect RM)"})
    critic: str = field(default="", metadata={"help": "critic's start (default: the reward model, InstructGPT C.4)"})
    models: str = field(default="runs/tiny_models", metadata={"help": "with sft/reward_model empty: find (or build) them here"})
    build_size: str = field(default="tiny", metadata={"help": "size of the models built in `models` (tiny|small)"})
    seed: int = field(default=0, metadata={"help": "prompt order, sampling and initialisation seed"})
    iterations: int = field(default=20, metadata={"help": "PPO iterations (rollout batch -> update -> weight push)"})
    prompts_per_iteration: int = field(default=64, metadata={"help": "prompts sampled per iteration (x samples_per_prompt rows)"})
    max_prompt_len: int = field(default=64, metadata={"help": "prompt token budget (longer prompts: truncation)"})
    truncation: str = field(default="middle", metadata={"help": "over-long prompts: middle | skip | error"})
    eval_prompts: int = field(default=128, metadata={"help": "held-out prompts for gold/proxy/KL evaluation (0: none)"})
    eval_every: int = field(default=0, metadata={"help": "iterations between evaluations (0: only before and after)"})
    save_every: int = field(default=0, metadata={"help": "iterations between DeepSpeed checkpoints (0: none)"})
    write_trajectories: bool = field(default=True, metadata={"help": "write every iteration's Arrow rows to out/trajectories"})
    trajectory_format: str = field(default="parquet", metadata={"help": "parquet | arrow (IPC)"})
    ray_address: str = field(default="", metadata={"help": "Ray cluster address; empty: $RAY_ADDRESS or a local Ray"})
    learner: LearnerConfig = field(default_factory=lambda: LearnerConfig(micro_batch_size=8))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, schedule="constant", warmup_steps=10, grad_clip=1.0))
    critic_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, schedule="constant", warmup_steps=10, grad_clip=1.0))
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: ScorerConfig = field(default_factory=ScorerConfig)
    reference: ScorerConfig = field(default_factory=ScorerConfig)
    ppo: PPOAlgoConfig = field(default_factory=PPOAlgoConfig)

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("missing --out DIR")
        rows = self.prompts_per_iteration * self.rollout.samples_per_prompt
        if rows % self.ppo.minibatch_size:
            raise ValueError(f"prompts_per_iteration x rollout.samples_per_prompt = {rows} is not divisible by "
                             f"ppo.minibatch_size {self.ppo.minibatch_size}")
        if self.iterations < 1:
            raise ValueError("iterations must be >= 1")
        if self.reward_source not in ("rm", "gold"):
            raise ValueError(f"reward_source={self.reward_source!r}: expected rm or gold")
        if self.trajectory_format not in ("parquet", "arrow"):
            raise ValueError(f"trajectory_format={self.trajectory_format!r}: expected parquet or arrow")


# ------------------------------------------------------------------------------------------------
# The driver
# ------------------------------------------------------------------------------------------------


def train_ppo(cfg: PPOConfig) -> dict:
    from tqdm import tqdm

    from rlhf_dist.algo import explained_variance, make_kl_controller, ppo_targets
    from rlhf_dist.buffer import TrajectoryWriter, add_columns, to_padded
    from rlhf_dist.recipes.train_stage import RunLog

    out = Path(cfg.out)
    data = load_ppo_data(cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    start = time.perf_counter()
    system = PPOSystem(cfg, data)
    log, writer = RunLog(out), TrajectoryWriter(out / "trajectories", cfg.trajectory_format)
    kl_ctl = make_kl_controller(cfg.ppo.kl_coef, cfg.ppo.kl_target, cfg.ppo.kl_horizon)
    evals = {"sft": system.evaluate("sft", out, log, 0)} if cfg.eval_prompts else {}
    bar = tqdm(total=cfg.iterations, desc="   ppo", unit="it", dynamic_ncols=True, mininterval=1.0)
    pending = system.rollout(0)
    try:
        for it in range(cfg.iterations):
            t0, version = time.perf_counter(), it  # the learner's weights are version `it`
            # 1. Sample prompts; the rollout workers sample responses (Arrow rows, with the weight version).
            table = pending.result()
            if cfg.rollout.overlap and it + 1 < cfg.iterations:
                pending = system.rollout(it + 1)  # sampled with version `it` while the learner trains
            staleness = version - min(table.column("policy_version").to_pylist())
            if staleness > cfg.rollout.max_staleness:
                raise RuntimeError(f"iteration {it}: samples are {staleness} versions old (rollout.max_staleness={cfg.rollout.max_staleness})")
            t1 = time.perf_counter()
            # 2. Frozen models, in parallel: RM score and reference log-probs. The hidden gold score is
            #    monitoring only, unless reward_source=gold makes it the score (and no RM runs).
            gold = system.gold_scores(table)
            scores, ref_logprobs = system.score_and_reference(table, gold if cfg.reward_source == "gold" else None)
            table = add_columns(table, score=scores, ref_logprobs=ref_logprobs)
            t2 = time.perf_counter()
            # 3. Learner: log-probs and values before the update ("old"); the gap to vLLM is logged.
            old_logprobs, values, entropy = system.learner.forward_old(table)
            table = add_columns(table, old_logprobs=old_logprobs, values=values)
            # 4. KL-shaped token rewards -> GAE -> advantage whitening (pure functions, whole batch).
            t = to_padded(table, data.pad_id, columns=["score", "finished_with_eos", "rollout_logprobs", "ref_logprobs", "old_logprobs", "values"])
            c, mask = t.columns, t.response_mask
            score = system.normalize_scores(c["score"])
            targets = ppo_targets(score, c["old_logprobs"], c["ref_logprobs"], c["values"], mask, c["finished_with_eos"],
                                  kl_ctl.beta, cfg.ppo.kl_estimator, cfg.ppo.gamma, cfg.ppo.lam, cfg.ppo.missing_eos_penalty,
                                  cfg.ppo.whiten_rewards, cfg.ppo.whiten_advantages)
            table = add_columns(table, advantages=targets.advantages, returns=targets.returns, kl=targets.kl_sum)
            # 5. PPO epochs over minibatches (each a fresh permutation), with the ptx batches.
            steps = [system.learner.ppo_step(table.take(rows), system.ptx_batch())
                     for epoch in range(cfg.ppo.epochs) for rows in system.minibatches(it, epoch, table.num_rows)]
            t3 = time.perf_counter()
            # 6. New weights to every rollout worker, stamped version it + 1.
            sync = system.learner.push_weights(system.rollout_group.workers, version + 1, cfg.rollout.weight_transport,
                                               cfg.rollout.bucket_mb * 2**20)
            t4 = time.perf_counter()
            if not cfg.rollout.overlap and it + 1 < cfg.iterations:
                pending = system.rollout(it + 1)
            kl_mean, beta = targets.kl_sum.mean().item(), kl_ctl.beta
            kl_ctl.update(kl_mean, table.num_rows)
            # 7. Log, keep the trajectories, evaluate, checkpoint.
            gap = (c["rollout_logprobs"] - c["old_logprobs"]).abs()[mask]
            record = {
                "objective/score": c["score"].mean().item(), "objective/kl": kl_mean,
                "objective/rlhf_reward": (targets.score - beta * targets.kl_sum).mean().item(),
                "objective/beta": beta, "gold/train_mean": sum(gold) / len(gold),
                "rollout/response_len": mask.sum(1).float().mean().item(),
                "rollout/eos_rate": c["finished_with_eos"].float().mean().item(),
                "rollout/logprob_gap_mean": gap.mean().item(), "rollout/logprob_gap_max": gap.max().item(),
                "rollout/staleness": staleness, "rollout/entropy": _list_mean(entropy),
                "value/explained_variance": explained_variance(c["values"], targets.returns, mask),
                **ppo_step_metrics(steps),
                "time/rollout_s": t1 - t0, "time/score_s": t2 - t1, "time/learner_s": t3 - t2,
                "time/sync_s": t4 - t3, "time/sync_push_s": sync.get("seconds", 0.0),
            }
            if cfg.write_trajectories:
                writer.write(it, table)
            record["time/iteration_s"] = time.perf_counter() - t0
            log.write(it + 1, record)
            bar.set_postfix(score=f"{record['objective/score']:.3f}", gold=f"{record['gold/train_mean']:.3f}", kl=f"{kl_mean:.2f}")
            bar.update(1)
            if cfg.eval_prompts and cfg.eval_every and (it + 1) % cfg.eval_every == 0 and it + 1 < cfg.iterations:
                evals[f"iter{it + 1}"] = system.evaluate(f"iter{it + 1}", out, log, it + 1)
            if cfg.save_every and (it + 1) % cfg.save_every == 0:
                system.learner.save_checkpoint(out / "checkpoints", tag=f"iter{it + 1}")
        bar.close()
        if cfg.eval_prompts:
            evals["ppo"] = system.evaluate("ppo", out, log, cfg.iterations)
        system.learner.save(out / "model", out / "critic", data.sft)
    finally:
        system.shutdown()
        log.close()
    summary = {"iterations": cfg.iterations, "wall_time_s": time.perf_counter() - start, "eval": evals,
               "model": str(out / "model"), "critic": str(out / "critic"), "sft": data.sft,
               "reward_model": data.reward_model, "config": config_to_dict(cfg)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if "sft" in evals and "ppo" in evals:
        print(f"   held-out gold: SFT {evals['sft']['gold']:.3f} -> PPO {evals['ppo']['gold']:.3f}; RM score "
              f"{evals['sft']['proxy']:.3f} -> {evals['ppo']['proxy']:.3f}; KL(PPO || SFT) {evals['ppo']['kl']:.2f} nats/response")
    return summary


def ppo_step_metrics(steps: list[dict]) -> dict:
    """Token means over all PPO steps of the iteration, plus the first minibatch's on-policy check
    (ratio 1 and clip fraction 0 when sampling and training weights are the same: ppo-details 37)."""
    tok = sum(s["tokens"] for s in steps)
    first = steps[0]
    m = {
        "loss/policy": sum(s["pg_loss_sum"] for s in steps) / tok,
        "loss/value": sum(s["vf_loss_sum"] for s in steps) / tok,
        "policy/approx_kl": sum(s["approx_kl_sum"] for s in steps) / tok,
        "policy/clipfrac": sum(s["clipfrac_sum"] for s in steps) / tok,
        "policy/ratio_mean": sum(s["ratio_sum"] for s in steps) / tok,
        "policy/ratio_max": max(s["ratio_max"] for s in steps),
        "policy/entropy": sum(s["entropy_sum"] for s in steps) / tok,
        "value/clipfrac": sum(s["vf_clipfrac_sum"] for s in steps) / tok,
        "policy/first_minibatch_ratio_dev_max": first["ratio_dev_max"],
        "policy/first_minibatch_clipfrac": first["clipfrac_sum"] / first["tokens"],
        "policy/lr": steps[-1]["policy_lr_max"], "value/lr": steps[-1]["critic_lr_max"],
    }
    if "ptx_tokens" in first:
        m["ptx/nll"] = sum(s["ptx_nll_sum"] for s in steps) / sum(s["ptx_tokens"] for s in steps)
    for name in ("policy_grad_norm_max", "critic_grad_norm_max"):
        if name in first:
            m[f"{name.split('_')[0]}/grad_norm"] = sum(s[name] for s in steps) / len(steps)
    return m


def _list_mean(array) -> float:
    import pyarrow.compute as pc

    return float(pc.mean(pc.list_flatten(array)).as_py())


# ------------------------------------------------------------------------------------------------
# The actors of one run, and the data they read
# ------------------------------------------------------------------------------------------------


@dataclass
class PPOData:
    sft: str
    reward_model: str
    critic: str
    pad_id: int
    prompts: list  # prompt objects (str or messages), index = prompt_id
    prompt_ids: list  # formatted token ids, same order
    eval_prompts: list
    eval_prompt_ids: list
    ptx: list  # tokenised pretraining sequences (empty without ptx)
    tokenizer: object  # the SFT model's (the RM shares it)


def load_ppo_data(cfg: PPOConfig) -> PPOData:
    from rlhf_dist.data import format_prompts, load_prompts, tokenize_prompts
    from rlhf_dist.models import load_tokenizer

    sft, reward_model = cfg.sft, cfg.reward_model
    for key, path in (("sft", sft), ("reward_model", reward_model), ("critic", cfg.critic)):
        if path and not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"{key}={path}: not a model folder (no config.json); models load from local paths only")
    if not sft or not reward_model:
        sft, reward_model, built_data = find_or_build_models(cfg)
        if not cfg.data:
            cfg.data = built_data
    files = {}
    for key, name in (("prompts_file", "rl_prompts.jsonl"), ("eval_prompts_file", "eval_prompts.jsonl"), ("ptx_file", "pretrain.jsonl")):
        value = getattr(cfg, key) or (str(Path(cfg.data) / name) if cfg.data else "")
        files[key] = value
    if not files["prompts_file"]:
        raise ValueError("give data=DIR (a task-data folder) or prompts_file=FILE")
    tok = load_tokenizer(sft)
    rm_tok = load_tokenizer(reward_model)
    if rm_tok.get_vocab() != tok.get_vocab():
        raise ValueError(f"reward_model={reward_model}: its tokenizer differs from the SFT model's ({sft}); "
                         "the RM scores the policy's token ids, so both must share one tokenizer")

    def prompts_and_ids(path: str, limit: int | None):
        prompts = load_prompts(path)[:limit]
        if cfg.truncation == "skip":  # drop here, so prompt objects stay aligned with their ids
            prompts = [p for p, ids in zip(prompts, format_prompts(tok, prompts)) if len(ids) <= cfg.max_prompt_len]
        ids, _ = tokenize_prompts(prompts, tok, cfg.max_prompt_len, cfg.truncation)
        if not ids:
            raise ValueError(f"{path}: no prompt fits max_prompt_len={cfg.max_prompt_len}")
        return prompts, ids

    prompts, prompt_ids = prompts_and_ids(files["prompts_file"], None)
    eval_prompts, eval_ids = ([], [])
    if cfg.eval_prompts:
        if not Path(files["eval_prompts_file"]).exists():
            raise FileNotFoundError(f"{files['eval_prompts_file']}: no held-out prompts (set eval_prompts=0 to skip evaluation)")
        eval_prompts, eval_ids = prompts_and_ids(files["eval_prompts_file"], cfg.eval_prompts)
    ptx: list = []
    if cfg.ppo.ptx_coef:
        ptx = ptx_sequences(files["ptx_file"], tok, cfg.ppo.ptx_max_len, cfg.ppo.ptx_coef)
    return PPOData(sft, reward_model, cfg.critic or reward_model, tok.pad_token_id, prompts, prompt_ids,
                   eval_prompts, eval_ids, ptx, tok)


def ptx_sequences(spec: str, tok, max_len: int, ptx_coef: float) -> list[list[int]]:
    """Token sequences of the ptx mix, from every file of `spec` (comma-separated), in order.

    A file holds pretraining texts `{text}` (InstructGPT's ptx: the pretraining distribution) or
    demonstrations `{prompt, response}` / `{messages}`, which enter as the very token ids SFT
    trained on (prompt + response + EOS; the LM loss covers every token). Why demonstrations:
    PPO erodes the task skill SFT taught as well as general language modelling (the alignment
    tax on the task itself), and a corpus whose task texts are careless cannot protect it
    (README, "What PPO achieves here").
    """
    from rlhf_dist.data import load_lm_data, tokenize_demonstrations, tokenize_texts

    paths = [p.strip() for p in spec.split(",") if p.strip()]
    if not paths:
        raise FileNotFoundError(f"ppo.ptx_coef={ptx_coef} needs ptx data: set ptx_file=FILE (or data=DIR with pretrain.jsonl)")
    out: list[list[int]] = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"ppo.ptx_coef={ptx_coef} needs ptx data: ptx_file={path!r} not found")
        rows = load_lm_data(path)
        encode = tokenize_texts if isinstance(rows[0], str) else tokenize_demonstrations
        out += encode(rows, tok, max_len)[0]
    return out


class PPOSystem:
    """Starts every role as Ray actors from the config, and holds the small driver-side state
    (prompt order, ptx order, score statistics). The driver loop calls its coarse methods."""

    def __init__(self, cfg: PPOConfig, data: PPOData) -> None:
        from rlhf_dist.actors.learner_group import ModelSpec
        from rlhf_dist.actors.ppo_learner import PPOLearnerGroup
        from rlhf_dist.actors.rollout import RolloutGroup
        from rlhf_dist.actors.scorers import ReferenceActor, RewardActor, ScorerPool
        from rlhf_dist.algo import RunningMoments
        from rlhf_dist.engines.ppo import PPOLossConfig
        from rlhf_dist.recipes.train_stage import ensure_ray
        from rlhf_dist.tasks.base import load_task

        self.cfg, self.data = cfg, data
        self.task = load_task(cfg.task)
        self.tok = data.tokenizer
        self.rows = cfg.prompts_per_iteration * cfg.rollout.samples_per_prompt
        self.minibatches_per_epoch = self.rows // cfg.ppo.minibatch_size
        self.ptx_per_minibatch = round(cfg.ppo.ptx_ratio * cfg.ppo.minibatch_size) if data.ptx else 0
        self.score_moments = RunningMoments()
        self.ptx_order: list[int] = []
        self.ptx_epoch = 0
        ensure_ray(cfg.ray_address)
        r, p = cfg.rollout, cfg.ppo
        max_len = cfg.max_prompt_len + r.max_new_tokens + 8
        t0 = time.perf_counter()
        self.rollout_group = RolloutGroup(data.sft, r.num_workers, cfg.seed, max(256, max_len), r.cpus_per_worker,
                                          r.gpus_per_worker, r.dtype, r.tensor_parallel_size, r.gpu_memory_utilization)
        self.reward = ScorerPool(RewardActor, cfg.reward.num_actors, cfg.reward.cpus_per_actor, cfg.reward.gpus_per_actor,
                                 data.reward_model, data.pad_id, cfg.reward.micro_batch_size, cfg.reward.dtype)
        self.reference = ScorerPool(ReferenceActor, cfg.reference.num_actors, cfg.reference.cpus_per_actor,
                                    cfg.reference.gpus_per_actor, data.sft, data.pad_id, r.temperature,
                                    cfg.reference.micro_batch_size, cfg.reference.dtype)
        total_steps = cfg.iterations * p.epochs * self.minibatches_per_epoch
        loss_cfg = PPOLossConfig(r.temperature, p.clip_eps, p.clip_eps_high, p.value_clip, p.vf_coef, p.entropy_coef,
                                 p.ptx_coef if data.ptx else 0.0)
        self.learner = PPOLearnerGroup(ModelSpec(data.sft, "causal_lm", cfg.seed), ModelSpec(data.critic, "scalar", cfg.seed),
                                       cfg.learner, cfg.optim, cfg.critic_optim, p.minibatch_size, total_steps, data.pad_id, loss_cfg)
        info = self.learner.info[0]
        print(f"   {r.num_workers} rollout worker(s), {cfg.reward.num_actors} reward + {cfg.reference.num_actors} reference actor(s), "
              f"{cfg.learner.num_ranks} learner rank(s) (ZeRO-{cfg.learner.zero_stage}; policy {info['policy_params']:,} + critic "
              f"{info['critic_params']:,} parameters); {self.rows} responses/iteration in {self.minibatches_per_epoch} minibatch(es) "
              f"of {p.minibatch_size} = {cfg.learner.micro_batch_size} x {self.learner.grad_accum} accum x {cfg.learner.num_ranks} ranks"
              f"{f', + {self.ptx_per_minibatch} ptx sequences each' if self.ptx_per_minibatch else ''}; set-up {time.perf_counter() - t0:.1f} s",
              flush=True)

    def rollout(self, iteration: int):
        """Start sampling this iteration's prompts (a seeded pass over the prompt set), each n
        times; `.result()` gives the Arrow table."""
        n_prompts = len(self.data.prompt_ids)
        per_pass = n_prompts // self.cfg.prompts_per_iteration or 1
        order = list(range(n_prompts))
        random.Random(f"{self.cfg.seed}/prompts/{iteration // per_pass}").shuffle(order)
        k = (iteration % per_pass) * self.cfg.prompts_per_iteration
        chosen = [order[(k + i) % n_prompts] for i in range(self.cfg.prompts_per_iteration)]
        n = self.cfg.rollout.samples_per_prompt
        index = [i for i in chosen for _ in range(n)]
        sample_index = [s for _ in chosen for s in range(n)]
        seed = random.Random(f"{self.cfg.seed}/sampling/{iteration}").getrandbits(30)
        r = self.cfg.rollout
        return self.rollout_group.submit([self.data.prompt_ids[i] for i in index], index, sample_index,
                                         r.max_new_tokens, r.temperature, seed)

    def score_and_reference(self, table, scores: list[float] | None = None):
        """(scores (B,), reference log-probs) of the table's rows: the RM's scores, or the given
        ones (reward_source=gold) without asking the RM."""
        import numpy as np

        ref = self.reference.submit("logprobs", table)
        if scores is not None:
            return np.asarray(scores, dtype=np.float32), ref.result()
        return self.reward.submit("score", table).result(), ref.result()

    def normalize_scores(self, score):
        if self.cfg.ppo.score_norm == "running":
            self.score_moments.update(score)
            return self.score_moments.normalize(score, self.cfg.ppo.score_clip)
        return score

    def minibatches(self, iteration: int, epoch: int, rows: int) -> list[list[int]]:
        """Every row exactly once per epoch, in a fresh seeded permutation (ppo-details 35)."""
        from rlhf_dist.data import minibatches

        return [list(b) for b in minibatches(rows, self.cfg.ppo.minibatch_size, self.cfg.seed * 7919 + iteration, epoch)]

    def ptx_batch(self) -> list | None:
        """The next `ptx_per_minibatch` pretraining sequences (seeded passes over the corpus)."""
        if not self.ptx_per_minibatch:
            return None
        out = []
        while len(out) < self.ptx_per_minibatch:
            if not self.ptx_order:
                self.ptx_order = list(range(len(self.data.ptx)))
                random.Random(f"{self.cfg.seed}/ptx/{self.ptx_epoch}").shuffle(self.ptx_order)
                self.ptx_epoch += 1
            out.append(self.data.ptx[self.ptx_order.pop()])
        return out

    def gold_scores(self, table) -> list[float]:
        """Hidden gold score of each of the table's responses (monitoring, or the reward with
        reward_source=gold)."""
        from rlhf_dist.data import prompt_text

        texts = self.tok.batch_decode(table.column("response_ids").to_pylist(), skip_special_tokens=True)
        ids = table.column("prompt_id").to_pylist()
        return [float(self.task.gold_score(prompt_text(self.data.prompts[i]), t)) for i, t in zip(ids, texts)]

    def evaluate(self, tag: str, out: Path, log=None, step: int = 0) -> dict:
        """One sample per held-out prompt at the training temperature from the current weights:
        gold score, RM (proxy) score, KL(policy || SFT) per response (k1 on the samples), length."""
        import pyarrow.compute as pc

        from rlhf_dist.data import prompt_text

        r = self.cfg.rollout
        n = len(self.data.eval_prompt_ids)
        table = self.rollout_group.generate(self.data.eval_prompt_ids, list(range(n)), [0] * n, r.max_new_tokens,
                                            r.temperature, seed=self.cfg.seed + 12345)
        proxy, ref = self.score_and_reference(table)
        kl = pc.subtract(pc.list_flatten(table.column("rollout_logprobs")), pc.list_flatten(ref))
        texts = self.tok.batch_decode(table.column("response_ids").to_pylist(), skip_special_tokens=True)
        gold = [float(self.task.gold_score(prompt_text(self.data.eval_prompts[i]), t)) for i, t in enumerate(texts)]
        result = {
            "gold": sum(gold) / n, "proxy": float(proxy.mean()), "kl": float(pc.sum(kl).as_py()) / n,
            "response_len": float(pc.mean(pc.list_value_length(table.column("response_ids"))).as_py()),
            "eos_rate": float(pc.mean(table.column("finished_with_eos").cast("float32")).as_py()), "prompts": n,
            "iteration": step,
        }
        with (out / f"samples_{tag}.jsonl").open("w") as f:
            for i, (t, g, s) in enumerate(zip(texts, gold, proxy.tolist())):
                f.write(json.dumps({"prompt": self.data.eval_prompts[i], "response": t, "gold": g, "proxy": s}) + "\n")
        if log is not None:
            log.write(step, {f"eval/{k}": v for k, v in result.items() if k not in ("prompts", "iteration")})
        print(f"   eval [{tag}] on {n} held-out prompts: gold {result['gold']:.3f}, RM {result['proxy']:.3f}, "
              f"KL to SFT {result['kl']:.2f}, length {result['response_len']:.1f}", flush=True)
        return result

    def shutdown(self) -> None:
        for part in ("learner", "rollout_group", "reward", "reference"):
            if hasattr(self, part):
                getattr(self, part).shutdown()


# ------------------------------------------------------------------------------------------------
# Models for the tiny config: found in `models=`, or built there once
# ------------------------------------------------------------------------------------------------


def find_or_build_models(cfg: PPOConfig) -> tuple[str, str, str]:
    """(sft, reward_model, data folder) from `cfg.models`; built there (task data -> pretrain ->
    SFT -> RM on the learner group) when missing. A given `sft=`/`reward_model=` wins."""
    from rlhf_dist.config import load_config
    from rlhf_dist.recipes.stages import PretrainConfig, RMConfig, SFTConfig, pretrain, rm, sft

    root = Path(cfg.models)
    data, sft_dir, rm_dir = root / "data", root / "sft" / "model", root / "rm" / "model"
    ready = lambda d: (d / "config.json").is_file() and (d / "tokenizer.json").is_file()  # noqa: E731
    if ready(Path(cfg.sft or sft_dir)) and ready(Path(cfg.reward_model or rm_dir)) and (cfg.data or (data / "manifest.json").exists()):
        return cfg.sft or str(sft_dir), cfg.reward_model or str(rm_dir), str(data)
    print(f"   no SFT/RM models in {root}: building them once (task data -> pretrain -> SFT -> RM, {cfg.build_size} size)", flush=True)
    if not (data / "manifest.json").exists():
        from rlhf_dist.tasks.generate import main as task_data

        if task_data(["--out", str(data), f"seed={cfg.seed}", f"task={cfg.task}", "probe=0"]):
            raise RuntimeError(f"task-data failed for {data}")
    common = [f"data={data}", f"seed={cfg.seed}", f"ray_address={cfg.ray_address}", "eval_every=0",
              f"learner.cpus_per_rank={cfg.learner.cpus_per_rank}"]
    base = pretrain(load_config(PretrainConfig, None, [f"out={root / 'base'}", f"size={cfg.build_size}", *common]))
    tuned = sft(load_config(SFTConfig, None, [f"out={root / 'sft'}", f"init={base['model']}", f"task={cfg.task}", "gold_prompts=0", *common]))
    rm(load_config(RMConfig, None, [f"out={root / 'rm'}", f"init={tuned['model']}", f"task={cfg.task}", *common]))
    return str(sft_dir), str(rm_dir), str(data)


def ppo_main(argv: list[str]) -> int:
    train_ppo(parse_cli(PPOConfig, argv, "rlhf-dist ppo", __doc__))
    return 0
