"""The frozen models of PPO as Ray actors: reward actor(s) (the RM) and reference actor(s) (the
SFT policy). Thin shells around rlhf_dist.engines.scoring; a `ScorerPool` spreads the rows of a
trajectory table over its actors and puts the results back in row order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray

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
    is the method's output for all rows in order (so reward and reference run in parallel)."""

    def __init__(self, actor_cls, num_actors: int, num_cpus: float, num_gpus: float, *args) -> None:
        remote = ray.remote(actor_cls).options(num_cpus=num_cpus, num_gpus=num_gpus,
                                               runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}})
        self.actors = [remote.remote(*args) for _ in range(num_actors)]

    def submit(self, method: str, table: pa.Table) -> "_Pending":
        refs = [getattr(a, method).remote(table.slice(lo, hi - lo))
                for a, (lo, hi) in zip(self.actors, balanced_bounds(table.num_rows, len(self.actors))) if hi > lo]
        return _Pending(refs)

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)


class _Pending:
    def __init__(self, refs: list) -> None:
        self.refs = refs

    def result(self):
        parts = ray.get(self.refs)
        if isinstance(parts[0], np.ndarray):
            return np.concatenate(parts)
        return pa.chunked_array(parts).combine_chunks()
