"""The PPO learner's step on one accelerator: tokens/s and model FLOPs utilisation (MFU).

One process, no Ray and no vLLM: the learner rank's own code path, `TrainEngine` (DeepSpeed ZeRO)
around the policy and the critic, `kept_forwards` (old log-probs and values, graphs kept) then
`ppo_micro_step(..., forwards=kept)` (the update that reuses them: one epoch of one minibatch),
on random trajectories. The models are random-init Llama-shaped networks:

- `--size 0.5b` (default): Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 query / 2 key-value heads,
  MLP 4864, vocab 151,936, tied embeddings; 494M parameters), the critic the same backbone with a
  scalar head;
- `--size tiny`: hidden 256, 6 layers, vocab 512, for a smoke run on CPU (fp32, gloo).

Batch: `--rows` trajectories, prompts uniform in `--prompt-len` tokens, responses of
`--response-len` tokens (a fifth of them shorter, uniform), as the rollout would return them.
Trajectory forwards run in length-sorted groups of `--forward-max-tokens` padded tokens
(`learner.forward_max_tokens`).

Model FLOPs per step, counted on real (unpadded) tokens, for each network: 6 x (its matmul
parameters, the LM head included for the policy) per token for the forward and backward, plus
causal attention, 6 x layers x hidden x s^2 per sequence of s tokens (QK^T and AV, forward 2 x 2 x
s^2 / 2 x hidden, x3 with the backward). MFU = model FLOPs / step time / peak: `--peak-tflops`, or
989 (H100/H200 dense bf16) when the device name says H100 or H200. Padding and recomputation are
not counted as useful work.

    python benchmarks/bench_gpu_learner.py                        # on a GPU: bf16, ZeRO-2, 0.5B
    python benchmarks/bench_gpu_learner.py --size tiny --steps 2  # CPU smoke run (fp32)
"""

from __future__ import annotations

from _bench_utils import emit, environment, log, table

import argparse
import os
import random
import socket
import statistics
import time

import torch

SIZES = {
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=4096),
    "tiny": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=8,
                 intermediate_size=688, vocab_size=512, tie_word_embeddings=False, max_position_embeddings=1024),
}
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}  # dense bf16


