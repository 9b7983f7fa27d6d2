"""Stage 3: PPO(-ptx) against a frozen reward model (or a reward function), with a KL penalty to the
SFT policy (InstructGPT, Ouyang et al. 2022, section 3.5 and appendix C.4); GAE with a critic, or a
critic-free estimator (GRPO, RLOO, REINFORCE++: `ppo.advantage`).

    rlhf-dist ppo --config configs/tiny.yaml                       # local: Ray starts in-process
    rlhf-dist ppo --config configs/tiny.yaml rollout.num_workers=2 learner.num_ranks=2
    rlhf-dist ppo --out runs/ppo sft=runs/sft/model reward_model=runs/rm/model data=runs/data
    launch/submit.sh configs/tiny.yaml ...                         # the same run on a Ray cluster

With `sft=` and `reward_model=` empty, the models come from the folder `models=` (built there
first with pretrain -> SFT -> RM on the task's data when missing). `train_ppo` is the driver: each
iteration is the numbered steps below, every arrow a call on a group of Ray actors
(rlhf_dist/actors/ppo_actors.py) or a pure function (rlhf_dist/algo). Where to look:
- which reward, whether an RM is loaded, where the critic starts: PPOConfig's properties
  (rlhf_dist/config/ppo.py), read by the actors;
- when the next batch is sampled: `PPOActors.next_batch` and `push_weights`;
- what a checkpoint holds: rlhf_dist/recipes/ppo_checkpoint.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from rlhf_dist.config import config_to_dict, parse_cli, save_config
from rlhf_dist.config.ppo import PPOConfig


def train_ppo(cfg: PPOConfig) -> dict:
    """Train the policy (and critic) of `cfg` with PPO; returns the run's summary (also summary.json)."""
    from tqdm import tqdm

    from rlhf_dist.actors.ppo_actors import PPOActors
    from rlhf_dist.algo import RunningMoments, compute_targets, make_kl_controller
    from rlhf_dist.buffer import TrajectoryWriter, add_columns
    from rlhf_dist.data import PromptSampler, PtxSampler, minibatches
    from rlhf_dist.recipes import ppo_checkpoint as checkpoint
    from rlhf_dist.recipes.ppo_models import find_or_build_models
    from rlhf_dist.runtime import RunLog, Timer, write_json
    from rlhf_dist.tasks.base import load_task
    from rlhf_dist.trackers import make_trackers

    start, out = time.perf_counter(), Path(cfg.out)
    resuming = checkpoint.prepare_ppo_folder(cfg)  # before anything is written
    cfg = find_or_build_models(cfg)  # sft=, reward_model= and data= filled in
    task, p = load_task(cfg.task), cfg.ppo
    actors = PPOActors(cfg)  # every role started; the data is read while the engines start
    data, log, bar = actors.data, None, None
    try:
        prompts = PromptSampler(len(data.prompt_ids), cfg.prompts_per_iteration, cfg.seed)
        ptx = PtxSampler(len(data.ptx), actors.ptx_per_minibatch, cfg.seed) if actors.ptx_per_minibatch else None
        kl_ctl = make_kl_controller(p.kl_coef, p.kl_target, p.kl_horizon)
        score_stats = RunningMoments()  # for score_norm=running (Secrets of RLHF I, PPO-max)
        first, evals = checkpoint.restore(out, actors.learner, kl_ctl, score_stats, prompts, ptx) if resuming else (0, {})
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        log, writer = (RunLog(out, resume_step=first or None, trackers=make_trackers(cfg.log, out, config_to_dict(cfg))),
                       TrajectoryWriter(out / "trajectories", cfg.trajectory_format))
        if first:
            actors.push_weights(version=first)  # the rollout workers sample with the checkpoint's weights
        elif cfg.eval_prompts:
            evals["sft"] = evaluate(actors, task, cfg, out, log, 0, "sft")
        bar = tqdm(total=cfg.iterations, initial=first, desc="   ppo", unit="it", dynamic_ncols=True, mininterval=1.0)
        actors.start_batches(prompts, first)
        for it in range(first, cfg.iterations):  # the learner's weights are version `it`
            timer, t0 = Timer(), time.perf_counter()
            with timer("rollout"):  # 1-2. sampled by the rollout workers (Arrow rows, each with its weight version),
                # scored by the reward actors (RM and/or reward function) || the reference's log-probs
                table, batch_times = actors.next_batch(it)  # with overlap, batch it + 1 starts sampling now
                staleness = check_staleness(table, it, cfg.rollout.max_staleness)
            with timer("learner"):
                # 3. the learner's log-probs and values before the update ("old"); one epoch of one
                # minibatch keeps these forwards' graphs for the update instead of forwarding again
                reuse = actors.learner.can_reuse_forward(table.num_rows, p.epochs)
                old_logprobs, values, entropy = actors.learner.forward_old(table, keep=reuse)  # values: None without a critic
                table = add_columns(table, old_logprobs=old_logprobs, **({"values": values} if values is not None else {}))
                # 4. advantages over the whole batch (rlhf_dist/algo/targets.py), importance weights of stale rows
                batch, beta = padded_batch(table, data.pad_id), kl_ctl.beta
                targets = compute_targets(p, batch.columns, batch.loss_mask, beta, cfg.rollout.samples_per_prompt,
                                          score_stats)
                table, offpolicy = with_targets(table, targets, batch, it, p.is_cap)
                # 5. PPO epochs: every row once per epoch, in a fresh seeded permutation (docs/ppo-details.md item 35)
                steps = [actors.learner.ppo_step(table if reuse else table.take(rows),
                                                 [data.ptx[i] for i in ptx.next()] if ptx else None, reuse_forward=reuse)
                         for epoch in range(p.epochs)
                         for rows in minibatches(table.num_rows, p.minibatch_size, seed=cfg.seed * 7919 + it, epoch=epoch)]
            with timer("sync"):  # 6. new weights to every rollout worker, version it + 1 (synchronous: batch it + 1 starts)
                sync = actors.push_weights(version=it + 1)
            kl_ctl.update(targets.kl_sum.mean().item(), table.num_rows)
            # 7. log, keep the trajectories, evaluate, checkpoint
            if cfg.write_trajectories:
                writer.write(it, table)
            record = iteration_record(table, batch, targets, beta, steps, entropy, offpolicy, staleness, task, data,
                                      {**timer.metrics(), **batch_times, "time/sync_push_s": sync.get("seconds", 0.0),
                                       "sync/push_mb": sync.get("bytes", 0) / 2**20},
                                      actors.fault_metrics(), started=t0)
            log.write(it + 1, record)
            bar.set_postfix(score=f"{record['objective/score']:.3f}", gold=f"{record['gold/train_mean']:.3f}",
                            kl=f"{record['objective/kl']:.2f}")
            bar.update(1)
            if cfg.eval_prompts and cfg.eval_every and (it + 1) % cfg.eval_every == 0 and it + 1 < cfg.iterations:
                evals[f"iter{it + 1}"] = evaluate(actors, task, cfg, out, log, it + 1, f"iter{it + 1}")
            if cfg.save_every and (it + 1) % cfg.save_every == 0:  # policy, critic, optimizers, driver state
                checkpoint.save(out, it + 1, actors.learner, kl_ctl, score_stats, ptx, evals, cfg.keep_checkpoints)
        bar.close()
        if cfg.eval_prompts:
            evals["ppo"] = evaluate(actors, task, cfg, out, log, cfg.iterations, "ppo")
        actors.learner.save(out / "model", out / "critic", cfg.sft)
        peak_mb, optimizer_mb = actors.learner.peak_memory_mb(), actors.learner.optimizer_state_mb()
    finally:
        if bar is not None:
            bar.close()  # an error's line starts on a line of its own
        actors.shutdown()
        if log is not None:
            log.close()
    summary = {"iterations": cfg.iterations, "wall_time_s": time.perf_counter() - start, "eval": evals,
               "learner_peak_memory_mb": peak_mb, "learner_optimizer_state_mb": optimizer_mb,
               "policy_trainable_params": actors.learner.info[0]["policy_trainable_params"], "model": str(out / "model"),
               "critic": str(out / "critic") if cfg.has_critic else None, "sft": cfg.sft,
               "reward_model": cfg.reward_model if cfg.reward_uses_rm else "", "config": config_to_dict(cfg)}
    write_json(out / "summary.json", summary)
    log.finish(summary, [out / "report.html"])
    if "sft" in evals and "ppo" in evals:
        print(f"   held-out gold: SFT {evals['sft']['gold']:.3f} -> PPO {evals['ppo']['gold']:.3f}; reward "
              f"{evals['sft']['proxy']:.3f} -> {evals['ppo']['proxy']:.3f}; KL(PPO || SFT) {evals['ppo']['kl']:.2f} nats/response")
    return summary


