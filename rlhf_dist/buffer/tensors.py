"""Trajectory table -> padded torch tensors for the learner, and padded learner outputs -> Arrow.

Both directions are vectorised: a row's tokens are contiguous in the flat values buffer of a list
column, so a boolean mask of the padded layout (True where a token goes), filled in row-major
order, puts every token in its place in one numpy assignment. No per-row Python loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from rlhf_dist.buffer.schema import (
    PER_TOKEN_COLUMNS,
    SCALAR_COLUMNS,
    TOKEN_COLUMNS,
    TrajectorySchemaError,
    validate,
)


@dataclass
class TrajectoryTensors:
    """The `PaddedBatch` layout (same attribute names) plus the table's other columns as tensors.

    input_ids, attention_mask, position_ids: (B, P + T) long; prompts left-padded to P, responses
    right-padded to T. response_mask: (B, T) bool, True on response tokens. prompt_len: P.
    policy_mask: (B, T) bool, True on the tokens the policy sampled (rows of multi-turn episodes
    also hold the environment's observation tokens), or None when every response token is the
    policy's. columns: per-token columns (B, T) float32, 0 at pads; scalar columns (B,) in their
    own dtype (float32, int64, int32 or bool).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    response_mask: torch.Tensor
    prompt_len: int
    columns: dict[str, torch.Tensor] = field(default_factory=dict)
    policy_mask: torch.Tensor | None = None

    @property
    def loss_mask(self) -> torch.Tensor:
        """(B, T) bool: the tokens every loss, log-prob, KL, entropy, value and advantage counts,
        the policy's own; observation tokens of an episode are context only."""
        return self.response_mask if self.policy_mask is None else self.response_mask & self.policy_mask

    @property
    def response_ids(self) -> torch.Tensor:
        """(B, T) long."""
        return self.input_ids[:, self.prompt_len :]

    @property
    def response_lengths(self) -> torch.Tensor:
        """(B,) long: response tokens per row."""
        return self.response_mask.sum(1)

    def to(self, device) -> "TrajectoryTensors":
        return TrajectoryTensors(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.response_mask.to(device),
            self.prompt_len,
            {k: v.to(device) for k, v in self.columns.items()},
            None if self.policy_mask is None else self.policy_mask.to(device),
        )

    def padded_batch(self):
        """The token tensors as a `rlhf_dist.models.batching.PaddedBatch` (imported here: the
        models package pulls in transformers, which the buffer does not need otherwise)."""
        from rlhf_dist.models.batching import PaddedBatch

        return PaddedBatch(self.input_ids, self.attention_mask, self.position_ids, self.response_mask, self.prompt_len)


def to_padded(
    data: pa.Table | pa.RecordBatch,
    pad_id: int,
    columns: Sequence[str] | None = None,
    prompt_len: int | None = None,
    response_len: int | None = None,
) -> TrajectoryTensors:
    """B trajectory rows -> TrajectoryTensors (the layout of `pad_prompt_response`).

    columns: which non-token columns to convert; default: every known per-token and scalar
        column present. Per-token columns come out (B, T) float32 padded with 0.
    prompt_len / response_len: pad to this P / T instead of the longest prompt / response
        (fixed shapes); must be at least the longest.
    Works on sliced tables and on Tables of several chunks (values are read with
    `list_flatten`, which honours slice offsets; `.values` would not).
    """
    validate(data, required=TOKEN_COLUMNS)
    p_lengths, p_values = _lengths_and_values(data.column("prompt_ids"))
    r_lengths, r_values = _lengths_and_values(data.column("response_ids"))
    P = _padded_size(p_lengths, prompt_len, "prompt_len")
    T = _padded_size(r_lengths, response_len, "response_len")
    B = len(p_lengths)

    prompt_mask = np.arange(P) >= (P - p_lengths)[:, None]  # (B, P), left padding
    response_mask = np.arange(T) < r_lengths[:, None]  # (B, T), right padding
    input_ids = np.full((B, P + T), pad_id, dtype=np.int64)
    # Boolean assignment fills True cells in row-major order: row 0's tokens, then row 1's, ...,
    # exactly the order of the flat values. The slices are views, so this writes into input_ids.
    input_ids[:, :P][prompt_mask] = p_values
    input_ids[:, P:][response_mask] = r_values
    attention_mask = np.concatenate([prompt_mask, response_mask], axis=1).astype(np.int64)
    # cumsum(mask) - 1 clamped at 0: the formula of rlhf_dist.models.batching.position_ids_from_mask
    # (not imported: the models package pulls in transformers), in numpy because torch's int64
    # cumsum is slower on CPU.
    position_ids = np.cumsum(attention_mask, axis=1)
    position_ids -= 1
    np.maximum(position_ids, 0, out=position_ids)
    policy_mask = None
    if "policy_mask" in data.schema.names:
        policy_mask = np.zeros((B, T), dtype=bool)
        policy_mask[response_mask] = _lengths_and_values(data.column("policy_mask"))[1]
        policy_mask = torch.from_numpy(policy_mask)

    return TrajectoryTensors(
        input_ids=torch.from_numpy(input_ids),
        attention_mask=torch.from_numpy(attention_mask),
        position_ids=torch.from_numpy(position_ids),
        response_mask=torch.from_numpy(response_mask),
        prompt_len=P,
        columns=_other_columns(data, columns, response_mask),
        policy_mask=policy_mask,
    )


def _other_columns(data, names, response_mask: np.ndarray) -> dict[str, torch.Tensor]:
    """Per-token columns -> (B, T) float32 (0 at pads); scalar columns -> (B,)."""
    if names is None:  # (policy_mask is TrajectoryTensors.policy_mask)
        names = [n for n in data.schema.names if (n in PER_TOKEN_COLUMNS and n != "policy_mask") or n in SCALAR_COLUMNS]
    out = {}
    for name in names:
        if name not in data.schema.names:
            raise TrajectorySchemaError(f"to_padded: no column {name!r} (have {data.schema.names})")
        if name in PER_TOKEN_COLUMNS:
            padded = np.zeros(response_mask.shape, dtype=np.float32)
            padded[response_mask] = _lengths_and_values(data.column(name))[1]  # lengths checked by validate
            out[name] = torch.from_numpy(padded)
        elif name in SCALAR_COLUMNS:
            # copy: Arrow buffers are read-only and torch wants writable memory
            out[name] = torch.from_numpy(data.column(name).to_numpy(zero_copy_only=False).copy())
        else:
            raise TrajectorySchemaError(f"to_padded: {name!r} is not a per-token or scalar column of the schema")
    return out


def _lengths_and_values(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A list column -> ((B,) int64 lengths, (N,) flat values), N = lengths.sum().

    `list_flatten` returns only the values of the rows in view, so a slice (rows 3..7) or a
    chunk that is itself a slice of a bigger buffer comes out right; chunks are concatenated.
    """
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    return lengths, values


def _padded_size(lengths: np.ndarray, requested: int | None, name: str) -> int:
    longest = int(lengths.max()) if lengths.size else 0
    if requested is None:
        return longest
    if requested < longest:
        raise ValueError(f"to_padded: {name}={requested} is shorter than the longest row ({longest})")
    return requested


def per_token_column(padded, lengths) -> pa.ListArray:
    """(B, T) padded per-token values + (B,) lengths -> list<float32> array of B rows.

    Row i keeps padded[i, :lengths[i]] (right padding, as in `to_padded`). Accepts torch tensors
    (any float dtype, any device) or numpy arrays. The inverse of the per-token part of to_padded.
    """
    values = _float32_numpy(padded)
    lengths = np.asarray(lengths.cpu() if isinstance(lengths, torch.Tensor) else lengths, dtype=np.int64)
    if values.ndim != 2 or lengths.shape != (values.shape[0],):
        raise ValueError(f"per_token_column: need (B, T) values and (B,) lengths, got {values.shape} and {lengths.shape}")
    T = values.shape[1]
    if lengths.size and (lengths.min() < 0 or lengths.max() > T):
        raise ValueError(f"per_token_column: lengths must lie in [0, {T}], got [{lengths.min()}, {lengths.max()}]")
    mask = np.arange(T) < lengths[:, None]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    # values[mask] reads True cells in row-major order: the flat list values, row after row.
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[mask], type=pa.float32()))


def _float32_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)

