"""The learner group: M Ray actors that form one torch.distributed group, each holding a
DeepSpeed ZeRO engine (rlhf_dist.engines.deepspeed_engine). Pretraining, SFT, the reward model and
PPO all train through it.

The driver hands the group a global batch of tokenised items; the group splits it into equal
contiguous shards (one per rank) and each shard into micro-batches; every rank normalises its
loss by the global unit count, so the update equals the full-batch mean gradient whatever the
number of ranks (tests/test_actors_learner_group.py checks 1 rank against 2 under ZeRO-2 and ZeRO-3).
Ranks sit in a placement group: CPUs per rank here, one GPU per rank on GPU clusters.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlhf_dist.actors.resources import wait_placed
from rlhf_dist.data.sampling import shard
from rlhf_dist.config.learner import LearnerConfig, OptimConfig
from rlhf_dist.engines.deepspeed_engine import grad_accum_steps
from rlhf_dist.runtime import RunStopped


# Resources that exist (checked first: rlhf_dist/actors/resources.py) are placed in seconds; a
# placement group still waiting after this long lacks something the check cannot see (memory).
PLACEMENT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ModelSpec:
    """What a learner trains: `path` (a local HF folder) loaded as `kind`.

    kind: "causal_lm" (pretrain, SFT, the PPO policy), "scalar" (a saved reward/value model) or
    "scalar_from_lm" (a new reward model: the causal LM's backbone plus a fresh scalar head).
    """

    path: str
    kind: str = "causal_lm"
    seed: int = 0


def load_model(spec: ModelSpec):
    from rlhf_dist.models import init_scalar_from_causal_lm, load_causal_lm, load_scalar_model

    if spec.kind == "causal_lm":
        return load_causal_lm(spec.path)
    if spec.kind == "scalar":
        return load_scalar_model(spec.path)
    if spec.kind == "scalar_from_lm":
        from rlhf_dist.models.loading import disable_dropout

        return disable_dropout(init_scalar_from_causal_lm(spec.path, seed=spec.seed))
    raise ValueError(f"unknown model kind {spec.kind!r}")


class LearnerWorker:
    """One rank. A thin shell: set up the process group, build the engine, run micro-batches."""

    def __init__(self, rank: int, world_size: int, torch_threads: int) -> None:
        self.rank, self.world_size = rank, world_size
        os.environ.setdefault("DS_ACCELERATOR", "cpu" if not _has_cuda() else "cuda")
        import torch

        if not torch.cuda.is_available():
            torch.set_num_threads(torch_threads)

    def address(self) -> tuple[str, int]:
        """This node's IP and a free port (rank 0 hosts the rendezvous)."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, master_addr: str, master_port: int, spec: ModelSpec, cfg: LearnerConfig, optim: OptimConfig,
              global_batch: int, total_steps: int, pad_id: int) -> dict:
        import torch

        from rlhf_dist.engines.deepspeed_engine import TrainEngine

        backend = self._init_distributed(master_addr, master_port)
        torch.manual_seed(spec.seed)
        model = load_model(spec)
        self.kind = spec.kind
        self.pad_id = pad_id
        self.engine = TrainEngine(model, cfg, optim, global_batch, total_steps)
        self.base_paths = {"engine": spec.path}
        return {"rank": self.rank, "params": sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()),
                "trainable_params": self.engine.trainable_params(), "grad_accum": self.engine.grad_accum,
                "backend": backend}

    def _init_distributed(self, master_addr: str, master_port: int) -> str:
        import deepspeed
        import torch

        from rlhf_dist.engines.deepspeed_engine import set_rank_environment

        # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU, so the local rank is always 0.
        set_rank_environment(self.rank, self.world_size, master_addr, master_port, local_rank=0)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(0)
        deepspeed.init_distributed(dist_backend=backend)
        return backend

    def train_step(self, objective_name: str, micro_batches: Sequence[Sequence], normalizer: float) -> dict:
        from rlhf_dist.engines.objectives import OBJECTIVES, run_micro_batches

        self.engine.engine.train()
        sums = run_micro_batches(OBJECTIVES[objective_name], self.engine.engine, micro_batches, self.pad_id,
                                 normalizer, self.engine.device, self.engine.micro_step)
        sums["lr"] = self.engine.lr()
        norm = self.engine.grad_norm()
        if norm is not None:
            sums["grad_norm"] = norm
        return sums

    def evaluate(self, objective_name: str, micro_batches: Sequence[Sequence], n_padding: int = 0) -> dict:
        """Forward-only; the last `n_padding` micro-batches only keep ZeRO-3's collective forward
        calls in step across ranks, and their metrics are discarded."""
        from rlhf_dist.engines.objectives import OBJECTIVES, run_micro_batches

        self.engine.engine.eval()
        objective = OBJECTIVES[objective_name]
        real = len(micro_batches) - n_padding
        sums = run_micro_batches(objective, self.engine.engine, micro_batches[:real], self.pad_id, 1.0, self.engine.device, None)
        run_micro_batches(objective, self.engine.engine, micro_batches[real:], self.pad_id, 1.0, self.engine.device, None)
        return sums

    def optimizer_state_mb(self) -> float:
        """This rank's AdamW state (MiB; its ZeRO partition), summed over the engines it holds."""
        engines = [getattr(self, n, None) for n in ("engine", "policy", "critic")]
        return sum(e.optimizer_state_bytes() for e in engines if e is not None) / 2**20

    def peak_memory_mb(self) -> float:
        """Peak resident memory of this rank's process (MiB; ru_maxrss), or peak CUDA memory on a GPU."""
        import resource

        import torch

        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def save_model(self, path: str, tokenizer_path: str | None, which: str = "engine") -> bool:
        """Gather the full weights (from ZeRO-3 shards if need be) and write an HF folder on rank 0.
        `which`: the attribute holding the TrainEngine ("engine"; PPO: "policy" or "critic")."""
        from rlhf_dist.models.lora import adapter_state, merged_named_tensors, save_adapter

        train_engine = getattr(self, which)
        state = train_engine.full_state_dict(merged=False)
        if state is None:
            return False
        model = train_engine.model
        hf = getattr(model, "hf", model)  # ScalarHeadModel keeps the HF model under .hf
        prefix = "hf." if hf is not model else ""
        Path(path).mkdir(parents=True, exist_ok=True)
        if train_engine.lora:  # the merged model, plus its adapters as a peft folder (docs/lora.md)
            c = train_engine.cfg
            save_adapter(Path(path) / "adapter", adapter_state(state.items(), prefix), c.lora_rank, c.lora_alpha,
                         c.lora_dropout, c.lora_targets, scalar=bool(prefix), base_model=self.base_paths[which])
            state = dict(merged_named_tensors(state.items(), train_engine.lora))
        state = {k.removeprefix(prefix): v for k, v in state.items()}
        hf.save_pretrained(path, state_dict=state)
        if tokenizer_path:
            from rlhf_dist.models import load_tokenizer

            load_tokenizer(tokenizer_path).save_pretrained(path)
        return True

    def save_checkpoint(self, directory: str, tag: str) -> None:
        self.engine.save_checkpoint(directory, tag)

    def frozen_sequence_logprobs(self, path: str, items: Sequence, pad_id: int, micro_batch_size: int,
                                 dtype: str) -> list[tuple[float, ...]]:
        """Per item, log pi(y|x) of each response under the frozen causal LM at `path` (DPO's
        reference pass): a plain forward of a full copy on this rank, released afterwards."""
        import gc

        import torch

        from rlhf_dist.engines.objectives import frozen_sequence_logprobs
        from rlhf_dist.engines.scoring import DTYPES, default_device
        from rlhf_dist.models import load_causal_lm

        device = default_device()
        model = load_causal_lm(path, dtype=DTYPES[dtype]).to(device)
        try:
            return frozen_sequence_logprobs(model, items, pad_id, micro_batch_size, device)
        finally:
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def load_checkpoint(self, directory: str, tag: str) -> None:
        self.engine.load_checkpoint(directory, tag)


