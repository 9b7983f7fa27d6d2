"""One learner rank: a model inside a DeepSpeed ZeRO engine, trained on micro-batches.

The learner group (rlhf_dist.actors.learner_group) runs one `TrainEngine` per rank inside a Ray
actor; pretraining, SFT, the reward model and PPO all train through it. DeepSpeed is
imported only when an engine is built.

Batch arithmetic: global batch = micro_batch_size * grad_accum * num_ranks. The configs give the
global batch and the micro-batch size; `grad_accum` is derived, and an inexact split is an error.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from rlhf_dist.algo.schedules import lr_multiplier
from rlhf_dist.config.learner import LearnerConfig, OptimConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def grad_accum_steps(global_batch: int, micro_batch_size: int, num_ranks: int) -> int:
    """Gradient-accumulation steps so that micro * accum * ranks == global batch, exactly."""
    per_step = micro_batch_size * num_ranks
    if global_batch % per_step:
        raise ValueError(
            f"batch size {global_batch} is not divisible by micro_batch_size {micro_batch_size} x "
            f"num_ranks {num_ranks} = {per_step}"
        )
    return global_batch // per_step


def attention_kernel(cfg: LearnerConfig, device: torch.device) -> str | None:
    """The attention implementation to set on a trained model, or None to keep the model's own.

    "auto" picks eager attention (matmuls + softmax) for bf16 on CPU: there torch's flash-attention
    kernel is slow backward in bf16, and eager attention is what makes a bf16 learner faster than
    fp32 (benchmarks/bench_precision.py; docs/stack.md, "bf16 on CPU").
    """
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    return "eager" if cfg.dtype == "bf16" and device.type == "cpu" else None


def deepspeed_config(cfg: LearnerConfig, optim: OptimConfig, global_batch: int) -> dict:
    """The DeepSpeed JSON config for one learner."""
    accum = grad_accum_steps(global_batch, cfg.micro_batch_size, cfg.num_ranks)
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.dtype == "bf16"},
        # We pass torch's AdamW: no fused-Adam JIT build on CPU (docs/stack.md), same math everywhere.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }


class TrainEngine:
    """A model wrapped by `deepspeed.initialize`, with AdamW and a warm-up + decay schedule.

    `micro_step(loss)` back-propagates one micro-batch; DeepSpeed applies the optimizer at the
    accumulation boundary (and divides each micro-batch loss by the accumulation steps, which
    the objectives' normalisers account for: see rlhf_dist.algo.losses.global_normalizer).
    """

    def __init__(self, model: torch.nn.Module, cfg: LearnerConfig, optim: OptimConfig, global_batch: int, total_steps: int):
        import deepspeed

        if cfg.lora_rank:
            from rlhf_dist.models.lora import add_lora

            model = add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
        if cfg.gradient_checkpointing:
            hf = getattr(model, "hf", model)
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.cfg, self.optim_cfg = cfg, optim
        self.grad_accum = grad_accum_steps(global_batch, cfg.micro_batch_size, cfg.num_ranks)
        params = [p for p in model.parameters() if p.requires_grad]
        if cfg.offload_optimizer:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer = DeepSpeedCPUAdam(params, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay, adamw_mode=True)
        else:
            optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay)
        self.base_optimizer = optimizer  # its state holds this rank's AdamW moments (ZeRO: its partition)
        # We step the schedule ourselves, exactly once per optimizer step (at the accumulation
        # boundary), so the learning rate never depends on how the engine counts micro-steps.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: lr_multiplier(step, total_steps, optim.warmup_steps, optim.schedule, optim.min_lr_ratio),
        )
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(cfg, optim, global_batch),
        )
        self.model = self.engine.module
        from rlhf_dist.models.lora import lora_layers

        self.lora = lora_layers(self.model) if cfg.lora_rank else {}
        kernel = attention_kernel(cfg, torch.device(self.engine.device))
        if kernel is not None:
            getattr(self.model, "hf", self.model).set_attn_implementation(kernel)

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def micro_step(self, loss: torch.Tensor) -> None:
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.backward(loss)
        self.engine.step()  # applies the optimizer only at the accumulation boundary
        if boundary:
            self.scheduler.step()

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def grad_norm(self) -> float | None:
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def named_full_tensors(self, merged: bool = True):
        """Yield (name, full tensor on CPU) on rank 0, one parameter at a time; nothing elsewhere.
        With LoRA, `merged` yields the merged weights under the base model's names (what vLLM and a
        model folder take; rlhf_dist.models.lora), else the frozen base layers and the adapters apart.
        EVERY rank must iterate to the end, in step (see `iter_full_tensors`)."""
        import torch.distributed as dist

        from rlhf_dist.models.lora import merged_named_tensors

        rank = dist.get_rank() if dist.is_initialized() else 0
        tensors = iter_full_tensors(self.model, self.cfg.zero_stage == 3, rank)
        return merged_named_tensors(tensors, self.lora) if self.lora and merged else tensors

    def named_adapter_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """The LoRA adapters alone (the trainable A and B tensors) under the names of peft's adapter
        file (`rlhf_dist.models.lora.adapter_state`), full tensors on CPU, on rank 0; [] elsewhere
        and without LoRA. Only the adapters are gathered or copied (ZeRO-3: one at a time). EVERY
        rank must call it (the gathers are collective)."""
        import torch.distributed as dist

        from rlhf_dist.models.lora import LORA_PARAM, adapter_state

        if not self.lora:
            return []
        rank = dist.get_rank() if dist.is_initialized() else 0
        tensors = iter_full_tensors(self.model, self.cfg.zero_stage == 3, rank, keep=lambda name: LORA_PARAM in name)
        return list(adapter_state(tensors).items())

    def full_state_dict(self, merged: bool = True) -> dict[str, torch.Tensor] | None:
        """The full (unsharded) state dict on rank 0, None elsewhere. Every rank must call it."""
        import torch.distributed as dist

        state = dict(self.named_full_tensors(merged))
        return state if (not dist.is_initialized() or dist.get_rank() == 0) else None

    def trainable_params(self) -> int:
        return sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in self.model.parameters() if p.requires_grad)

    def optimizer_state_bytes(self) -> int:
        """Bytes of this rank's AdamW state (its ZeRO partition; 0 before the first step)."""
        return sum(t.numel() * t.element_size() for state in self.base_optimizer.state.values()
                   for t in state.values() if torch.is_tensor(t) and t.dim() > 0)

    def save_checkpoint(self, directory: str, tag: str) -> None:
        """A DeepSpeed (sharded, resumable) checkpoint: weights, optimizer state and our LR
        schedule's position (DeepSpeed does not own the scheduler). Every rank must call it.
        With LoRA the weights saved are the trainable ones only (the adapters, a scalar head): the
        frozen base is the model folder the run starts from."""
        self.engine.save_checkpoint(directory, tag=tag, client_state={"lr_scheduler": self.scheduler.state_dict()},
                                    exclude_frozen_parameters=bool(self.lora))

    def load_checkpoint(self, directory: str, tag: str) -> None:
        """Restore what `save_checkpoint` wrote (same ranks, ZeRO stage and config). Every rank must call it."""
        path, client = self.engine.load_checkpoint(directory, tag=tag, load_optimizer_states=True,
                                                   load_lr_scheduler_states=False, load_module_strict=not self.lora)
        if path is None:
            raise FileNotFoundError(f"{directory}/{tag}: no DeepSpeed checkpoint to load")
        self.scheduler.load_state_dict(client["lr_scheduler"])


