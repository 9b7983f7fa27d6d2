"""`make demo`: the whole InstructGPT pipeline on the built-in task (or any task plug-in), on CPU.

    rlhf-dist quickstart [--config configs/quickstart.yaml] [--out runs/quickstart] [key=value ...]

1. the simulated labeler's task writes its data (corpus, demonstrations, prompts, rankings);
2. pretrain a tokenizer + random-init Llama on the corpus (the stand-in for GPT-3);
3. SFT on the demonstrations;
4. the simulated labeler ranks K samples of the SFT model per RL prompt (InstructGPT sec. 3.5:
   labelers rank the SFT model's outputs); `rm_data=task` uses the task's own comparisons instead;
5. the reward model on those rankings;
6. PPO against the RM, with a KL penalty to SFT (Ray: vLLM rollout workers, reward and
   reference actors, a DeepSpeed learner group holding policy and critic);
7. PPO-ptx: the same with the ptx language-modelling mix (by default on the demonstrations:
   `ptx_data`);
8. evaluation of base, SFT, PPO and PPO-ptx on held-out prompts (`rlhf-dist eval`): win rate
   against SFT as judged by the labeler, gold and proxy scores, KL, alignment tax; every model
   is sampled at `eval_temperature` (0.5), cooler than the rollouts explore (`temperature`,
   0.7), as a trained policy is deployed (OpenRLHF's --eval_temperature, verl's val_kwargs);
9. over-optimisation (`rlhf-dist overopt`): PPO without KL penalty and best-of-n, gold and
   proxy against sqrt(KL);
10. `report.html`.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from rlhf_dist.config import derive, load_config, parse_cli, with_overrides
from rlhf_dist.config.evaluation import EvalConfig, OveroptConfig
from rlhf_dist.config.pipeline import PTX_DATA, LabelConfig, QuickstartConfig, TaskDataConfig
from rlhf_dist.config.ppo import PPOConfig
from rlhf_dist.config.stages import PretrainConfig, RMConfig, SFTConfig
from rlhf_dist.runtime import print_table, stage, write_json
from rlhf_dist.tasks.base import load_task


def main(argv: list[str]) -> int:
    from rlhf_dist.evaluation.evaluate import evaluate_models
    from rlhf_dist.evaluation.metrics import seen_alone
    from rlhf_dist.evaluation.report import write_report
    from rlhf_dist.models import check_model_dir
    from rlhf_dist.recipes.label import label
    from rlhf_dist.recipes.overopt import run_overopt
    from rlhf_dist.recipes.ppo import train_ppo
    from rlhf_dist.recipes.stages import pretrain, rm, sft
    from rlhf_dist.recipes.task_data import write_task_data

    cfg = parse_cli(QuickstartConfig, argv, "rlhf-dist quickstart", __doc__)
    out, start = Path(cfg.out), time.perf_counter()
    data = out / "data"
    load_task(cfg.task)  # a bad task spec or base folder fails here, before anything is written
    if cfg.base:
        check_model_dir(cfg.base, "base")
    # The PPO runs, typed: ppo_config with the quickstart's settings, the user's ppo_overrides on top
    # (checked against PPOConfig's keys when the quickstart config was loaded); each run derives
    # its models, folder and ptx settings from it. Built here, before anything is written.
    ppo_base = with_overrides(load_config(PPOConfig, cfg.ppo_config, values={
        "out": str(out / "ppo"), "overwrite": True, "data": str(data), "task": cfg.task, "seed": cfg.seed,
        "iterations": cfg.ppo_iterations, "eval_prompts": 0,
        "rollout": {"temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens}}), cfg.ppo_overrides, "ppo_overrides")
    common = dict(data=str(data), seed=cfg.seed, learner={"cpus_per_rank": cfg.cpus}, eval_every=0, overwrite=True)
    timings: dict[str, float] = {}

    with stage("1/10 task data (simulated labeler)", timings):
        manifest = write_task_data(TaskDataConfig(out=str(data), seed=cfg.seed, task=cfg.task, probe=0,
                                                  n_rl_prompts=max(2000, cfg.rank_prompts)))
    if cfg.base:  # pretraining is the longest stage: experiments on later stages reuse one base model
        print(f"\n== 2/10 pretraining skipped: base={cfg.base}", flush=True)
        base = {"model": cfg.base}
    else:
        with stage(f"2/10 pretrain a random-init {cfg.size} Llama on the corpus", timings):
            base = pretrain(derive(PretrainConfig(out=str(out / "base")), size=cfg.size, epochs=cfg.pretrain_epochs,
                                   **({"vocab_size": cfg.vocab_size} if cfg.vocab_size else {}), **common))
    with stage("3/10 SFT on the demonstrations", timings):
        tuned = sft(derive(SFTConfig(out=str(out / "sft")), init=base["model"], epochs=cfg.sft_epochs, task=cfg.task,
                           gold_prompts=0, **common))
    rankings = data  # the task's own comparisons (perturbed demonstrations) ...
    if cfg.rm_data == "policy":  # ... or, as in InstructGPT, the labeler ranking the SFT model's samples
        with stage(f"4/10 the labeler ranks {cfg.rank_k} SFT samples per RL prompt", timings):
            rankings = out / "rankings"
            label(LabelConfig(out=str(rankings), policy=tuned["model"], data=str(data), task=cfg.task, k=cfg.rank_k,
                              prompts=cfg.rank_prompts, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                              seed=cfg.seed))
    with stage("5/10 reward model on the labeler's rankings", timings):
        reward = rm(derive(RMConfig(out=str(out / "rm")), init=tuned["model"], epochs=cfg.rm_epochs, task=cfg.task,
                           **{**common, "data": str(rankings)}))
    ppo_base = derive(ppo_base, sft=tuned["model"], reward_model=reward["model"])
    with stage("6/10 PPO against the reward model", timings):
        ppo = train_ppo(derive(ppo_base, out=str(out / "ppo"), ppo={"ptx_coef": 0.0}))
    with stage(f"7/10 PPO-ptx (gamma = {cfg.ptx_coef:g}, LM term on the {cfg.ptx_data})", timings):
        ppo_ptx = train_ppo(derive(ppo_base, out=str(out / "ppo_ptx"), ppo={"ptx_coef": cfg.ptx_coef, "ptx_ratio": cfg.ptx_ratio},
                                   ptx_file=",".join(str(data / name) for name in PTX_DATA[cfg.ptx_data])))
    with stage(f"8/10 evaluation on held-out prompts at T = {cfg.eval_temperature:g} (win rate vs SFT, gold, KL, alignment tax)", timings):
        models = {"base": base["model"], "sft": tuned["model"], "ppo": ppo["model"], "ppo_ptx": ppo_ptx["model"]}
        ev = evaluate_models(EvalConfig(
            out=str(out / "eval"), models=models, baseline="sft", reward_model=reward["model"],
            comparisons_file=str(rankings / "comparisons_heldout.jsonl"), data=str(data), task=cfg.task,
            prompts=cfg.eval_prompts, temperature=cfg.eval_temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed))
    if cfg.overopt:
        with stage("9/10 over-optimisation: PPO without KL penalty, and best-of-n", timings):
            over = run_overopt(OveroptConfig(
                out=str(out / "overopt"), sft=tuned["model"], reward_model=reward["model"], data=str(data), task=cfg.task,
                kl_coefs=list(cfg.overopt_kl_coefs), iterations=cfg.overopt_iterations, eval_every=cfg.overopt_eval_every,
                bon_n=list(cfg.bon_n), ppo_config=cfg.ppo_config, temperature=cfg.temperature,
                max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, eval_prompts=min(cfg.eval_prompts, 128)), ppo_base)

    m = ev["models"]
    headline = {
        "gold: base / SFT / PPO / PPO-ptx": " / ".join(f"{m[k]['gold_score']:.3f}" for k in ("base", "sft", "ppo", "ppo_ptx")),
        "gold: demonstrations (SFT data)": f"{manifest.get('demonstrator_mean_gold', float('nan')):.3f}",
        f"win rate vs SFT ({ev['prompts']} prompts, T {cfg.eval_temperature:g}): PPO": _win(m["ppo"]),
        f"win rate vs SFT ({ev['prompts']} prompts, T {cfg.eval_temperature:g}): PPO-ptx": _win(m["ppo_ptx"]),
        "KL to SFT: PPO / PPO-ptx": f"{m['ppo']['kl_to_sft']:.2f} / {m['ppo_ptx']['kl_to_sft']:.2f} nats",
        "pretrain NLL: SFT / PPO / PPO-ptx": " / ".join(f"{m[k]['pretrain_nll']:.3f}" for k in ("sft", "ppo", "ppo_ptx")),
        "RM accuracy / labeler ceiling": f"{ev['rm_accuracy']:.3f} / {ev['labeler_agreement']:.3f}",
    }
    alone = seen_alone(ev.get("rm_accuracy_by_part") or {})
    if alone:  # what the RM can and cannot see, hence what PPO can and cannot fix
        headline["RM agrees with gold on pairs differing in one part"] = ", ".join(f"{k} {v:.2f}" for k, v in alone.items())
    if cfg.overopt:
        for method, sh in over["shapes"].items():
            if method != "best-of-n":
                headline[f"over-optimisation, {method}: gold start / peak / end"] = (
                    f"{sh['start']['gold']:.3f} / {sh['peak']['gold']:.3f} / {sh['end']['gold']:.3f}; "
                    f"proxy {sh['start']['proxy']:.2f} / {sh['peak']['proxy']:.2f} / {sh['end']['proxy']:.2f}")
    with stage("10/10 report", timings):
        summary = {"task": cfg.task, "headline": headline, "timings_s": timings, "config": asdict(cfg),
                   "models": models, "eval": str(out / "eval" / "eval.json")}
        write_json(out / "quickstart.json", summary)
        report = write_report(out)
    timings["total"] = time.perf_counter() - start
    summary["timings_s"] = timings
    write_json(out / "quickstart.json", summary)
    print_table([*headline.items(), ("total time", f"{timings['total'] / 60:.1f} min")], "quickstart summary")
    print(f"\nreport: {report.resolve()}\n(open it in a browser; TensorBoard: tensorboard --logdir {out})")
    return 0


def _win(model: dict) -> str:
    """The labeler's verdicts with their 95% interval, and their expectation without labeler noise."""
    lo, hi = model["win_rate_ci95"]
    return f"{model['win_rate_vs_sft']:.3f} [{lo:.3f}, {hi:.3f}], expected {model['win_prob_vs_sft']:.3f}"
