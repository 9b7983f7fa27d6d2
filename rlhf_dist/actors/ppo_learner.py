"""The PPO learner group: M ranks (the same Ray actors and process group as the pretrain/SFT/RM
learner group), each holding two DeepSpeed engines: the policy (from SFT) and the critic (from
the RM, InstructGPT C.4).

The driver hands the group Arrow tables; the group declares the split once: rows go to ranks in
contiguous equal parts, each part in micro-batches of `learner.micro_batch_size`. Rank 0 also
pushes the policy's weights to the rollout workers (gathered one parameter at a time under ZeRO-3,
in buckets, with a version; with rollout.lora_sync=adapter, the LoRA adapters only).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from rlhf_dist.actors.learner_group import LearnerGroup, LearnerWorker, ModelSpec, load_model
from rlhf_dist.buffer import balanced_bounds
from rlhf_dist.config.learner import LearnerConfig, OptimConfig
from rlhf_dist.engines.deepspeed_engine import grad_accum_steps
from rlhf_dist.engines.ppo import PPOLossConfig


class PPOLearnerWorker(LearnerWorker):
    """One rank: policy + critic engines; forward passes, PPO micro-steps, weight push."""

    def setup_ppo(self, master_addr: str, master_port: int, policy: ModelSpec, critic: ModelSpec | None, cfg: LearnerConfig,
                  policy_optim: OptimConfig, critic_optim: OptimConfig, minibatch_size: int, total_steps: int,
                  pad_id: int, loss_cfg: PPOLossConfig) -> dict:
        import torch

        from rlhf_dist.engines.deepspeed_engine import TrainEngine

        backend = self._init_distributed(master_addr, master_port)
        torch.manual_seed(policy.seed)
        self.pad_id, self.loss_cfg = pad_id, loss_cfg
        self.policy = TrainEngine(load_model(policy), cfg, policy_optim, minibatch_size, total_steps)
        # critic None: a critic-free estimator (ppo.advantage), no second engine at all
        self.critic = TrainEngine(load_model(critic), cfg, critic_optim, minibatch_size, total_steps) if critic else None
        self.sync = None
        self.base_paths = {"policy": policy.path, "critic": critic.path if critic else None}
        return {"rank": self.rank, "backend": backend, "grad_accum": self.policy.grad_accum,
                "policy_trainable_params": self.policy.trainable_params(),
                "policy_params": sum(p.numel() for p in self.policy.model.parameters()),
                "critic_params": sum(p.numel() for p in self.critic.model.parameters()) if self.critic else 0}

    def _engines(self):
        return [e for e in (self.policy, self.critic) if e is not None]

    def forward_old(self, micro_tables: Sequence[pa.Table], n_padding: int = 0, keep: bool = False):
        """(old log-probs, values, entropy) list arrays of the real micro-batches; the last
        `n_padding` ones only keep ZeRO-3's collective forwards in step across ranks. `keep`: the
        forwards' graphs are kept for the next `ppo_step(..., reuse_forward=True)` (engines.ppo.kept_forwards)."""
        from rlhf_dist.engines.ppo import kept_forwards, old_logprobs_and_values

        self.kept = None
        critic = self.critic.engine if self.critic else None
        for e in self._engines():
            e.engine.train() if keep else e.engine.eval()
        if keep:
            out, self.kept = kept_forwards(self.policy.engine, critic, micro_tables, self.pad_id, self.loss_cfg,
                                           self.policy.device)
            return out
        real = len(micro_tables) - n_padding
        budget = self.loss_cfg.forward_max_tokens
        out = old_logprobs_and_values(self.policy.engine, critic, micro_tables[:real], self.pad_id,
                                      self.loss_cfg.temperature, self.policy.device, budget) if real else None
        if n_padding:
            old_logprobs_and_values(self.policy.engine, critic, micro_tables[real:], self.pad_id,
                                    self.loss_cfg.temperature, self.policy.device, budget)
        return out

    def ppo_step(self, micro_tables: Sequence[pa.Table], ptx_micro_items: Sequence[Sequence] | None,
                 token_normalizer: float, ptx_normalizer: float, reuse_forward: bool = False) -> dict:
        """One optimizer step of the policy and of the critic over this rank's micro-batches
        (with `reuse_forward`, the same rows `forward_old(keep=True)` forwarded, in that order)."""
        from rlhf_dist.data.collate import pack_lm
        from rlhf_dist.engines.ppo import ppo_micro_step, sum_stats

        for e in self._engines():
            e.engine.train()
        lrs = self.policy.lr(), (self.critic.lr() if self.critic else 0.0)  # the rates this step uses (read before the scheduler steps)
        kept, self.kept = (getattr(self, "kept", None) if reuse_forward else None), None
        if reuse_forward and (kept is None or len(kept) != len(micro_tables)):
            raise RuntimeError("ppo_step(reuse_forward=True) needs forward_old(keep=True) on the same micro-batches first")
        parts = []
        for i, table in enumerate(micro_tables):
            ptx = pack_lm(ptx_micro_items[i], self.pad_id) if ptx_micro_items else None
            parts.append(ppo_micro_step(self.policy, self.critic, table, ptx, self.pad_id, token_normalizer,
                                        ptx_normalizer, self.loss_cfg, self.policy.device,
                                        forwards=kept[i] if kept else None))
        stats = sum_stats(parts)
        stats["policy_lr_max"], stats["critic_lr_max"] = lrs
        for name, engine in (("policy", self.policy), ("critic", self.critic)):
            norm = engine.grad_norm() if engine is not None else None
            if norm is not None:
                stats[f"{name}_grad_norm_max"] = norm
        return stats

    def push_weights(self, actors: Sequence, version: int, transport: str, bucket_bytes: int,
                     lora_sync: str = "merged") -> dict:
        """Every rank iterates the gathered parameters in step; rank 0 sends them to the rollout
        actors. The sender is created once for a set of actors (a broadcast group stays up between
        pushes) and again when the set changes (a replaced rollout worker). `lora_sync="adapter"`:
        the policy's LoRA adapters alone, which the actors' engines serve as a vLLM LoRA adapter
        (rlhf_dist/engines/weight_sync/adapters.py); else the full (with LoRA: merged) weights."""
        import time

        import torch

        from rlhf_dist.engines.weight_sync import AdapterSpec, gathered_named_tensors, make_weight_sync

        start = time.perf_counter()
        adapter = lora_sync == "adapter"
        tensors = self.policy.named_adapter_tensors() if adapter else gathered_named_tensors(self.policy)
        if self.rank != 0:
            for _ in tensors:
                pass
            return {}
        targets = [a._actor_id for a in actors] + [lora_sync]
        if self.sync is not None and targets != self.sync_targets:
            try:
                self.sync.close()
            except Exception:  # a member of the old set is gone
                pass
            self.sync = None
        if self.sync is None:
            self.sync_targets = targets
            dtype = next(self.policy.model.parameters()).dtype
            c = self.policy.cfg  # the learner's LoRA settings: each adapter folder's config
            spec = AdapterSpec(c.lora_rank, c.lora_alpha, c.lora_dropout, c.lora_targets, self.base_paths["policy"])
            self.sync = make_weight_sync(list(actors), transport, adapter=spec if adapter else None,
                                         bucket_bytes=bucket_bytes,
                                         dtype=torch.bfloat16 if dtype == torch.bfloat16 else torch.float32)
        stats = self.sync.push(tensors, version)
        stats["seconds"] = time.perf_counter() - start
        return stats


    def save_checkpoint(self, directory: str, tag: str) -> None:
        self.policy.save_checkpoint(f"{directory}/policy", tag)
        if self.critic:
            self.critic.save_checkpoint(f"{directory}/critic", tag)

    def load_checkpoint(self, directory: str, tag: str) -> None:
        self.policy.load_checkpoint(f"{directory}/policy", tag)
        if self.critic:
            self.critic.load_checkpoint(f"{directory}/critic", tag)