def iter_full_tensors(model: torch.nn.Module, zero3: bool, rank: int, keep: Callable[[str], bool] | None = None):
    """(name, full tensor on CPU) for every parameter and persistent buffer, yielded on rank 0 only.

    Under ZeRO-3 each parameter is gathered, copied and yielded before the next, so rank 0 never
    holds a second full model besides what the consumer keeps (weight sync sends it on in
    buckets). Every rank must iterate to the end, in step: the gathers are collective.
    `keep`: only the parameters and buffers whose name it accepts (the same on every rank).
    """
    names = set()
    for name, param in model.named_parameters():
        names.add(name)
        if keep is not None and not keep(name):
            continue
        if zero3:
            import deepspeed

            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                tensor = param.detach().to("cpu", copy=True) if rank == 0 else None
        else:
            tensor = param.detach().to("cpu", copy=True) if rank == 0 else None
        if tensor is not None:
            yield name, tensor
    if rank == 0:  # persistent buffers are replicated on every rank
        for name, buf in _persistent_buffers(model):
            if name not in names and (keep is None or keep(name)):
                yield name, buf.detach().to("cpu", copy=True)


def _persistent_buffers(model: torch.nn.Module):
    """Buffers that belong in a checkpoint (not e.g. rotary caches registered persistent=False,
    which vLLM's loader rejects)."""
    for module_name, module in model.named_modules():
        for name, buf in module.named_buffers(recurse=False):
            if name not in module._non_persistent_buffers_set:
                yield (f"{module_name}.{name}" if module_name else name), buf


def set_rank_environment(rank: int, world_size: int, master_addr: str, master_port: int, local_rank: int = 0) -> None:
    """All five variables DeepSpeed needs without a launcher (with one missing it tries mpi4py)."""
    os.environ.update(
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(local_rank),
    )
