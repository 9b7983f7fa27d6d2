"""The frozen scorers of PPO as Ray actors: reward actor(s) (the RM and/or a reward function) and
reference actor(s) (the SFT policy), or both in one process per actor (`RewardAndReferenceActor`,
`reference.colocate_with_reward`). Thin shells around rlhf_dist.engines.scoring and
rlhf_dist.engines.reward_fn; a `ScorerPool` spreads the rows of a trajectory table over its actors
and puts the results back in row order."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import ray

from rlhf_dist.actors.restarts import Restarts, get_replacing
from rlhf_dist.buffer import balanced_bounds
from rlhf_dist.engines.reward_fn import RewardFunctionError


class RewardActor:
    """The reward of `reward_source`: the RM's score (`path`), a reward function's (`reward_fn`
    spec, or the gold scorer of `gold_task`; responses decoded with the tokenizer of `tokenizer`),
    or their sum. Only what the source uses is loaded: no RM weights without `path`."""

    def __init__(self, path: str, pad_id: int, micro_batch_size: int, dtype: str, reward_fn: str = "",
                 gold_task: str = "", tokenizer: str = "") -> None:
        self.engine = self.function = None
        if path:
            from rlhf_dist.engines.scoring import RewardEngine

            self.engine = RewardEngine(path, pad_id, micro_batch_size, dtype)
        if reward_fn or gold_task:
            from rlhf_dist.engines.reward_fn import RewardFunction
            from rlhf_dist.models import load_tokenizer

            tok = load_tokenizer(tokenizer)
            self.function = RewardFunction.from_spec(reward_fn, tok) if reward_fn else RewardFunction.gold(gold_task, tok)

    def score(self, table: pa.Table, prompts: list[str] | None = None) -> np.ndarray:
        """(B,) float32 rewards; `prompts`: the rows' prompt texts for the function (else decoded)."""
        parts = []
        if self.engine is not None:
            parts.append(self.engine.score(table))
        if self.function is not None:
            parts.append(self.function.score(table, prompts))
        if not parts:  # reward_source=env: the environment's rewards are the whole reward
            return np.zeros(table.num_rows, dtype=np.float32)
        return parts[0] if len(parts) == 1 else (parts[0] + parts[1]).astype(np.float32)


class ReferenceActor:
    def __init__(self, path: str, pad_id: int, temperature: float, micro_batch_size: int, dtype: str) -> None:
        from rlhf_dist.engines.scoring import ReferenceEngine

        self.engine = ReferenceEngine(path, pad_id, temperature, micro_batch_size, dtype)

    def logprobs(self, table: pa.Table) -> pa.ListArray:
        return self.engine.logprobs(table)


class RewardAndReferenceActor:
    """A reward actor and a reference actor in one process (`reference.colocate_with_reward`): one
    Python, torch and transformers start-up (benchmarks/README.md, bench_scorers.py) and one copy of the runtime's
    memory fewer per pair; on a GPU node both models share the actor's device (OpenRLHF's
    colocation of frozen models). Ray runs its two methods in two threads (max_concurrency=2) and
    torch releases the GIL inside its kernels, so the reward and the reference score a batch at
    the same time, as two actors would. Results are those of the separate actors: the same
    engines, the same kernels and thread counts."""

    def __init__(self, reward_args: tuple, reference_args: tuple) -> None:
        self.reward = RewardActor(*reward_args)
        self.reference = ReferenceActor(*reference_args)

    def score(self, table: pa.Table, prompts: list[str] | None = None) -> np.ndarray:
        return self.reward.score(table, prompts)

    def logprobs(self, table: pa.Table) -> pa.ListArray:
        return self.reference.logprobs(table)


