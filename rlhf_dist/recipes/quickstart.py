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

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlhf_dist.config import load_config, parse_cli
from rlhf_dist.recipes.common import print_table, stage
from rlhf_dist.tasks.base import DEFAULT_TASK, load_task


# The PPO-ptx run's LM data. InstructGPT mixes pretraining data to keep general skills; here the
# skill PPO erodes is the task itself (answers cut short when the RM cannot check them), which
# only the demonstrations teach. Measured on the demo's models (README, "What PPO achieves
# here"): correctness SFT 0.69 -> PPO-ptx 0.67 with ptx on demonstrations, 0.64 on the corpus
# (500 other prompts: 0.62 vs 0.61), and the held-out pretraining NLL still ends below SFT's.
PTX_DATA = {"demonstrations": ["sft.jsonl"], "pretraining": ["pretrain.jsonl"], "both": ["pretrain.jsonl", "sft.jsonl"]}


@dataclass
class QuickstartConfig:
    out: str = field(default="runs/quickstart", metadata={"help": "run folder"})
    seed: int = field(default=0, metadata={"help": "seed for the task data, the models and sampling"})
    task: str = field(default=DEFAULT_TASK, metadata={"help": "task plug-in, module:attr or file.py:attr"})
    size: str = field(default="tiny", metadata={"help": "model size (tiny|small)"})
    vocab_size: int | None = field(default=None, metadata={"help": "BPE vocabulary of the random-init base model (None: the tokenizer default, 1024)"})
    cpus: float = field(default=2.0, metadata={"help": "CPUs for the learner rank in stages 2-4"})
    pretrain_epochs: float = field(default=9.0, metadata={"help": "passes over the pretraining corpus"})
    base: str = field(default="", metadata={"help": "an existing base model folder (e.g. a previous run's base/model) to start from instead of pretraining; it must have been pretrained on the same task's corpus"})
    sft_epochs: float = field(default=6.0, metadata={"help": "passes over the demonstrations"})
    rm_data: str = field(default="policy", metadata={"help": "RM rankings: policy (the labeler ranks SFT samples) or task (the task's comparisons)"})
    rank_k: int = field(default=8, metadata={"help": "SFT samples ranked per prompt (InstructGPT: 4 to 9)"})
    rank_prompts: int = field(default=3000, metadata={"help": "prompts whose SFT samples are ranked (the RL prompts, at least this many)"})
    rm_epochs: float = field(default=1.0, metadata={"help": "passes over the rankings (InstructGPT: 1)"})
    ppo_config: str = field(default="configs/tiny.yaml", metadata={"help": "base config of the PPO runs"})
    ppo_iterations: int = field(default=40, metadata={"help": "PPO iterations (each run)"})
    ppo_overrides: list[str] = field(default_factory=list, metadata={"help": "extra key=value for both PPO runs"})
    ptx_coef: float = field(default=0.5, metadata={"help": "gamma of the PPO-ptx run"})
    ptx_ratio: float = field(default=1.0, metadata={"help": "ptx sequences per RL episode in the PPO-ptx run"})
    ptx_data: str = field(default="demonstrations", metadata={"help": "what the PPO-ptx run's LM term trains on: demonstrations "
                                                                  "(data/sft.jsonl), pretraining (data/pretrain.jsonl) or both"})
    eval_prompts: int = field(default=500, metadata={"help": "held-out prompts for the evaluation (at most the task data's eval prompts)"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature of the rollouts (rankings, PPO, over-optimisation)"})
    eval_temperature: float = field(default=0.5, metadata={"help": "sampling temperature of the evaluation, the same for every model "
                                                                   "(a trained policy is deployed cooler than it explored)"})
    max_new_tokens: int = field(default=32, metadata={"help": "response budget"})
    overopt: bool = field(default=True, metadata={"help": "run the over-optimisation study"})
    overopt_kl_coefs: list[float] = field(default_factory=lambda: [0.0], metadata={"help": "KL coefficients of its PPO runs"})
    overopt_iterations: int = field(default=60, metadata={"help": "iterations of its PPO runs"})
    overopt_eval_every: int = field(default=10, metadata={"help": "iterations between the held-out evaluations of its PPO runs"})
    bon_n: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16], metadata={"help": "best-of-n values"})

    def __post_init__(self) -> None:
        if self.rm_data not in ("policy", "task"):
            raise ValueError(f"rm_data={self.rm_data!r}: expected policy or task")
        if self.rank_k < 2 or self.rank_prompts < 1:
            raise ValueError(f"rank_k={self.rank_k}, rank_prompts={self.rank_prompts}: need rank_k >= 2 and rank_prompts >= 1")
        if self.ptx_data not in PTX_DATA:
            raise ValueError(f"ptx_data={self.ptx_data!r}: expected {', '.join(PTX_DATA)}")
        if self.temperature <= 0 or self.eval_temperature <= 0:
            raise ValueError(f"temperature={self.temperature}, eval_temperature={self.eval_temperature}: both must be > 0")
        if self.base and not (Path(self.base) / "config.json").is_file():
            raise ValueError(f"base={self.base}: not a model folder (no config.json)")


