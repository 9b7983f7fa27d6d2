"""Building trajectory tables: rollouts -> RecordBatch, scorer columns appended, batches concatenated.

Every function here returns data that passes `schema.validate`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch

from rlhf_dist.buffer.schema import (
    EPISODE_COLUMNS,
    PER_TOKEN,
    PER_TOKEN_COLUMNS,
    ROLLOUT_COLUMNS,
    SCHEMA,
    TOKENS,
    TrajectorySchemaError,
    canonical_order,
    response_lengths,
    schema_for,
    validate,
)
from rlhf_dist.buffer.tensors import per_token_column

Data = pa.Table | pa.RecordBatch


def rollouts_to_batch(
    rollouts: Sequence,
    prompt_id: Sequence[int],
    policy_version: int,
    worker_id: int,
    sample_index: Sequence[int] | None = None,
) -> pa.RecordBatch:
    """B rollouts -> one RecordBatch with the rollout columns (B rows).

    rollouts: objects with `prompt_ids`, `response_ids`, `logprobs`, `finished_with_eos`
        (`rlhf_dist.engines.vllm_rollout.Rollout`; duck-typed so the buffer never imports vLLM);
        multi-turn episodes (`rlhf_dist.engines.episodes.Episode`) also have `policy_mask`,
        `env_rewards`, `turns`, `end_reason` and `env_error`, which become the episode columns.
    prompt_id: (B,) integer id of each rollout's prompt (an id, not token ids).
    sample_index: (B,) which sample of its prompt each rollout is. Default: the occurrence count
        of the prompt id within this call (0, 1, ... in order), right when all n samples of a
        prompt come from one call; pass it explicitly when they are spread over calls/workers.
    """
    rollouts = list(rollouts)
    B = len(rollouts)
    if len(prompt_id) != B:
        raise ValueError(f"rollouts_to_batch: {B} rollouts but {len(prompt_id)} prompt ids")
    if sample_index is None:
        sample_index = _occurrence_index(prompt_id)
    if len(sample_index) != B:
        raise ValueError(f"rollouts_to_batch: {B} rollouts but {len(sample_index)} sample indices")
    # pa.array converts nested Python lists in C++; one pass per column over the rollouts.
    arrays = [
        pa.array(np.asarray(prompt_id, dtype=np.int64)),
        pa.array(np.asarray(sample_index, dtype=np.int32)),
        pa.array(np.full(B, policy_version, dtype=np.int64)),
        pa.array(np.full(B, worker_id, dtype=np.int32)),
        pa.array([r.prompt_ids for r in rollouts], type=TOKENS),
        pa.array([r.response_ids for r in rollouts], type=TOKENS),
        pa.array([r.logprobs for r in rollouts], type=PER_TOKEN),
        pa.array([bool(r.finished_with_eos) for r in rollouts], type=pa.bool_()),
    ]
    names = ROLLOUT_COLUMNS
    if rollouts and getattr(rollouts[0], "policy_mask", None) is not None:
        names = ROLLOUT_COLUMNS + EPISODE_COLUMNS
        arrays += [
            pa.array([r.policy_mask for r in rollouts], type=pa.list_(pa.bool_())),
            pa.array([r.env_rewards for r in rollouts], type=PER_TOKEN),
            pa.array(np.asarray([r.turns for r in rollouts], dtype=np.int32)),
            pa.array([r.end_reason for r in rollouts], type=pa.string()),
            pa.array([r.env_error for r in rollouts], type=pa.string()),
        ]
    batch = pa.RecordBatch.from_arrays(arrays, schema=schema_for(names))
    validate(batch, required=names)
    return batch


def _occurrence_index(ids: Sequence[int]) -> list[int]:
    """[7, 3, 7, 7, 3] -> [0, 0, 1, 2, 1]: how many times each id was seen before."""
    seen: dict[int, int] = {}
    out = []
    for i in ids:
        i = int(i)
        out.append(seen.get(i, 0))
        seen[i] = out[-1] + 1
    return out


def add_columns(data: Data, **columns) -> Data:
    """Append known schema columns to a Table or RecordBatch; returns the same type, B rows.

    Scalar columns (`score`, `kl`, ...): a (B,) tensor, ndarray, list or Arrow array.
    Per-token columns (`ref_logprobs`, `values`, ...), one value per response token:
      - a padded (B, T') tensor/ndarray with T' >= the longest response (right-padded, as
        `to_padded` gives); the row lengths are taken from `response_ids`, pads are dropped;
      - a list of B 1-D arrays/lists (row i with len(response_ids[i]) values);
      - an Arrow list array or chunked array.
    Existing columns are not replaced (drop them first); unknown names are refused. The result
    is validated, so a row with the wrong number of values is reported by row and prompt id.
    Columns come out in the schema's canonical order.
    """
    existing = [name for name in columns if name in data.schema.names]
    if existing:
        raise TrajectorySchemaError(f"add_columns: column(s) {existing} already present; drop them first")
    schema_for(list(columns))  # refuses unknown names with the list of known ones
    B = data.num_rows
    lengths = None
    for name, value in columns.items():
        field = SCHEMA.field(name)
        if name in PER_TOKEN_COLUMNS:
            if lengths is None:
                lengths = response_lengths(data)
            array = _per_token_array(value, lengths)
        else:
            array = _scalar_array(value, field.type)
        if len(array) != B:
            raise TrajectorySchemaError(f"add_columns: column {name!r} has {len(array)} rows, the batch has {B}")
        if isinstance(data, pa.RecordBatch) and isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        data = data.append_column(field, array)
    data = data.select(canonical_order(data.schema.names))
    validate(data, required=())
    return data


def _per_token_array(value, lengths: np.ndarray) -> pa.Array | pa.ChunkedArray:
    """A per-token column as list<float32>, from any of the forms `add_columns` accepts."""
    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        return value.cast(PER_TOKEN)
    if _is_2d(value):
        if value.shape[0] != len(lengths):
            raise TrajectorySchemaError(f"add_columns: padded column has {value.shape[0]} rows, the batch has {len(lengths)}")
        longest = int(lengths.max()) if lengths.size else 0
        if value.shape[1] < longest:
            raise TrajectorySchemaError(
                f"add_columns: padded column is {value.shape[1]} wide, the longest response has {longest} tokens"
            )
        return per_token_column(value, lengths)
    # A list of per-row arrays: converting each row is unavoidable, the input is per row.
    rows = [_as_float32(v).reshape(-1) for v in value]
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum([r.size for r in rows], out=offsets[1:])
    flat = np.concatenate(rows) if rows else np.zeros(0, np.float32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.float32()))


def _scalar_array(value, type_: pa.DataType) -> pa.Array | pa.ChunkedArray:
    """A (B,) scalar column cast to its schema type."""
    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        return value.cast(type_)
    array = _to_numpy(value)
    if array.ndim != 1:
        raise TrajectorySchemaError(f"add_columns: a scalar column must be 1-D (B,), got shape {array.shape}")
    return pa.array(array.astype(type_.to_pandas_dtype()), type=type_)


def _is_2d(value) -> bool:
    return getattr(value, "ndim", None) == 2


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype.is_floating_point:
            value = value.float()  # bf16 has no numpy dtype
        return value.numpy()
    return np.asarray(value)


def _as_float32(value) -> np.ndarray:
    return _to_numpy(value).astype(np.float32, copy=False)


def concat(parts: Sequence[Data]) -> pa.Table:
    """RecordBatches/Tables with equal schemas -> one Table, without copying (one chunk per batch).

    Schemas must match (names, order, types); metadata is not compared.
    """
    tables = [p if isinstance(p, pa.Table) else pa.Table.from_batches([p]) for p in parts]
    if not tables:
        raise ValueError("concat: no batches")
    first = tables[0].schema
    for i, t in enumerate(tables[1:], start=1):
        if not t.schema.equals(first):
            raise TrajectorySchemaError(
                f"concat: batch {i} has columns {_describe(t.schema)}, batch 0 has {_describe(first)}"
            )
    return pa.concat_tables(tables)


def _describe(schema: pa.Schema) -> str:
    return "[" + ", ".join(f"{f.name}: {f.type}" for f in schema) + "]"