# The padded columns of a batch that step 4 and the record read (values only with a critic,
# env_rewards only for multi-turn episodes).
BATCH_COLUMNS = ("score", "finished_with_eos", "rollout_logprobs", "ref_logprobs", "old_logprobs")


def padded_batch(table, pad_id: int):
    """The batch's (B,) and (B, T) tensors of BATCH_COLUMNS (+ values, env_rewards) and its masks
    (`loss_mask`: the policy's tokens)."""
    from rlhf_dist.buffer import to_padded

    extra = [c for c in ("values", "env_rewards") if c in table.column_names]
    return to_padded(table, pad_id, columns=list(BATCH_COLUMNS) + extra)


def with_targets(table, targets, batch, version: int, is_cap: float | None):
    """`table` with the learner's targets (advantages; returns with GAE; the KL sum per row) and,
    for rows sampled with weights older than `version` (overlap), truncated importance weights
    min(pi_old / pi_rollout, is_cap) per token; also the off-policy metrics ({} without such rows)."""
    import torch

    from rlhf_dist.algo import truncated_is_weights
    from rlhf_dist.buffer import add_columns

    returns = {"returns": targets.returns} if hasattr(targets, "returns") else {}
    table = add_columns(table, advantages=targets.advantages, **returns, kl=targets.kl_sum)
    stale = torch.as_tensor(table.column("policy_version").to_numpy() < version)
    if is_cap is None or not bool(stale.any()):
        return table, {}
    c = batch.columns
    weights, metrics = truncated_is_weights(c["old_logprobs"], c["rollout_logprobs"], batch.loss_mask, stale, is_cap)
    return add_columns(table, is_weights=weights), metrics