def build_models(size: str, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from rlhf_dist.models import ScalarHeadModel

    config = LlamaConfig(**SIZES[size], rms_norm_eps=1e-6, rope_theta=1e6, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2, attn_implementation="sdpa")
    torch.manual_seed(seed)
    policy = LlamaForCausalLM(config)
    head = {"num_labels": 1, "id2label": {0: "LABEL_0"}, "label2id": {"LABEL_0": 0}}
    critic = ScalarHeadModel(LlamaForSequenceClassification(LlamaConfig(**{**config.to_dict(), **head})))
    critic.config.reward_bias = 0.0
    return policy, critic, config


def trajectories(rows: int, prompt_len: tuple[int, int], response_len: int, vocab: int, seed: int):
    """An Arrow table of `rows` rollouts with random advantages and returns (the update's inputs)."""
    from types import SimpleNamespace

    import pyarrow as pa

    from rlhf_dist.buffer import rollouts_to_batch

    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        prompt = [1] + [rng.randrange(3, vocab) for _ in range(rng.randint(*prompt_len) - 1)]
        n = response_len if rng.random() > 0.2 else rng.randint(1, response_len)
        response = [rng.randrange(3, vocab) for _ in range(n)]
        out.append(SimpleNamespace(prompt_ids=prompt, response_ids=response, logprobs=[0.0] * n, finished_with_eos=False))
    return pa.Table.from_batches([rollouts_to_batch(out, list(range(rows)), 0, 0)])


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters of the matrix multiplications: every Linear weight, the (tied) LM head included."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def model_flops(config, policy_params: int, critic_params: int, lengths: list[int]) -> float:
    tokens = sum(lengths)
    attention = sum(6 * config.num_hidden_layers * config.hidden_size * s * s for s in lengths)
    return 6 * (policy_params + critic_params) * tokens + 2 * attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, nargs=2, default=[64, 256], metavar=("MIN", "MAX"))
    parser.add_argument("--response-len", type=int, default=256)
    parser.add_argument("--forward-max-tokens", type=int, default=16384)
    parser.add_argument("--steps", type=int, default=6, help="timed steps after one warm-up step")
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cuda else "cpu")
    import deepspeed

    from rlhf_dist.algo.losses import global_normalizer
    from rlhf_dist.buffer import add_columns
    from rlhf_dist.config.learner import LearnerConfig, OptimConfig
    from rlhf_dist.engines.deepspeed_engine import TrainEngine, set_rank_environment
    from rlhf_dist.engines.ppo import PPOLossConfig, kept_forwards, ppo_micro_step

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    set_rank_environment(0, 1, "127.0.0.1", port)
    if cuda:
        torch.cuda.set_device(0)
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")

    dtype = args.dtype or ("bf16" if cuda else "fp32")
    policy_model, critic_model, config = build_models(args.size, args.seed)
    policy_params, critic_params = matmul_params(policy_model), matmul_params(critic_model)
    learner = LearnerConfig(zero_stage=args.zero_stage, dtype=dtype, micro_batch_size=args.rows,
                            gradient_checkpointing=args.gradient_checkpointing, forward_max_tokens=args.forward_max_tokens)
    total = args.steps + 1
    policy = TrainEngine(policy_model, learner, OptimConfig(lr=1e-6, schedule="constant"), args.rows, total)
    critic = TrainEngine(critic_model, learner, OptimConfig(lr=1e-6, schedule="constant"), args.rows, total)
    loss_cfg = PPOLossConfig(forward_max_tokens=args.forward_max_tokens if args.zero_stage != 3 else 0)
    device = policy.device

    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    log(f"bench_gpu_learner: {name}, {dtype}, ZeRO-{args.zero_stage}; policy {sum(p.numel() for p in policy_model.parameters()):,} "
        f"parameters ({policy_params:,} in matmuls), critic {critic_params:,} in matmuls")

    steps = []
    for step in range(total):
        batch = trajectories(args.rows, tuple(args.prompt_len), args.response_len, config.vocab_size, args.seed + step)
        lengths = [len(p) + len(r) for p, r in zip(batch.column("prompt_ids").to_pylist(), batch.column("response_ids").to_pylist())]
        response_tokens = sum(len(r) for r in batch.column("response_ids").to_pylist())
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        policy.engine.train()
        critic.engine.train()
        (logp, values, _), kept = kept_forwards(policy.engine, critic.engine, [batch], 0, loss_cfg, device)
        gen = torch.Generator().manual_seed(step)
        adv = [torch.randn(len(x), generator=gen).tolist() for x in logp.to_pylist()]
        batch = add_columns(batch, old_logprobs=logp, values=values, advantages=adv, returns=values)
        stats = ppo_micro_step(policy, critic, batch, None, 0, global_normalizer(response_tokens), 1.0, loss_cfg,
                               device, forwards=kept[0])
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        flops = model_flops(config, policy_params, critic_params, lengths)
        record = {"step": step, "seconds": seconds, "tokens": sum(lengths), "padded_tokens": len(lengths) * max(lengths),
                  "tokens_per_s": sum(lengths) / seconds, "model_tflops_per_s": flops / seconds / 1e12,
                  "mfu": flops / seconds / (peak * 1e12) if peak else None, "pg_loss": stats["pg_loss_sum"] / stats["tokens"],
                  "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
        steps.append(record)
        log(f"  step {step}{' (warm-up)' if step == 0 else ''}: {seconds:.3f} s, {record['tokens_per_s']:,.0f} tokens/s, "
            f"{record['model_tflops_per_s']:.1f} model TFLOP/s" + (f", MFU {record['mfu']:.1%}" if peak else ""))
    timed = steps[1:] or steps
    summary = {key: statistics.median(s[key] for s in timed) for key in ("seconds", "tokens_per_s", "model_tflops_per_s")}
    summary["mfu"] = statistics.median(s["mfu"] for s in timed) if peak else None
    log(table([{**summary, "device": name, "dtype": dtype, "rows": args.rows}], ["device", "dtype", "rows", "seconds",
              "tokens_per_s", "model_tflops_per_s", "mfu"], "\nPPO learner step (policy + critic), medians of the timed steps"))
    emit({"benchmark": "bench_gpu_learner", "env": environment(), "device": name, "peak_tflops": peak,
          "setup": {**vars(args), "dtype": dtype, "policy_matmul_params": policy_params, "critic_matmul_params": critic_params},
          "summary": summary, "steps": steps}, args.json_out)


if __name__ == "__main__":
    main()