def _answers(worker) -> bool:
    """Whether a rank's actor still answers a trivial call."""
    try:
        ray.get(worker.address.remote(), timeout=30)
        return True
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return False


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def micro_batches(items: Sequence, micro_batch_size: int) -> list[list]:
    return [list(items[i : i + micro_batch_size]) for i in range(0, len(items), micro_batch_size)]


class LearnerGroup:
    """M learner ranks. Methods take the GLOBAL batch and return metrics summed over ranks."""

    def _get(self, refs):
        """`ray.get` of calls on the ranks; a rank that died stops the run with one line naming it."""
        try:
            return ray.get(refs)
        except ray.exceptions.RayActorError as e:
            dead = [r for r, w in enumerate(self.workers) if not _answers(w)]
            if not dead:  # another actor (e.g. a rollout worker a rank was pushing to): the caller decides
                raise
            raise RunStopped(f"learner rank {dead[0]} died ({type(e).__name__}): the run cannot go on without it; "
                             "continue it with resume=auto from its last checkpoint") from None

    def __init__(self, spec: ModelSpec, cfg: LearnerConfig, optim: OptimConfig, global_batch: int,
                 total_steps: int, pad_id: int) -> None:
        self.cfg, self.global_batch = cfg, global_batch
        self.grad_accum = grad_accum_steps(global_batch, cfg.micro_batch_size, cfg.num_ranks)
        self.workers = self._spawn(LearnerWorker, cfg)
        addr, port = self._get(self.workers[0].address.remote())
        # All ranks must join the rendezvous at once: call setup on every worker before waiting.
        self.info = self._get([w.setup.remote(addr, port, spec, cfg, optim, global_batch, total_steps, pad_id) for w in self.workers])

    def _spawn(self, worker_cls, cfg: LearnerConfig, env: dict[str, str] | None = None) -> list:
        """A placement group with one bundle per rank, and one actor per rank in its bundle (`env`:
        extra environment variables of the ranks)."""
        bundle = {"CPU": cfg.cpus_per_rank}
        if cfg.gpus_per_rank:
            bundle["GPU"] = cfg.gpus_per_rank
        self.pg = placement_group([dict(bundle) for _ in range(cfg.num_ranks)], strategy="PACK")
        wait_placed(self.pg.ready(), "learner group", PLACEMENT_TIMEOUT_S, f"{cfg.num_ranks} x {bundle}")
        actor = ray.remote(worker_cls)
        return [
            actor.options(
                num_cpus=cfg.cpus_per_rank,
                num_gpus=cfg.gpus_per_rank,
                scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=self.pg, placement_group_bundle_index=r),
                runtime_env={"env_vars": {**_worker_env(), **(env or {})}},
            ).remote(r, cfg.num_ranks, cfg.torch_threads or max(1, int(cfg.cpus_per_rank)))
            for r in range(cfg.num_ranks)
        ]

    def _split(self, items: Sequence, length=None) -> list[list[list]]:
        """Each rank's contiguous shard, cut into micro-batches; with `length`, the shard is first
        sorted by it, so each micro-batch pads to the length of similar items. The gradient is the
        same (losses are normalised by the global unit count); on the task's texts of varied length
        it pads less and trains faster (benchmarks/README.md, bench_stages.py)."""
        n = self.cfg.num_ranks
        shards = [list(shard(items, r, n)) for r in range(n)]
        if length is not None:
            shards = [sorted(s, key=length, reverse=True) for s in shards]
        return [micro_batches(s, self.cfg.micro_batch_size) for s in shards]

    def train_step(self, objective: str, items: Sequence) -> dict:
        """One optimizer step on a global batch of tokenised items; metrics summed over ranks."""
        from rlhf_dist.algo.losses import global_normalizer
        from rlhf_dist.engines.objectives import OBJECTIVES

        if len(items) != self.global_batch:
            raise ValueError(f"train_step needs the global batch of {self.global_batch} items, got {len(items)}")
        # DeepSpeed averages gradients over ranks and divides each micro-batch loss by the
        # accumulation steps: the normaliser undoes both (rlhf_dist.algo.losses.global_normalizer).
        normalizer = global_normalizer(OBJECTIVES[objective].count(items), self.cfg.num_ranks, self.grad_accum)
        micro = self._split(items, OBJECTIVES[objective].length)
        results = self._get([w.train_step.remote(objective, mbs, normalizer) for w, mbs in zip(self.workers, micro)])
        return _sum_over_ranks(results)

    def evaluate(self, objective: str, items: Sequence) -> dict:
        """Forward-only pass over any number of items; metrics summed over ranks.

        Ranks get near-equal shards; a rank with fewer micro-batches runs padding micro-batches
        (a copy of the first item, metrics discarded) so that every rank makes the same number
        of forward calls, which ZeRO-3's parameter gathering requires.
        """
        if not items:
            raise ValueError("evaluate: no items")
        n = self.cfg.num_ranks
        per_rank = [micro_batches(list(items[r::n]), self.cfg.micro_batch_size) for r in range(n)]
        most = max(len(m) for m in per_rank)
        calls = []
        for w, mbs in zip(self.workers, per_rank):
            padding = most - len(mbs)
            calls.append(w.evaluate.remote(objective, mbs + [[items[0]]] * padding, padding))
        return _sum_over_ranks(self._get(calls))

    def optimizer_state_mb(self) -> list[float]:
        """Each rank's AdamW state (MiB)."""
        return self._get([w.optimizer_state_mb.remote() for w in self.workers])

    def peak_memory_mb(self) -> list[float]:
        """Each rank's peak memory so far (MiB)."""
        return self._get([w.peak_memory_mb.remote() for w in self.workers])

    def save_model(self, path: str | Path, tokenizer_path: str | Path | None = None) -> None:
        self._get([w.save_model.remote(str(path), None if tokenizer_path is None else str(tokenizer_path)) for w in self.workers])

    def save_checkpoint(self, directory: str | Path, tag: str) -> None:
        self._get([w.save_checkpoint.remote(str(directory), tag) for w in self.workers])

    def load_checkpoint(self, directory: str | Path, tag: str) -> None:
        self._get([w.load_checkpoint.remote(str(directory), tag) for w in self.workers])

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
        remove_placement_group(self.pg)


