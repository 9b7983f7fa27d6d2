"""The trajectory schema: one Arrow row per sampled response, and `validate`.

Columns by stage (each stage appends its columns to the same table):

    rollout  (RolloutWorker)   prompt_id, sample_index, policy_version, worker_id,
                               prompt_ids, response_ids, rollout_logprobs, finished_with_eos
    episode  (RolloutWorker,   policy_mask, env_rewards, turns, end_reason, env_error
              with env=)
    scorer   (Reward/Reference) score, ref_logprobs
    learner  (optional)         old_logprobs, values, advantages, returns, kl
    store    (TrajectoryWriter) iteration

Token columns are `list<int32>`, per-token values `list<float32>` (`policy_mask`: `list<bool>`)
with exactly one value per response token. A multi-turn episode (an environment, `env=`) is one
row: `response_ids` holds every turn after the prompt, the policy's sampled tokens and the
environment's observation tokens in order, and `policy_mask` says which are the policy's; every
loss, log-prob, KL, entropy, value and advantage counts those only (`TrajectoryTensors.loss_mask`),
the observations are context. On observation tokens `rollout_logprobs` is 0. Why `list` (int32 offsets) and not `large_list` (int64 offsets): the offsets
limit is 2^31 - 1 values per *array chunk*, and one chunk holds one worker's batch of one
iteration (millions of tokens at most), so int32 offsets never overflow and cost half the
memory; `list` is also what Parquet and pandas round-trips produce by default. A Table built
from many batches keeps one chunk per batch, so the limit never applies to the whole table.
Do not `combine_chunks()` a table of more than 2^31 tokens (nothing here does).

Every field carries metadata (`doc`, `stage`, `per_token`) that travels into Arrow IPC and
Parquet files, so a file read back with plain pyarrow describes itself.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SCHEMA_VERSION = "1"

TOKENS = pa.list_(pa.int32())
PER_TOKEN = pa.list_(pa.float32())


def _field(name: str, type_: pa.DataType, stage: str, doc: str) -> pa.Field:
    per_token = name not in ("prompt_ids", "response_ids") and pa.types.is_list(type_)
    metadata = {"doc": doc, "stage": stage, "per_token": "true" if per_token else "false"}
    # nullable=False documents intent; Arrow does not enforce it, `validate` does.
    return pa.field(name, type_, nullable=False, metadata=metadata)


FIELDS = [
    # --- rollout worker
    _field("prompt_id", pa.int64(), "rollout", "id of the prompt in the prompt set"),
    _field("sample_index", pa.int32(), "rollout", "which of the n samples of this prompt (0..n-1)"),
    _field("policy_version", pa.int64(), "rollout", "version k of the weights that sampled the response"),
    _field("worker_id", pa.int32(), "rollout", "rollout worker that sampled the response"),
    _field("prompt_ids", TOKENS, "rollout", "prompt token ids, unpadded, non-empty"),
    _field("response_ids", TOKENS, "rollout", "response token ids, unpadded, up to and including EOS"),
    _field(
        "rollout_logprobs", PER_TOKEN, "rollout",
        "engine's log pi_T of each sampled response token (processed, after temperature)",
    ),
    _field("finished_with_eos", pa.bool_(), "rollout", "True if the response ends with EOS (not cut at max length); "
           "of an episode: True if the environment ended it (done), not a limit or a failure"),
    # --- rollout worker, multi-turn episodes (env=)
    _field("policy_mask", pa.list_(pa.bool_()), "episode",
           "True on each response token the policy sampled, False on the environment's observation tokens"),
    _field("env_rewards", PER_TOKEN, "episode",
           "the environment's reward for each turn, on that turn's last policy token (0 elsewhere)"),
    _field("turns", pa.int32(), "episode", "policy turns of the episode"),
    _field("end_reason", pa.string(), "episode",
           "why the episode ended: done | max_turns | max_episode_tokens | max_new_tokens | env_error | env_timeout "
           "| env_bad_return | env_crash"),
    _field("env_error", pa.string(), "episode", "one line: the environment's failure (empty if none)"),
    # --- scorers
    _field("score", pa.float32(), "scorer", "reward model score r(x, y) of the whole response"),
    _field("ref_logprobs", PER_TOKEN, "scorer", "reference (SFT) model log-prob of each response token"),
    # --- learner (optional)
    _field("old_logprobs", PER_TOKEN, "learner", "policy log-prob of each response token before the PPO epochs"),
    _field("values", PER_TOKEN, "learner", "critic value V(s_t) at each response token"),
    _field("advantages", PER_TOKEN, "learner", "GAE advantage of each response token"),
    _field("returns", PER_TOKEN, "learner", "value target (advantage + value) of each response token"),
    _field("kl", pa.float32(), "learner", "KL(pi || ref) estimate summed over the response"),
    _field("is_weights", PER_TOKEN, "learner",
           "truncated importance weight pi_old / pi_behaviour of each token of a row sampled with older weights"),
    # --- store
    _field("iteration", pa.int64(), "store", "PPO iteration that produced the row (added by TrajectoryWriter)"),
]

SCHEMA = pa.schema(FIELDS, metadata={"rlhf_dist.trajectory_schema": SCHEMA_VERSION})
"""All known columns in canonical order; a table holds a subset (see `schema_for`)."""

ROLLOUT_COLUMNS = tuple(f.name for f in FIELDS if f.metadata[b"stage"] == b"rollout")
EPISODE_COLUMNS = tuple(f.name for f in FIELDS if f.metadata[b"stage"] == b"episode")
SCORER_COLUMNS = tuple(f.name for f in FIELDS if f.metadata[b"stage"] == b"scorer")
LEARNER_COLUMNS = tuple(f.name for f in FIELDS if f.metadata[b"stage"] == b"learner")
STORE_COLUMNS = ("iteration",)
TOKEN_COLUMNS = ("prompt_ids", "response_ids")
PER_TOKEN_COLUMNS = tuple(f.name for f in FIELDS if f.metadata[b"per_token"] == b"true")
SCALAR_COLUMNS = tuple(f.name for f in FIELDS if not pa.types.is_list(f.type) and not pa.types.is_string(f.type))
TEXT_COLUMNS = tuple(f.name for f in FIELDS if pa.types.is_string(f.type))


class TrajectorySchemaError(ValueError):
    """A table or batch does not follow the trajectory schema (one-line message)."""


def schema_for(names) -> pa.Schema:
    """The schema restricted to `names`, in canonical column order (unknown names are an error)."""
    known = set(SCHEMA.names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise TrajectorySchemaError(f"unknown trajectory column(s) {unknown}; known: {SCHEMA.names}")
    wanted = set(names)
    return pa.schema([f for f in FIELDS if f.name in wanted], metadata=SCHEMA.metadata)


def canonical_order(names) -> list[str]:
    """Known columns in schema order, then any other columns in their given order."""
    known = [n for n in SCHEMA.names if n in set(names)]
    return known + [n for n in names if n not in set(SCHEMA.names)]


def validate(data: pa.Table | pa.RecordBatch, required=ROLLOUT_COLUMNS) -> None:
    """Check `data` against the schema; raise TrajectorySchemaError naming the first problem.

    Checks: every `required` column is present; every known column present has its schema type
    and no nulls; prompts are non-empty; each per-token column has as many values in each row
    as that row's `response_ids`. Unknown extra columns are allowed. Vectorised (Arrow compute
    on the list lengths); cost O(rows) per list column, independent of the token count.
    """
    names = set(data.schema.names)
    for name in required:
        if name not in names:
            raise TrajectorySchemaError(f"missing column {name!r} (have {data.schema.names})")
    for field in data.schema:
        if field.name not in SCHEMA.names:
            continue
        expected = SCHEMA.field(field.name).type
        # (list type equality ignores the child field's name: "item" vs Parquet's "element")
        if not field.type.equals(expected):
            raise TrajectorySchemaError(f"column {field.name!r} has type {field.type}, expected {expected}")
        nulls = data.column(field.name).null_count
        if nulls:
            raise TrajectorySchemaError(f"column {field.name!r} has {nulls} null value(s)")
    if "prompt_ids" in names:
        empty = _first_true(pc.equal(pc.list_value_length(data.column("prompt_ids")), 0))
        if empty is not None:
            raise TrajectorySchemaError(f"{_row_label(data, empty)}: 'prompt_ids' is empty (a prompt needs at least BOS)")
    per_token = [n for n in PER_TOKEN_COLUMNS if n in names]
    if per_token and "response_ids" not in names:
        raise TrajectorySchemaError(f"per-token column(s) {per_token} need 'response_ids' to check lengths")
    if per_token:
        expected_len = response_lengths(data)
        for name in per_token:
            got = pc.list_value_length(data.column(name)).to_numpy(zero_copy_only=False)
            bad = _first_true(got != expected_len)
            if bad is not None:
                raise TrajectorySchemaError(
                    f"{_row_label(data, bad)}: {name!r} has {got[bad]} values but 'response_ids' has {expected_len[bad]}"
                )


def response_lengths(data: pa.Table | pa.RecordBatch) -> np.ndarray:
    """(B,) int64 numpy: the number of response tokens of each row."""
    return pc.list_value_length(data.column("response_ids")).to_numpy(zero_copy_only=False).astype(np.int64)


def _first_true(mask) -> int | None:
    """Index of the first True in a numpy or Arrow boolean array, or None."""
    if not isinstance(mask, np.ndarray):
        mask = mask.to_numpy(zero_copy_only=False)
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def _row_label(data, row: int) -> str:
    """'row 5 (prompt_id=12, sample_index=0)': enough to find the trajectory in a log or file."""
    ids = [f"{n}={data.column(n)[row].as_py()}" for n in ("prompt_id", "sample_index") if n in data.schema.names]
    return f"row {row}" + (f" ({', '.join(ids)})" if ids else "")
