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
(rlhf_dist/actors/ppo_actors.py) or a pure function (rlhf_dist/algo).
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
    import torch

    from rlhf_dist.algo import (RunningMoments, batch_metrics, critic_free_targets, make_kl_controller, ppo_targets,
                                truncated_is_weights)
    from rlhf_dist.buffer import TrajectoryWriter, add_columns, to_padded
    from rlhf_dist.data import PromptSampler, PtxSampler, minibatches
    from rlhf_dist.data.ppo_data import load_ppo_data
    from rlhf_dist.engines.ppo import learner_metrics
    from rlhf_dist.recipes import ppo_checkpoint as checkpoint
    from rlhf_dist.recipes.build_model import find_or_build_models
    from rlhf_dist.runtime import RunLog, Timer, prepare_run_folder, write_json
    from rlhf_dist.tasks.base import load_task

    start, out = time.perf_counter(), Path(cfg.out)
    resuming = prepare_run_folder(out, cfg.resume, cfg.overwrite, checkpoint.RUN_ARTIFACTS)  # before anything is written
    cfg = find_or_build_models(cfg)  # sft=, reward_model= and data= filled in
    task, p = load_task(cfg.task), cfg.ppo
    actors = PPOActors(cfg, lambda: load_ppo_data(cfg))  # the data is read while the engines start
    data = actors.data
    log = None
    try:
        prompts = PromptSampler(len(data.prompt_ids), cfg.prompts_per_iteration, cfg.seed)
        ptx = PtxSampler(len(data.ptx), actors.ptx_per_minibatch, cfg.seed) if actors.ptx_per_minibatch else None
        kl_ctl = make_kl_controller(p.kl_coef, p.kl_target, p.kl_horizon)
        score_stats = RunningMoments()  # for score_norm=running (Secrets of RLHF I, PPO-max)
        first, evals = (checkpoint.restore(out, actors.learner, kl_ctl, score_stats, prompts, ptx)
                        if resuming else (0, {}))
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        log, writer = RunLog(out, resume_step=first or None), TrajectoryWriter(out / "trajectories", cfg.trajectory_format)
        if first:
            actors.push_weights(version=first)  # the rollout workers sample with the checkpoint's weights
        elif cfg.eval_prompts:
            evals["sft"] = evaluate(actors, task, cfg, out, log, 0, "sft")
        bar = tqdm(total=cfg.iterations, initial=first, desc="   ppo", unit="it", dynamic_ncols=True, mininterval=1.0)
        pending = actors.rollout_batch(prompts.next(), iteration=first)
        for it in range(first, cfg.iterations):  # the learner's weights are version `it`
            timer, t0 = Timer(), time.perf_counter()
            with timer("rollout"):  # 1-2. the batch: sampled by the rollout workers (Arrow rows, each with its weight
                # version), scored by the reward actors (RM and/or reward function) || the reference's log-probs
                table, batch_times = pending.result()
                if cfg.rollout.overlap and it + 1 < cfg.iterations:  # the next batch with version `it`, while the learner trains
                    pending = actors.rollout_batch(prompts.next(), iteration=it + 1)
                staleness = check_staleness(table, it, cfg.rollout.max_staleness)
                data.check_finite_scores(table, cfg.reward_source)  # a function's faults are caught in its actor
                gold = data.gold_scores(task, table)  # the hidden gold score: monitoring (gold/train_mean)
            with timer("learner"):
                # 3. the learner's log-probs and values before the update ("old"; the gap to vLLM is logged);
                # one epoch of one minibatch keeps these forwards' graphs for the update instead of forwarding again
                reuse = actors.learner.can_reuse_forward(table.num_rows, p.epochs)
                old_logprobs, values, entropy = actors.learner.forward_old(table, keep=reuse)  # values: None without a critic
                table = add_columns(table, old_logprobs=old_logprobs, **({"values": values} if values is not None else {}))
                # 4. advantages over the whole batch (pure functions): KL-shaped token rewards -> GAE -> whitening with
                #    the critic, or a critic-free estimator (the prompt's other responses, or the batch, as the baseline)
                t = to_padded(table, data.pad_id, columns=["score", "finished_with_eos", "rollout_logprobs", "ref_logprobs",
                                                           "old_logprobs"] + (["values"] if values is not None else []))
                c, mask, beta = t.columns, t.response_mask, kl_ctl.beta
                score = c["score"]
                if p.score_norm == "running":
                    score_stats.update(score)
                    score = score_stats.normalize(score, p.score_clip)
                reward_beta = beta if p.kl_penalty == "reward" else 0.0  # kl_penalty=loss: the learner adds the KL term
                if p.advantage == "gae":
                    targets = ppo_targets(score=score, old_logprobs=c["old_logprobs"], ref_logprobs=c["ref_logprobs"],
                                          values=c["values"], mask=mask, has_eos=c["finished_with_eos"], beta=reward_beta,
                                          kl_estimator=p.kl_estimator, gamma=p.gamma, lam=p.lam,
                                          missing_eos_penalty=p.missing_eos_penalty, whiten_rewards=p.whiten_rewards,
                                          whiten_advantages=p.whiten_advantages)
                    table = add_columns(table, advantages=targets.advantages, returns=targets.returns, kl=targets.kl_sum)
                else:
                    targets = critic_free_targets(score=score, logprobs=c["old_logprobs"], ref_logprobs=c["ref_logprobs"],
                                                  mask=mask, has_eos=c["finished_with_eos"], estimator=p.advantage,
                                                  group_size=cfg.rollout.samples_per_prompt, beta=reward_beta,
                                                  kl_in_reward=p.kl_penalty == "reward", kl_estimator=p.kl_estimator,
                                                  gamma=p.gamma, missing_eos_penalty=p.missing_eos_penalty)
                    table = add_columns(table, advantages=targets.advantages, kl=targets.kl_sum)
                # 4b. rows sampled with older weights (overlap): truncated importance weights pi_old / pi_rollout
                stale = torch.as_tensor(table.column("policy_version").to_numpy() < it)
                offpolicy = {}
                if p.is_cap is not None and bool(stale.any()):
                    weights, offpolicy = truncated_is_weights(c["old_logprobs"], c["rollout_logprobs"], mask, stale, p.is_cap)
                    table = add_columns(table, is_weights=weights)
                # 5. PPO epochs: every row once per epoch, in a fresh seeded permutation (docs/ppo-details.md item 35)
                steps = []
                for epoch in range(p.epochs):
                    for rows in minibatches(table.num_rows, p.minibatch_size, seed=cfg.seed * 7919 + it, epoch=epoch):
                        ptx_items = [data.ptx[i] for i in ptx.next()] if ptx else None
                        # (one minibatch: its gradient does not depend on the row order, so the kept forwards' order stays)
                        steps.append(actors.learner.ppo_step(table if reuse else table.take(rows), ptx_items,
                                                             reuse_forward=reuse))
            with timer("sync"):  # 6. new weights to every rollout worker, stamped version it + 1
                sync = actors.push_weights(version=it + 1)
            if not cfg.rollout.overlap and it + 1 < cfg.iterations:
                pending = actors.rollout_batch(prompts.next(), iteration=it + 1)
            kl_ctl.update(targets.kl_sum.mean().item(), table.num_rows)
            # 7. log, keep the trajectories, evaluate, checkpoint
            if cfg.write_trajectories:
                writer.write(it, table)
            record = {**batch_metrics(c["score"], targets, beta, mask, c["finished_with_eos"], c["rollout_logprobs"],
                                      c["old_logprobs"], c.get("values")),
                      "gold/train_mean": sum(gold) / len(gold), "rollout/staleness": staleness,
                      "rollout/entropy": _list_mean(entropy), **offpolicy, **learner_metrics(steps), **timer.metrics(), **batch_times,
                      **actors.fault_metrics(),
                      "time/sync_push_s": sync.get("seconds", 0.0), "time/iteration_s": time.perf_counter() - t0}
            log.write(it + 1, record)
            bar.set_postfix(score=f"{record['objective/score']:.3f}", gold=f"{record['gold/train_mean']:.3f}",
                            kl=f"{record['objective/kl']:.2f}")
            bar.update(1)
            if cfg.eval_prompts and cfg.eval_every and (it + 1) % cfg.eval_every == 0 and it + 1 < cfg.iterations:
                evals[f"iter{it + 1}"] = evaluate(actors, task, cfg, out, log, it + 1, f"iter{it + 1}")
            if cfg.save_every and (it + 1) % cfg.save_every == 0:
                checkpoint.save(out, it + 1, actors.learner, kl_ctl, score_stats, ptx, evals, cfg.keep_checkpoints)
        bar.close()
        if cfg.eval_prompts:
            evals["ppo"] = evaluate(actors, task, cfg, out, log, cfg.iterations, "ppo")
        actors.learner.save(out / "model", out / "critic", data.sft)
        peak_mb = actors.learner.peak_memory_mb()
    finally:
        actors.shutdown()
        if log is not None:
            log.close()
    summary = {"iterations": cfg.iterations, "wall_time_s": time.perf_counter() - start, "eval": evals,
               "learner_peak_memory_mb": peak_mb, "model": str(out / "model"),
               "critic": str(out / "critic") if p.advantage == "gae" else None, "sft": data.sft,
               "reward_model": data.reward_model, "config": config_to_dict(cfg)}
    write_json(out / "summary.json", summary)
    if "sft" in evals and "ppo" in evals:
        print(f"   held-out gold: SFT {evals['sft']['gold']:.3f} -> PPO {evals['ppo']['gold']:.3f}; reward "
              f"{evals['sft']['proxy']:.3f} -> {evals['ppo']['proxy']:.3f}; KL(PPO || SFT) {evals['ppo']['kl']:.2f} nats/response")
    return summary


def evaluate(actors, task, cfg: PPOConfig, out: Path, log, step: int, tag: str) -> dict:
    """One sample per held-out prompt from the current weights at the training temperature, scored
    by `sample_and_score` on the run's own actors: gold, RM (proxy), KL(policy || SFT) (k1 on the
    samples), length, EOS rate. Writes samples_<tag>.jsonl and eval/ metrics."""
    import json

    from rlhf_dist.evaluation.sample_and_score import sample_and_score

    data = actors.data
    s = sample_and_score(lambda ids: actors.sample_held_out(ids, seed=cfg.seed + 12345), data.eval_prompts,
                         data.eval_prompt_ids, task, data.tokenizer, reward=lambda t: actors.reward.submit("score", t),
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


def _list_mean(array) -> float:
    import pyarrow.compute as pc

    return float(pc.mean(pc.list_flatten(array)).as_py())


def ppo_main(argv: list[str]) -> int:
    train_ppo(parse_cli(PPOConfig, argv, "rlhf-dist ppo", __doc__))
    return 0