class ScorerPool:
    """`num_actors` copies of one scorer; `submit(method, table)` returns a handle whose `result()`
    is the method's output for all rows in order (so reward and reference run in parallel);
    `submit(method, table, texts)` also passes each actor its rows' share of `texts` (one per row).

    An actor that dies is replaced (at most `max_restarts` times in a run) and its rows are scored
    again: a row never gets a made-up score. `role` names the faults/<role>_* metrics; `sharing`
    gives the pool of another role served by the same (colocated) actors, whose list of actors this
    pool then shares: a replacement made through either pool is seen by both, and a lost actor is
    replaced once."""

    def __init__(self, actor_cls, num_actors: int, num_cpus: float, num_gpus: float, *args, max_restarts: int = 3,
                 env: dict[str, str] | None = None, role: str = "", max_concurrency: int = 1) -> None:
        self.name = actor_cls.__name__
        self.restarts = Restarts(role or ("reward" if "Reward" in self.name else "reference"), max_restarts)
        remote = ray.remote(actor_cls).options(num_cpus=num_cpus, num_gpus=num_gpus, max_concurrency=max_concurrency,
                                               runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                                                                         **(env or {})}})
        self._start = lambda: remote.remote(*args)
        self.actors = [self._start() for _ in range(num_actors)]

    @classmethod
    def colocated(cls, count: int, cpus: float, gpus: float, reward_args: tuple, reference_args: tuple,
                  max_restarts: int = 3, env: dict[str, str] | None = None) -> tuple["ScorerPool", "ScorerPool"]:
        """(reward pool, reference pool) on the same `count` `RewardAndReferenceActor`s, each asking
        for `cpus` and `gpus`; each of the two models computes with half of the CPUs (at least one
        thread)."""
        threads = {"OMP_NUM_THREADS": str(max(1, int(cpus // 2)))}
        reward = cls(RewardAndReferenceActor, count, cpus, gpus, reward_args, reference_args, max_restarts=max_restarts,
                     env={**(env or {}), **threads}, role="reward", max_concurrency=2)
        return reward, reward.sharing("reference", max_restarts)

    def sharing(self, role: str, max_restarts: int) -> "ScorerPool":
        """A pool of `role` on this pool's actors (the same list object, so replacements are shared)."""
        view = copy.copy(self)
        view.restarts = Restarts(role, max_restarts)
        return view

    def submit(self, method: str, table: pa.Table, texts: list[str] | None = None) -> "_Pending":
        parts = [(i, method, (table.slice(lo, hi - lo),) + (() if texts is None else (texts[lo:hi],)))
                 for i, (lo, hi) in enumerate(balanced_bounds(table.num_rows, len(self.actors))) if hi > lo]
        return _Pending(self, [(i, m, a, self.actors[i], getattr(self.actors[i], m).remote(*a)) for i, m, a in parts])

    def replace(self, i: int, why: str, lost=None) -> None:
        """Replace actor `i`, which was `lost` when the failed call went out (None: the current
        one). If it has been replaced since (through a pool sharing these actors), nothing more."""
        if lost is not None and self.actors[i] is not lost:
            return
        self.actors[i] = self.restarts.replace(self.actors[i], self._start, f"{self.name} {i}", why,
                                               "; its rows are scored again")

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)


class _Pending:
    def __init__(self, pool: ScorerPool, parts: list) -> None:
        self.pool, self.parts = pool, parts  # [(actor index, method, (rows[, texts]), actor called, ref)]

    def result(self):
        try:
            out = [self._get(*part) for part in self.parts]
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, RewardFunctionError):  # the user's function, not the actor: its one line, no retry
                raise e.cause from None
            raise
        if isinstance(out[0], np.ndarray):
            return np.concatenate(out)
        return pa.chunked_array(out).combine_chunks()

    def _get(self, i: int, method: str, args: tuple, called, ref):
        """Actor i's share; when the actor is lost it is replaced (once, by whichever pool sharing
        it notices first) and the call is made again on the replacement."""
        pool, called = self.pool, [called]  # the actor the pending call went to

        def call_again():
            called[0] = pool.actors[i]
            return getattr(called[0], method).remote(*args)

        return get_replacing(ref, lambda why: pool.replace(i, why + " while scoring", called[0]), call_again)
