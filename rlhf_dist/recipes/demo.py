"""`make demo`: the parts of the InstructGPT pipeline that exist today, end to end on CPU.

    rlhf-dist demo [--config configs/demo.yaml] [--out runs/demo] [key=value ...]

1. the simulated labeler's task writes its data (corpus, demonstrations, prompts, rankings);
2. pretrain: a tokenizer and a random-init Llama, trained on the corpus (the stand-in for GPT-3);
3. SFT on the demonstrations; vLLM samples held-out prompts from the base and SFT models and
   the hidden gold scorer grades them;
4. the learner recomputes the SFT samples' log-probs at the sampling temperature and we report
   the gap to vLLM's (the engine/learner consistency PPO relies on);
5. the reward model on the labeler's rankings: held-out accuracy against the labeler's ceiling.
Every stage trains on the DeepSpeed learner group (Ray actors). PPO plugs in here when it lands.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlhf_dist.config import parse_cli
from rlhf_dist.recipes.common import print_table, stage
from rlhf_dist.tasks.base import DEFAULT_TASK, load_task


@dataclass
class DemoConfig:
    out: str = field(default="runs/demo", metadata={"help": "run folder"})
    seed: int = field(default=0, metadata={"help": "seed for the task data, the models and sampling"})
    task: str = field(default=DEFAULT_TASK, metadata={"help": "task plug-in, module:attr or file.py:attr"})
    size: str = field(default="small", metadata={"help": "model size (tiny|small)"})
    cpus: float = field(default=2.0, metadata={"help": "CPUs for the (single) learner rank"})
    pretrain_epochs: float = field(default=1.0, metadata={"help": "passes over the pretraining corpus"})
    sft_epochs: float = field(default=2.0, metadata={"help": "passes over the demonstrations"})
    rm_epochs: float = field(default=1.0, metadata={"help": "passes over the rankings (InstructGPT: 1)"})
    gold_prompts: int = field(default=200, metadata={"help": "held-out prompts sampled to grade base and SFT"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature (also used for learner log-probs)"})
    max_new_tokens: int = field(default=48, metadata={"help": "response length budget"})


def consistency_gap(model_dir: Path, prompts: list, temperature: float, max_new_tokens: int, seed: int) -> dict:
    """max and mean |learner log-prob - vLLM log-prob| over the sampled tokens."""
    import torch

    from rlhf_dist.data import format_prompts
    from rlhf_dist.evaluation.gold import sample_responses
    from rlhf_dist.models import load_causal_lm, load_tokenizer, pad_prompt_response, response_logprobs

    tok = load_tokenizer(model_dir)
    rollouts = sample_responses(str(model_dir), format_prompts(tok, prompts), temperature, max_new_tokens, seed)
    batch = pad_prompt_response([r.prompt_ids for r in rollouts], [r.response_ids for r in rollouts], tok.pad_token_id)
    with torch.no_grad():
        learner = response_logprobs(load_causal_lm(model_dir), batch, temperature)
    engine = torch.zeros_like(learner)
    for i, r in enumerate(rollouts):
        engine[i, : len(r.logprobs)] = torch.tensor(r.logprobs)
    gap = (learner - engine).abs()[batch.response_mask]
    return {"max": gap.max().item(), "mean": gap.mean().item(), "tokens": gap.numel()}


def main(argv: list[str]) -> int:
    from rlhf_dist.data import load_prompts
    from rlhf_dist.recipes.stages import PretrainConfig, RMConfig, SFTConfig, pretrain, rm, sft

    cfg = parse_cli(DemoConfig, argv, "rlhf-dist demo", __doc__)
    load_task(cfg.task)  # a bad task spec fails here, before anything is written
    out = Path(cfg.out)
    data = out / "data"
    learner = [f"learner.cpus_per_rank={cfg.cpus}", f"seed={cfg.seed}", "eval_every=100"]
    timings: dict[str, float] = {}

    with stage("1/5 task data (simulated labeler)", timings):
        from rlhf_dist.tasks.generate import main as task_data

        rc = task_data(["--out", str(data), f"seed={cfg.seed}", f"task={cfg.task}"])
        if rc:
            return rc
        manifest = json.loads((data / "manifest.json").read_text())

    with stage(f"2/5 pretrain a random-init {cfg.size} Llama on the corpus", timings):
        base = pretrain(_stage_config(PretrainConfig, out / "base", data, learner + [f"size={cfg.size}", f"epochs={cfg.pretrain_epochs}"]))

    with stage("3/5 SFT on the demonstrations; gold of base vs SFT samples", timings):
        sft_summary = sft(_stage_config(SFTConfig, out / "sft", data, learner + [
            f"init={base['model']}", f"epochs={cfg.sft_epochs}", f"task={cfg.task}", f"gold_prompts={cfg.gold_prompts}",
            f"gold_temperature={cfg.temperature}", f"max_new_tokens={cfg.max_new_tokens}"]))

    with stage("4/5 learner log-probs vs vLLM log-probs (SFT model)", timings):
        prompts = load_prompts(data / "eval_prompts.jsonl")[:64]
        gap = consistency_gap(Path(sft_summary["model"]), prompts, cfg.temperature, cfg.max_new_tokens, cfg.seed)
        print(f"   |learner - vLLM| over {gap['tokens']} tokens: max {gap['max']:.2e}, mean {gap['mean']:.2e}")

    with stage("5/5 reward model on the labeler's rankings", timings):
        rm_summary = rm(_stage_config(RMConfig, out / "rm", data, learner + [
            f"init={sft_summary['model']}", f"epochs={cfg.rm_epochs}", f"task={cfg.task}"]))

    summary = {
        "task": cfg.task,
        "gold": {"base": sft_summary.get("gold/init"), "sft": sft_summary.get("gold/sft"),
                 "demonstrations": manifest.get("demonstrator_mean_gold"), "optimal": manifest.get("optimal_mean_gold")},
        "rm_accuracy": rm_summary.get("eval/accuracy"),
        "labeler_ceiling": rm_summary.get("labeler_ceiling"),
        "labeler_agreement_k2": manifest.get("labeler_agreement_k2"),
        "pretrain_heldout_loss": base.get("eval/loss"),
        "logprob_gap": gap,
        "timings_s": timings,
        "config": asdict(cfg),
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    print_table(
        [
            ("mean gold: base model samples", fmt(summary["gold"]["base"])),
            ("mean gold: SFT model samples", fmt(summary["gold"]["sft"])),
            ("mean gold: demonstrations (SFT data)", fmt(summary["gold"]["demonstrations"])),
            ("mean gold: optimal responses", fmt(summary["gold"]["optimal"])),
            ("RM held-out pairwise accuracy", fmt(summary["rm_accuracy"])),
            ("labeler ceiling on the same pairs", fmt(summary["labeler_ceiling"])),
            ("max |learner - vLLM| log-prob", f"{gap['max']:.2e}"),
            ("total time", f"{sum(timings.values()) / 60:.1f} min"),
        ],
        "demo summary (PPO is not built yet: see README status)",
    )
    print(f"\nwrote {out / 'demo.json'}; models in {out}/{{base,sft,rm}}/model")
    return 0


def _stage_config(cls, out: Path, data: Path, overrides: list[str]):
    from rlhf_dist.config import load_config

    return load_config(cls, None, [f"out={out}", f"data={data}", *overrides])
