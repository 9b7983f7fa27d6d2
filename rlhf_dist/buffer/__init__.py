"""The Arrow trajectory buffer: one row per sampled response, carried between the PPO actors.

    rollout worker   batch = rollouts_to_batch(rollouts, prompt_id, policy_version, worker_id)
    scorers          batch = add_columns(batch, score=..., ref_logprobs=padded_or_list)
    driver           table = concat(batches); TrajectoryWriter(dir).write(k, table)
    learner rank r   t = to_padded(shard_table(table, r, world), pad_id)  -> (B, P + T) tensors
                     table = add_columns(table, values=per-token (B, T) tensor, ...)
    inspection       read_trajectories(dir) -> every iteration, with an `iteration` column

Imports pyarrow, numpy and torch only (no ray, vllm, deepspeed or transformers). The schema,
its column groups and the reasons for its types are in `rlhf_dist.buffer.schema`.
"""

from rlhf_dist.buffer.build import add_columns, concat, rollouts_to_batch
from rlhf_dist.buffer.schema import (
    EPISODE_COLUMNS,
    LEARNER_COLUMNS,
    PER_TOKEN_COLUMNS,
    ROLLOUT_COLUMNS,
    SCALAR_COLUMNS,
    SCHEMA,
    SCORER_COLUMNS,
    STORE_COLUMNS,
    TOKEN_COLUMNS,
    TrajectorySchemaError,
    response_lengths,
    schema_for,
    validate,
)
from rlhf_dist.buffer.shard import balance, balanced_bounds, shard_table
from rlhf_dist.buffer.store import TrajectoryWriter, read_trajectories, trajectory_files
from rlhf_dist.buffer.tensors import TrajectoryTensors, per_token_column, to_padded

__all__ = [
    "EPISODE_COLUMNS",
    "LEARNER_COLUMNS",
    "PER_TOKEN_COLUMNS",
    "ROLLOUT_COLUMNS",
    "SCALAR_COLUMNS",
    "SCHEMA",
    "SCORER_COLUMNS",
    "STORE_COLUMNS",
    "TOKEN_COLUMNS",
    "TrajectorySchemaError",
    "TrajectoryTensors",
    "TrajectoryWriter",
    "add_columns",
    "balance",
    "balanced_bounds",
    "concat",
    "per_token_column",
    "read_trajectories",
    "response_lengths",
    "rollouts_to_batch",
    "schema_for",
    "shard_table",
    "to_padded",
    "trajectory_files",
    "validate",
]
