"""The frozen models of PPO as Ray actors: reward actor(s) (the RM) and reference actor(s) (the
SFT policy). Thin shells around rlhf_dist.engines.scoring; a `ScorerPool` spreads the rows of a
trajectory table over its actors and puts the results back in row order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray

from rlhf_dist.actors.restarts import Restarts, get_replacing
from rlhf_dist.buffer import balanced_bounds


class RewardActor:
    def __init__(self, path: str, pad_id: int, micro_batch_size: int, dtype: str) -> None:
        from rlhf_dist.engines.scoring import RewardEngine

        self.engine = RewardEngine(path, pad_id, micro_batch_size, dtype)

    def score(self, table: pa.Table) -> np.ndarray:
        return self.engine.score(table)


class ReferenceActor:
    def __init__(self, path: str, pad_id: int, temperature: float, micro_batch_size: int, dtype: str) -> None:
        from rlhf_dist.engines.scoring import ReferenceEngine

        self.engine = ReferenceEngine(path, pad_id, temperature, micro_batch_size, dtype)

    def logprobs(self, table: pa.Table) -> pa.ListArray:
        return self.engine.logprobs(table)


class ScorerPool:
    """`num_actors` copies of one scorer; `submit(method, table)` returns a handle whose `result()`
    is the method's output for all rows in order (so reward and reference run in parallel).

    An actor that dies is replaced (at most `max_restarts` times in a run) and its rows are scored
    again: a row never gets a made-up score."""

    def __init__(self, actor_cls, num_actors: int, num_cpus: float, num_gpus: float, *args, max_restarts: int = 3) -> None:
        remote = ray.remote(actor_cls).options(num_cpus=num_cpus, num_gpus=num_gpus,
                                               runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}})
        self._start = lambda: remote.remote(*args)
        self.name = actor_cls.__name__
        self.actors = [self._start() for _ in range(num_actors)]
        self.restarts = Restarts("reward" if "Reward" in self.name else "reference", max_restarts)

    def submit(self, method: str, table: pa.Table) -> "_Pending":
        parts = [(i, method, table.slice(lo, hi - lo))
                 for i, (lo, hi) in enumerate(balanced_bounds(table.num_rows, len(self.actors))) if hi > lo]
        return _Pending(self, [(i, m, t, getattr(self.actors[i], m).remote(t)) for i, m, t in parts])

    def replace(self, i: int, why: str) -> None:
        self.actors[i] = self.restarts.replace(self.actors[i], self._start, f"{self.name} {i}", why,
                                               "; its rows are scored again")

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)


class _Pending:
    def __init__(self, pool: ScorerPool, parts: list) -> None:
        self.pool, self.parts = pool, parts  # [(actor index, method, rows, ref)]

    def result(self):
        pool = self.pool
        out = [get_replacing(ref, lambda why, i=i: pool.replace(i, why + " while scoring"),
                             lambda i=i, method=method, rows=rows: getattr(pool.actors[i], method).remote(rows))
               for i, method, rows, ref in self.parts]
        if isinstance(out[0], np.ndarray):
            return np.concatenate(out)
        return pa.chunked_array(out).combine_chunks()