def main(argv: list[str]) -> int:
    from rlhf_dist.evaluation.report import write_report
    from rlhf_dist.recipes.ppo import PPOConfig, train_ppo
    from rlhf_dist.recipes.stages import PretrainConfig, RMConfig, SFTConfig, pretrain, rm, sft

    cfg = parse_cli(QuickstartConfig, argv, "rlhf-dist quickstart", __doc__)
    load_task(cfg.task)  # a bad task spec fails here, before anything is written
    load_config(PPOConfig, cfg.ppo_config, ["out=x", *cfg.ppo_overrides])  # so does a bad PPO config
    out, start = Path(cfg.out), time.perf_counter()
    data = out / "data"
    common = [f"data={data}", f"seed={cfg.seed}", f"learner.cpus_per_rank={cfg.cpus}", "eval_every=0"]
    timings: dict[str, float] = {}

    with stage("1/10 task data (simulated labeler)", timings):
        from rlhf_dist.tasks.generate import main as task_data

        if task_data(["--out", str(data), f"seed={cfg.seed}", f"task={cfg.task}", "probe=0",
                      f"n_rl_prompts={max(2000, cfg.rank_prompts)}"]):
            return 1
        manifest = json.loads((data / "manifest.json").read_text())
    if cfg.base:  # pretraining is the longest stage: experiments on later stages reuse one base model
        print(f"\n== 2/10 pretraining skipped: base={cfg.base}", flush=True)
        base = {"model": cfg.base}
    else:
        with stage(f"2/10 pretrain a random-init {cfg.size} Llama on the corpus", timings):
            base = pretrain(load_config(PretrainConfig, None, [
                f"out={out / 'base'}", f"size={cfg.size}", f"epochs={cfg.pretrain_epochs}",
                *([f"vocab_size={cfg.vocab_size}"] if cfg.vocab_size else []), *common]))
    with stage("3/10 SFT on the demonstrations", timings):
        tuned = sft(load_config(SFTConfig, None, [f"out={out / 'sft'}", f"init={base['model']}", f"epochs={cfg.sft_epochs}",
                                                  f"task={cfg.task}", "gold_prompts=0", *common]))
    rankings = data  # the task's own comparisons (perturbed demonstrations) ...
    if cfg.rm_data == "policy":  # ... or, as in InstructGPT, the labeler ranking the SFT model's samples
        with stage(f"4/10 the labeler ranks {cfg.rank_k} SFT samples per RL prompt", timings):
            from rlhf_dist.recipes.label import LabelConfig, label

            rankings = out / "rankings"
            label(load_config(LabelConfig, None, [f"out={rankings}", f"policy={tuned['model']}", f"data={data}",
                                                  f"task={cfg.task}", f"k={cfg.rank_k}", f"prompts={cfg.rank_prompts}", f"temperature={cfg.temperature}",
                                                  f"max_new_tokens={cfg.max_new_tokens}", f"seed={cfg.seed}"]))
    with stage("5/10 reward model on the labeler's rankings", timings):
        reward = rm(load_config(RMConfig, None, [f"out={out / 'rm'}", f"init={tuned['model']}", f"epochs={cfg.rm_epochs}",
                                                 f"task={cfg.task}", *common, f"data={rankings}"]))
    ppo_common = [f"sft={tuned['model']}", f"reward_model={reward['model']}", f"data={data}", f"task={cfg.task}",
                  f"seed={cfg.seed}", f"iterations={cfg.ppo_iterations}", f"rollout.temperature={cfg.temperature}",
                  f"rollout.max_new_tokens={cfg.max_new_tokens}", "eval_prompts=0", *cfg.ppo_overrides]
    with stage("6/10 PPO against the reward model", timings):
        ppo = train_ppo(load_config(PPOConfig, cfg.ppo_config, [f"out={out / 'ppo'}", "ppo.ptx_coef=0", *ppo_common]))
    with stage(f"7/10 PPO-ptx (gamma = {cfg.ptx_coef:g}, LM term on the {cfg.ptx_data})", timings):
        ppo_ptx = train_ppo(load_config(PPOConfig, cfg.ppo_config, [
            f"out={out / 'ppo_ptx'}", f"ppo.ptx_coef={cfg.ptx_coef}", f"ppo.ptx_ratio={cfg.ptx_ratio}",
            "ptx_file=" + ",".join(str(data / name) for name in PTX_DATA[cfg.ptx_data]), *ppo_common]))
    with stage(f"8/10 evaluation on held-out prompts at T = {cfg.eval_temperature:g} (win rate vs SFT, gold, KL, alignment tax)", timings):
        from rlhf_dist.evaluation.evaluate import EvalConfig, evaluate_models, seen_alone

        models = {"base": base["model"], "sft": tuned["model"], "ppo": ppo["model"], "ppo_ptx": ppo_ptx["model"]}
        ev = evaluate_models(load_config(EvalConfig, None, [
            f"out={out / 'eval'}", *[f"models.{k}={v}" for k, v in models.items()], "baseline=sft",
            f"reward_model={reward['model']}", f"comparisons_file={rankings / 'comparisons_heldout.jsonl'}",
            f"data={data}", f"task={cfg.task}", f"prompts={cfg.eval_prompts}",
            f"temperature={cfg.eval_temperature}", f"max_new_tokens={cfg.max_new_tokens}", f"seed={cfg.seed}"]))
    if cfg.overopt:
        with stage("9/10 over-optimisation: PPO without KL penalty, and best-of-n", timings):
            from rlhf_dist.evaluation.overopt import OveroptConfig, run_overopt

            over = run_overopt(load_config(OveroptConfig, None, [
                f"out={out / 'overopt'}", f"sft={tuned['model']}", f"reward_model={reward['model']}", f"data={data}",
                f"task={cfg.task}", f"kl_coefs={json.dumps(cfg.overopt_kl_coefs)}", f"iterations={cfg.overopt_iterations}",
                f"eval_every={cfg.overopt_eval_every}",
                f"bon_n={json.dumps(cfg.bon_n)}", f"ppo_config={cfg.ppo_config}", f"temperature={cfg.temperature}",
                f"max_new_tokens={cfg.max_new_tokens}", f"seed={cfg.seed}", f"eval_prompts={min(cfg.eval_prompts, 128)}",
                f"ppo_overrides={json.dumps(cfg.ppo_overrides)}"]))

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
        (out / "quickstart.json").write_text(json.dumps(summary, indent=2))
        report = write_report(out)
    timings["total"] = time.perf_counter() - start
    summary["timings_s"] = timings
    (out / "quickstart.json").write_text(json.dumps(summary, indent=2))
    print_table([*headline.items(), ("total time", f"{timings['total'] / 60:.1f} min")], "quickstart summary")
    print(f"\nreport: {report.resolve()}\n(open it in a browser; TensorBoard: tensorboard --logdir {out})")
    return 0


def _win(model: dict) -> str:
    """The labeler's verdicts with their 95% interval, and their expectation without labeler noise."""
    lo, hi = model["win_rate_ci95"]
    return f"{model['win_rate_vs_sft']:.3f} [{lo:.3f}, {hi:.3f}], expected {model['win_prob_vs_sft']:.3f}"
