"""Rollout workers: N Ray actors, each holding one vLLM engine that samples responses.

Each worker returns its samples as an Arrow RecordBatch (one row per response, with the weight
version that sampled it; with an environment, one row per multi-turn episode, run by
`rlhf_dist.engines.episodes.run_episodes` against the worker's own pool of environment
processes); the group balances prompts across workers and concatenates the batches
in prompt order. Weights arrive through `WeightSyncActorMixin` (the learner's rank 0 pushes
them: the full weights, or with rollout.lora_sync=adapter the policy's LoRA adapter, which the
engine serves on its base weights). The number of workers is independent of the number of learner ranks.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import ray

from rlhf_dist.actors.resources import wait_placed
from rlhf_dist.actors.restarts import Restarts, get_replacing
from rlhf_dist.buffer import balanced_bounds, concat, rollouts_to_batch
from rlhf_dist.engines.vllm_rollout import CPU_ENGINE_PROCESS_ENV
from rlhf_dist.engines.weight_sync import WeightSyncActorMixin
from rlhf_dist.runtime import vllm_cpu_env

ENGINE_START_TIMEOUT_S = 900.0


class RolloutWorker(WeightSyncActorMixin):
    """A thin shell around `VLLMRolloutEngine` (started with the weight-sync worker extension)."""

    def __init__(self, model_dir: str, worker_id: int, seed: int, max_model_len: int, dtype: str = "float32",
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.85, env=None, lora_rank: int = 0,
                 adapter_root: str | None = None) -> None:
        """`env`: an `EnvSettings` (episodes against an environment) or None (one response per prompt).
        `lora_rank` > 0: the engine serves the policy's LoRA adapter of that rank, pushed by the learner
        (rollout.lora_sync=adapter), on the base weights of `model_dir`; the adapter folders go
        under `adapter_root` (default: a temp folder of the worker's own)."""
        import torch

        from rlhf_dist.engines.vllm_rollout import VLLMRolloutEngine
        from rlhf_dist.engines.weight_sync import EXTENSION_CLS

        kwargs: dict = {"worker_extension_cls": EXTENSION_CLS}
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
            if tensor_parallel_size > 1:  # UNTESTED here (no GPU): vLLM starts its own Ray workers
                kwargs["distributed_executor_backend"] = "ray"
        self.worker_id = worker_id
        self.engine = VLLMRolloutEngine(model_dir, seed=seed, max_model_len=max_model_len, dtype=dtype,
                                        tensor_parallel_size=tensor_parallel_size, lora_rank=lora_rank, **kwargs)
        self.engine.warm_up()  # while the other roles start, not in the first iteration
        if lora_rank:
            import peft  # noqa: F401 - the adapter folders' writer needs it (seconds): now, not in the first push

            from rlhf_dist.engines.weight_sync import adapter_receiver

            adapter_receiver(self.engine, Path(adapter_root) / f"worker{worker_id}-{os.getpid()}" if adapter_root else None)
        self.env, self.env_pool = env, None
        if env is not None:
            from rlhf_dist.envs import EnvPool

            self.env_pool = EnvPool(env.spec, env.workers, env.timeout_s, timeout_setting="rollout.env_timeout_s")

    def generate(self, prompt_ids: Sequence[Sequence[int]], prompt_index: Sequence[int], sample_index: Sequence[int],
                 max_new_tokens: int, temperature: float, seed: int, prompts: Sequence[str] | None = None):
        """Sample one response per prompt -> pa.RecordBatch with the rollout columns; with an
        environment, one episode per prompt (`prompts`: the texts the environment is reset with;
        `max_new_tokens`: per turn) with the episode columns too."""
        if self.env_pool is None:
            rollouts = self.engine.generate(prompt_ids, max_new_tokens, temperature, seed=seed)
        else:
            from rlhf_dist.engines.episodes import EpisodeLimits, run_episodes

            limits = EpisodeLimits(self.env.max_turns, self.env.max_episode_tokens, max_new_tokens)
            rollouts = run_episodes(self.engine, prompt_ids, list(prompts), self.env_pool, limits, temperature, seed)
        return rollouts_to_batch(rollouts, list(prompt_index), self.engine.weight_version, self.worker_id, list(sample_index))

    def greedy(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        return [r.response_ids for r in self.engine.generate(prompt_ids, max_new_tokens, temperature=0.0)]


def rollout_env(threads: int | None = None) -> dict[str, str]:
    """Environment of a rollout actor: on CPU `CPU_ENGINE_PROCESS_ENV` (the engine core in the
    actor's own process, no torch.compile), the vLLM CPU defaults of `rlhf_dist.runtime`, and with
    `threads` the engine's CPU threads (else Ray's: one per whole CPU of the actor, at least one)."""
    env = {
        **vllm_cpu_env(),
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
    import torch

    if not torch.cuda.is_available():
        env.update(CPU_ENGINE_PROCESS_ENV)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


class PendingRollout:
    """Sampling in flight on the workers; `result()` waits for it. A part whose worker died is
    sampled again, with the same prompts and seeds, by a replacement worker (`RolloutGroup.replace`)."""

    def __init__(self, group: "RolloutGroup", parts: list) -> None:
        self.group, self.parts = group, parts  # [(worker index, generate args, ref)]

    def result(self):
        """The Arrow table of all rows, in prompt order: every prompt's samples exactly once."""
        group = self.group
        return concat([get_replacing(ref, lambda why, w=w: group.replace(w, why + " while sampling"),
                                     lambda w=w, args=args: group.workers[w].generate.remote(*args))
                       for w, args, ref in self.parts])


class RolloutGroup:
    """N rollout workers; `generate` balances the prompts over them (contiguous parts whose sizes
    differ by at most one) and returns one Arrow table in prompt order.

    A worker that dies is replaced (at most `max_restarts` times in a run): a new actor in its
    place, given the current weights (or LoRA adapter) by `load_weights(worker)` (set by the owner;
    the version is checked on arrival), then its unfinished part is sampled again."""

    def __init__(self, model_dir: str, num_workers: int, seed: int, max_model_len: int, num_cpus: float = 0.25,
                 num_gpus: float = 0.0, dtype: str = "float32", tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.85, max_restarts: int = 3, wait: bool = True,
                 threads: int | None = None, env: dict[str, str] | None = None, episodes=None,
                 lora_rank: int = 0) -> None:
        """`env`: environment variables of the actors; `episodes`: an `EnvSettings` (each worker
        runs multi-turn episodes against its own environment processes) or None; `lora_rank` > 0:
        the engines serve pushed LoRA adapters of that rank (rollout.lora_sync=adapter)."""
        actor = ray.remote(RolloutWorker).options(num_cpus=num_cpus, num_gpus=num_gpus if tensor_parallel_size == 1 else 0,
                                                  runtime_env={"env_vars": {**rollout_env(threads), **(env or {})}})
        # With adapters: every worker's adapter folders under one folder of the group's, which
        # `shutdown` removes (also those of a worker that was killed).
        self.adapter_root = tempfile.mkdtemp(prefix="rlhf-dist-lora-") if lora_rank else None
        self._start = lambda w: actor.remote(model_dir, w, seed + 100003 * w, max_model_len, dtype, tensor_parallel_size,
                                             gpu_memory_utilization, episodes, lora_rank, self.adapter_root)
        self._asked = f"{num_workers} x {num_cpus:g} CPU + {num_gpus:g} GPU"
        self.workers = [self._start(w) for w in range(num_workers)]
        self.restarts, self.load_weights = Restarts("rollout", max_restarts), None
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Wait until every engine is up (a vLLM start is the longest of a run's roles: docs/results.md,
        "Start-up"); `wait=False` lets the owner start other actors meanwhile."""
        wait_placed([w.weight_version.remote() for w in self.workers], "rollout workers", ENGINE_START_TIMEOUT_S, self._asked)

    def replace(self, w: int, why: str) -> None:
        """Start a new worker in place of worker `w` and load the current weights into it."""

        def start():
            worker = self._start(w)
            wait_placed([worker.weight_version.remote()], "replacement rollout worker", ENGINE_START_TIMEOUT_S, self._asked)
            if self.load_weights is not None:
                self.load_weights(worker)
            return worker

        self.workers[w] = self.restarts.replace(self.workers[w], start, f"rollout worker {w}", why,
                                                "; given the current weights")

    def replace_dead(self, why: str) -> list[int]:
        """Replace every worker that no longer answers; their indices."""
        dead = []
        for w, worker in enumerate(self.workers):
            try:
                ray.get(worker.weight_version.remote(), timeout=60)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                dead.append(w)
        for w in dead:
            self.replace(w, why)
        return dead

    def generate(self, prompt_ids: Sequence[Sequence[int]], prompt_index: Sequence[int], sample_index: Sequence[int],
                 max_new_tokens: int, temperature: float, seed: int, prompts: Sequence[str] | None = None):
        """Row r is seeded with seed + r, whichever worker samples it (per-request seeds)."""
        return self.submit(prompt_ids, prompt_index, sample_index, max_new_tokens, temperature, seed, prompts).result()

    def submit(self, prompt_ids: Sequence[Sequence[int]], prompt_index: Sequence[int], sample_index: Sequence[int],
               max_new_tokens: int, temperature: float, seed: int,
               prompts: Sequence[str] | None = None) -> "PendingRollout":
        """`generate` without waiting: the workers sample while the caller goes on. A weight push
        issued afterwards waits for the sampling (Ray runs an actor's calls in order), so the
        samples carry the version they were started with. `prompts`: the prompt texts (episodes)."""
        parts = []
        for w, (lo, hi) in enumerate(balanced_bounds(len(prompt_ids), len(self.workers))):
            if hi > lo:
                args = (list(prompt_ids[lo:hi]), list(prompt_index[lo:hi]), list(sample_index[lo:hi]), max_new_tokens,
                        temperature, seed + lo, None if prompts is None else list(prompts[lo:hi]))
                parts.append((w, args, self.workers[w].generate.remote(*args)))
        return PendingRollout(self, parts)

    def greedy(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[list[int]]]:
        """Every worker's greedy responses to the same prompts (to check that weights are in sync)."""
        return ray.get([w.greedy.remote(list(prompt_ids), max_new_tokens) for w in self.workers])

    def versions(self) -> list[int]:
        return ray.get([w.weight_version.remote() for w in self.workers])

    def shutdown(self) -> None:
        if self.adapter_root:  # the workers' adapter folders (ray.kill gives an actor no chance to clean up)
            ray.wait([w.close_adapter_sync.remote() for w in self.workers], num_returns=len(self.workers), timeout=10)
            shutil.rmtree(self.adapter_root, ignore_errors=True)  # workers on this node, a killed one's too
        for w in self.workers:
            ray.kill(w)