def iteration_record(table, batch, targets, beta: float, steps: list[dict], entropy, offpolicy: dict, staleness: int,
                     task, data, times: dict, faults: dict, started: float) -> dict:
    """One iteration's metrics (metrics.jsonl, TensorBoard), N+'s names: the batch's objective and
    rollout statistics, the hidden gold score of the training samples (monitoring only: the
    policy never sees it), the learner's losses and clip fractions, times (the iteration's since
    `started`) and the weight push's size (sync/push_mb), actor restarts; with episodes, env/ (turns,
    failed share, end reasons)."""
    from rlhf_dist.algo import batch_metrics
    from rlhf_dist.engines.episodes import episode_metrics
    from rlhf_dist.engines.ppo import learner_metrics
    from rlhf_dist.evaluation.sample_and_score import sample_and_score

    c = batch.columns
    prompts = [data.prompts[i] for i in table.column("prompt_id").to_pylist()]
    gold = sample_and_score(lambda _ids: table, prompts, table.column("prompt_ids").to_pylist(), task, data.tokenizer).gold
    episodes = "end_reason" in table.column_names
    env = episode_metrics(table.column("end_reason").to_pylist(), table.column("turns").to_pylist()) if episodes else {}
    entropy = _list_mean(entropy, table.column("policy_mask") if episodes else None)
    return {**batch_metrics(c["score"], targets, beta, batch.loss_mask, c["finished_with_eos"], c["rollout_logprobs"],
                            c["old_logprobs"], c.get("values")),
            "gold/train_mean": sum(gold) / len(gold), "rollout/staleness": staleness, "rollout/entropy": entropy,
            **env, **offpolicy, **learner_metrics(steps), **times, **faults, "time/iteration_s": time.perf_counter() - started}


def evaluate(actors, task, cfg: PPOConfig, out: Path, log, step: int, tag: str) -> dict:
    """One sample per held-out prompt from the current weights at the training temperature, scored
    by `sample_and_score` on the run's own actors: gold, RM (proxy), KL(policy || SFT) (k1 on the
    samples), length, EOS rate. Writes samples_<tag>.jsonl and eval/ metrics."""
    import json

    from rlhf_dist.evaluation.sample_and_score import sample_and_score

    data = actors.data
    s = sample_and_score(lambda ids: actors.sample_held_out(ids, seed=cfg.seed + 12345), data.eval_prompts,
                         data.eval_prompt_ids, task, data.tokenizer, reward=lambda t: actors.submit_reward(t, data.eval_prompts),
                         reference=lambda t: actors.reference.submit("logprobs", t))
    result = {**s.summary(), "iteration": step}
    with (out / f"samples_{tag}.jsonl").open("w") as f:
        for prompt, y, g, q in zip(data.eval_prompts, s.responses, s.gold, s.proxy):
            f.write(json.dumps({"prompt": prompt, "response": y, "gold": g, "proxy": q}) + "\n")
    log.write(step, {f"eval/{k}": v for k, v in result.items() if k not in ("prompts", "iteration")})
    print(f"   eval [{tag}] on {result['prompts']} held-out prompts: gold {result['gold']:.3f}, reward {result['proxy']:.3f}, "
          f"KL to SFT {result['kl']:.2f}, length {result['response_len']:.1f}", flush=True)
    return result


def check_staleness(table, version: int, max_staleness: int) -> int:
    """The most versions any row's sampling weights lag the learner's `version` (checked per row);
    a row beyond `max_staleness` stops the run, naming it (its samples are too far off-policy)."""
    lags = [version - v for v in table.column("policy_version").to_pylist()]
    row = max(range(len(lags)), key=lags.__getitem__)
    if lags[row] > max_staleness:
        prompt = table.column("prompt_id")[row].as_py()
        raise RuntimeError(f"iteration {version}: row {row} (prompt {prompt}) was sampled with weights {lags[row]} "
                           f"versions old (rollout.max_staleness={max_staleness})")
    return lags[row]


def _list_mean(array, mask=None) -> float:
    """Mean of a list column's values (where the list<bool> column `mask` is True)."""
    import pyarrow.compute as pc

    values = pc.list_flatten(array)
    return float(pc.mean(values if mask is None else pc.filter(values, pc.list_flatten(mask))).as_py())


def ppo_main(argv: list[str]) -> int:
    train_ppo(parse_cli(PPOConfig, argv, "rlhf-dist ppo", __doc__))
    return 0
