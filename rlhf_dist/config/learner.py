"""The learner group's config (DeepSpeed ZeRO ranks) and the optimizer's, shared by every stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhf_dist.config.fields import param


@dataclass
class OptimConfig:
    lr: float = param(1e-3, "peak learning rate", gt=0)
    weight_decay: float = param(0.0, "AdamW weight decay", ge=0)
    betas: list[float] = param([0.9, 0.95], "AdamW betas", ge=0, lt=1)
    eps: float = param(1e-5, "AdamW eps (1e-5: docs/ppo-details.md item 36)", gt=0)
    schedule: Literal["cosine", "linear", "constant"] = param("cosine", "learning-rate schedule after warm-up")
    warmup_steps: int = param(0, "linear warm-up steps", ge=0)
    min_lr_ratio: float = param(0.1, "final lr / peak lr (InstructGPT RM: cosine to 10%)", ge=0, le=1)
    grad_clip: float = param(1.0, "global grad-norm clip (0: off)", ge=0)

    def __post_init__(self) -> None:
        if len(self.betas) != 2:
            raise ValueError(f"optim.betas needs two numbers, got {self.betas}")


@dataclass
class LearnerConfig:
    num_ranks: int = param(1, "data-parallel learner ranks (Ray actors)", ge=1)
    zero_stage: Literal[0, 1, 2, 3] = param(2, "DeepSpeed ZeRO stage")
    dtype: Literal["fp32", "bf16"] = param("fp32", "fp32 | bf16 (GPUs; CPUs with AVX512-BF16 or AMX)")
    attn_implementation: Literal["auto", "sdpa", "eager"] = param(
        "auto", "attention kernel of the trained models; auto: eager for bf16 on CPU (torch's CPU flash-attention "
                "backward is slow in bf16: benchmarks/bench_precision.py), the model's own (sdpa) otherwise")
    micro_batch_size: int = param(8, "sequences (or prompts) per forward pass per rank", ge=1)
    gradient_checkpointing: bool = param(False, "recompute activations in backward")
    offload_optimizer: bool = param(False, "ZeRO optimizer state in CPU memory (GPU runs)")
    cpus_per_rank: float = param(1.0, "Ray CPUs reserved per rank", ge=0)
    gpus_per_rank: float = param(0.0, "Ray GPUs per rank (1 on GPU clusters)", ge=0)
    torch_threads: int = param(0, "torch threads per rank on CPU (0: cpus_per_rank)", ge=0)
    forward_max_tokens: int = param(2048, "PPO: a micro-batch's rows are forwarded in length-sorted groups of at most "
                                          "this many padded tokens, so little padding is computed (0: one forward; "
                                          "ZeRO-3: always one; GPUs: e.g. 16384)", ge=0)
    # LoRA (Hu et al. 2021) with peft: adapters on the trained model, base weights frozen; only the
    # adapters (and a reward/value model's head) get gradients, AdamW states and ZeRO partitions.
    lora_rank: int = param(0, "LoRA rank of the adapters on every model this learner trains (0: full fine-tuning)", ge=0)
    lora_alpha: float = param(16.0, "LoRA alpha: an adapter's update is scaled by alpha / rank", gt=0)
    lora_dropout: float = param(0.0, "dropout on the adapters' input (PPO: > 0 makes train-mode log-probs "
                                     "differ from the rollout's, so the first minibatch's ratio is not 1)", ge=0, lt=1)
    lora_targets: str | list[str] = param("all-linear", "modules that get adapters: all-linear (every linear layer "
                                                        "but the LM head) or module names, e.g. [q_proj, v_proj]")
