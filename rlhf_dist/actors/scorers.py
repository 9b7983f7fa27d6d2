"""The frozen models of PPO as Ray actors: reward actor(s) (the RM) and reference actor(s) (the
SFT policy). Thin shells around rlhf_dist.engines.scoring; a `ScorerPool` spreads the rows of a
trajectory table over its actors and puts the results back in row order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray

from rlhf_dist.buffer import balanced_bounds
from rlhf_dist.runtime import RunStopped


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
        self.max_restarts = max_restarts
        key = "reward" if "Reward" in self.name else "reference"
        self.fault_keys = (f"faults/{key}_restarts", f"faults/{key}_restart_s")
        self.faults = {k: 0 if k.endswith("restarts") else 0.0 for k in self.fault_keys}

    def submit(self, method: str, table: pa.Table) -> "_Pending":
        parts = [(i, method, table.slice(lo, hi - lo))
                 for i, (lo, hi) in enumerate(balanced_bounds(table.num_rows, len(self.actors))) if hi > lo]
        return _Pending(self, [(i, m, t, getattr(self.actors[i], m).remote(t)) for i, m, t in parts])

    def replace(self, i: int, why: str) -> None:
        import time

        if self.faults[self.fault_keys[0]] >= self.max_restarts:
            raise RunStopped(f"{self.name} {i} {why}; {self.max_restarts} restarts used (max_restarts): stopping")
        start = time.perf_counter()
        try:
            ray.kill(self.actors[i], no_restart=True)
        except Exception:  # already gone
            pass
        self.actors[i] = self._start()
        seconds = time.perf_counter() - start
        self.faults[self.fault_keys[0]] += 1
        self.faults[self.fault_keys[1]] += seconds
        print(f"   {self.name} {i} {why}: replaced in {seconds:.1f} s; its rows are scored again", flush=True)

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)


class _Pending:
    def __init__(self, pool: ScorerPool, parts: list) -> None:
        self.pool, self.parts = pool, parts  # [(actor index, method, rows, ref)]

    def result(self):
        out = []
        for i, method, rows, ref in self.parts:
            while True:
                try:
                    out.append(ray.get(ref))
                    break
                except ray.exceptions.RayActorError as e:
                    self.pool.replace(i, f"lost while scoring ({type(e).__name__})")
                    ref = getattr(self.pool.actors[i], method).remote(rows)
        if isinstance(out[0], np.ndarray):
            return np.concatenate(out)
        return pa.chunked_array(out).combine_chunks()
