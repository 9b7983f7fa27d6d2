"""The TRL side of bench_vs_trl.py: one TRL PPOTrainer run on CPU, timed; run with the TRL venv's python.

    .venv-trl/bin/python benchmarks/trl_ppo_run.py --sft DIR --reward-model DIR --prompt-ids FILE \\
        --response-length 64 --episodes 512 --out DIR [--threads 2] [--seed 0] [--bf16]
    .venv-trl/bin/python benchmarks/trl_ppo_run.py --versions      # the TRL stack's versions only

It imports nothing from rlhf_dist (that package lives in the other venv): it reads the model
folders bench_vs_trl.py built (a LlamaForCausalLM policy, a LlamaForSequenceClassification with
num_labels=1 as the reward model) and the prompts as token ids (a JSON list of lists, the very ids
`rlhf-dist ppo` samples from), and trains `trl.experimental.ppo.PPOTrainer` with the benchmark's
settings. The policy and the reference are two loads of the SFT folder, the reward and the value
model two loads of the reward-model folder, as TRL's own PPO example does.

Timed: `trainer.train()` (train_s), the generate calls inside it (TRL's `batch_generation`,
wrapped here: gen_s) and the end of every update (a TrainerCallback's on_step_end: update_s).
Output: one JSON line, the last line of stdout; TRL's own prints go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

from transformers import TrainerCallback

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def versions() -> dict:
    import accelerate
    import datasets
    import torch
    import transformers
    import trl

    return {"trl": trl.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "datasets": datasets.__version__,
            "python": sys.version.split()[0]}


def timed_generation(log: list[float]) -> None:
    """Wrap TRL's module-level `batch_generation` (the sampling of one rollout batch) with a timer.

    The trainer looks the name up in its module at call time, so replacing it there times every
    generate call of the run and nothing else.
    """
    import trl.experimental.ppo.ppo_trainer as ppo_trainer

    inner = ppo_trainer.batch_generation

    def batch_generation(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            log.append(time.perf_counter() - start)

    ppo_trainer.batch_generation = batch_generation


def build_trainer(args, out_dir: str):
    """PPOTrainer with the benchmark's settings (see bench_vs_trl.py), CPU, nothing saved or reported. fp32, or
    with `--bf16` TRL's bf16 mixed precision (`bf16=True`: fp32 weights, the forwards under bf16 autocast)."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM, LlamaForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tok = AutoTokenizer.from_pretrained(args.sft)
    tok.padding_side = "left"  # TRL appends the response to the padded query: queries must be left-padded
    with open(args.prompt_ids) as f:
        dataset = Dataset.from_dict({"input_ids": json.load(f)})
    fp32 = {"dtype": torch.float32}
    policy = LlamaForCausalLM.from_pretrained(args.sft, **fp32)
    ref = LlamaForCausalLM.from_pretrained(args.sft, **fp32)
    reward = LlamaForSequenceClassification.from_pretrained(args.reward_model, num_labels=1, **fp32)
    value = LlamaForSequenceClassification.from_pretrained(args.reward_model, num_labels=1, **fp32)
    config = PPOConfig(
        output_dir=out_dir, seed=args.seed, use_cpu=True, bf16=args.bf16, fp16=False,
        gradient_checkpointing=False,  # TRL's PPOConfig documents True as its default; the learner here does not recompute
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        local_rollout_forward_batch_size=args.batch_size, num_mini_batches=1, num_ppo_epochs=1,
        total_episodes=args.episodes, response_length=args.response_length, stop_token="eos",
        temperature=1.0, kl_coef=0.05, learning_rate=3e-6, missing_eos_penalty=1.0,
        num_sample_generations=0, eval_strategy="no", save_strategy="no", report_to="none",
        logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
    )
    return PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                      train_dataset=dataset, value_model=value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", action="store_true", help="print the stack's versions as JSON and exit")
    parser.add_argument("--sft")
    parser.add_argument("--reward-model")
    parser.add_argument("--prompt-ids", help="JSON list of prompt token-id lists")
    parser.add_argument("--response-length", type=int, default=64)
    parser.add_argument("--episodes", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64, help="rollout batch = minibatch = micro-batch")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true", help="TRL's bf16 mixed precision (default: fp32)")
    parser.add_argument("--out", help="scratch output_dir (TRL requires one; nothing is saved)")
    args = parser.parse_args()
    if args.versions:
        print(json.dumps(versions()), flush=True)
        return
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    gen_log: list[float] = []
    step_ends: list[float] = []
    with contextlib.redirect_stdout(sys.stderr):  # accelerator.print and the printer callback
        t0 = time.perf_counter()
        trainer = build_trainer(args, args.out)
        setup_s = time.perf_counter() - t0
        timed_generation(gen_log)
        trainer.add_callback(StepTimer(step_ends))
        start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - start
    marks = [start] + step_ends
    eos = [h.get("val/num_eos_tokens") for h in trainer.state.log_history if "val/num_eos_tokens" in h]
    print(json.dumps({
        "train_s": train_s, "setup_s": setup_s, "gen_s": sum(gen_log), "gen_calls_s": gen_log,
        "update_s": [b - a for a, b in zip(marks, marks[1:])], "episodes": trainer.state.episode,
        "eos_tokens_per_update": eos, "torch_threads": torch.get_num_threads(), "versions": versions(),
    }), flush=True)


class StepTimer(TrainerCallback):
    """Records the clock at the end of every PPO update (after its optimizer step and logging)."""

    def __init__(self, marks: list[float]) -> None:
        self.marks = marks

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append(time.perf_counter())


if __name__ == "__main__":
    main()