class ReferenceRanks(LearnerGroup):
    """`cfg.num_ranks` actors placed as the learner ranks are (same bundles), with no process group,
    engine or optimizer: one forward pass of a frozen model over many items, e.g. DPO's reference
    log-probs, computed once before the learner group starts (Rafailov et al. 2023, section 4: the
    reference is fixed). Each rank holds a full copy of the frozen model for the pass."""

    def __init__(self, cfg: LearnerConfig) -> None:
        self.cfg = cfg
        self.workers = self._spawn(LearnerWorker, cfg)

    def sequence_logprobs(self, path: str | Path, items: Sequence, pad_id: int) -> list[tuple[float, ...]]:
        """Per item (TokenizedComparison), the tuple of log pi(y|x) of its responses under the causal
        LM at `path`, in the items' order; rank r takes items r, r + n, ... (near-equal shards)."""
        n = len(self.workers)
        calls = [w.frozen_sequence_logprobs.remote(str(path), list(items[r::n]), pad_id, self.cfg.micro_batch_size, self.cfg.dtype)
                 for r, w in enumerate(self.workers)]
        out: list = [None] * len(items)
        for r, result in enumerate(self._get(calls)):
            out[r::n] = result
        return out


def _sum_over_ranks(results: list[dict]) -> dict:
    out: dict[str, float] = {}
    for r in results:
        for k, v in r.items():
            if k in ("lr", "grad_norm"):  # identical on every rank
                out[k] = v
            else:
                out[k] = out.get(k, 0.0) + v
    return out


def _worker_env() -> dict[str, str]:
    keep = ("DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR", "OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env