class PPOLearnerGroup(LearnerGroup):
    """M PPO ranks. `minibatch_size` trajectories (all ranks together) make one optimizer step."""

    def __init__(self, policy: ModelSpec, critic: ModelSpec | None, cfg: LearnerConfig, policy_optim: OptimConfig,
                 critic_optim: OptimConfig, minibatch_size: int, total_steps: int, pad_id: int,
                 loss_cfg: PPOLossConfig, env: dict[str, str] | None = None) -> None:
        self.cfg, self.global_batch, self.has_critic = cfg, minibatch_size, critic is not None
        self.grad_accum = grad_accum_steps(minibatch_size, cfg.micro_batch_size, cfg.num_ranks)
        self.workers = self._spawn(PPOLearnerWorker, cfg, env)
        addr, port = self._get(self.workers[0].address.remote())
        self.info = self._get([w.setup_ppo.remote(addr, port, policy, critic, cfg, policy_optim, critic_optim,
                                                minibatch_size, total_steps, pad_id, loss_cfg) for w in self.workers])

    def _micro_tables(self, table: pa.Table, lo: int, hi: int) -> list[pa.Table]:
        m = self.cfg.micro_batch_size
        return [table.slice(i, min(m, hi - i)) for i in range(lo, hi, m)]

    def can_reuse_forward(self, rows: int, epochs: int) -> bool:
        """Whether `forward_old(keep=True)` + `ppo_step(reuse_forward=True)` apply: the batch is one
        minibatch, trained for one epoch, one micro-batch per rank (the kept graphs then hold no more
        activations than the update's own forward would)."""
        return epochs == 1 and rows == self.global_batch and self.grad_accum == 1

    def forward_old(self, table: pa.Table, keep: bool = False) -> tuple[pa.Array, pa.Array, pa.Array]:
        """old log-probs, values and entropy of every row of `table`, in row order; `keep` (see
        `can_reuse_forward`): the next `ppo_step(table, ..., reuse_forward=True)` reuses these forwards."""
        per_rank = [self._micro_tables(table, lo, hi) for lo, hi in balanced_bounds(table.num_rows, self.cfg.num_ranks)]
        most = max(len(m) for m in per_rank)
        refs = [w.forward_old.remote(mts + [table.slice(0, 1)] * (most - len(mts)), most - len(mts), keep)
                for w, mts in zip(self.workers, per_rank)]
        parts = [p for p in self._get(refs) if p is not None]
        return tuple(None if parts[0][k] is None else pa.chunked_array([p[k] for p in parts]).combine_chunks()
                     for k in range(3))

    def ppo_step(self, minibatch: pa.Table, ptx_items: Sequence | None, reuse_forward: bool = False) -> dict:
        """One optimizer step on a minibatch of exactly `minibatch_size` rows (+ its ptx sequences);
        `reuse_forward`: the rows of the last `forward_old(keep=True)`, in the same order."""
        from rlhf_dist.algo.losses import global_normalizer
        from rlhf_dist.data.collate import lm_token_count
        from rlhf_dist.engines.ppo import sum_stats

        if minibatch.num_rows != self.global_batch:
            raise ValueError(f"ppo_step needs {self.global_batch} trajectories, got {minibatch.num_rows}")
        ranks, accum = self.cfg.num_ranks, self.grad_accum
        tokens = float(pc.sum(pc.list_value_length(minibatch.column("response_ids"))).as_py())
        token_norm = global_normalizer(tokens, ranks, accum)
        ptx_split, ptx_norm = None, 1.0
        if ptx_items:
            if len(ptx_items) % (ranks * accum):
                raise ValueError(f"{len(ptx_items)} ptx sequences per minibatch do not split into {ranks} ranks x {accum} micro-batches")
            per = len(ptx_items) // (ranks * accum)
            ptx_split = [[list(ptx_items[(r * accum + i) * per:(r * accum + i + 1) * per]) for i in range(accum)] for r in range(ranks)]
            ptx_norm = global_normalizer(lm_token_count(ptx_items), ranks, accum)
        share = self.global_batch // ranks
        refs = [w.ppo_step.remote(self._micro_tables(minibatch, r * share, (r + 1) * share),
                                  ptx_split[r] if ptx_split else None, token_norm, ptx_norm, reuse_forward)
                for r, w in enumerate(self.workers)]
        return sum_stats(self._get(refs))

    def push_weights(self, rollout_actors: Sequence, version: int, transport: str = "auto",
                     bucket_bytes: int = 256 * 2**20, lora_sync: str = "merged") -> dict:
        """The policy to the rollout actors, stamped `version`; rank 0's stats ({"buckets", "bytes",
        "versions", "seconds"}). `lora_sync`: "merged" (full weights) or "adapter" (LoRA adapters only)."""
        results = self._get([w.push_weights.remote(list(rollout_actors), version, transport, bucket_bytes, lora_sync)
                             for w in self.workers])
        return results[0]

    def save(self, policy_dir, critic_dir, tokenizer_path) -> None:
        """The policy (and the critic, when there is one) as HF folders."""
        self._get([w.save_model.remote(str(policy_dir), str(tokenizer_path), "policy") for w in self.workers])
        if self.has_critic:
            self._get([w.save_model.remote(str(critic_dir), str(tokenizer_path), "critic") for w in self.workers])
