"""The trajectory schema and `validate`: types, column groups, field docs, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from rlhf_dist.buffer import (
    EPISODE_COLUMNS,
    LEARNER_COLUMNS,
    PER_TOKEN_COLUMNS,
    ROLLOUT_COLUMNS,
    SCHEMA,
    SCORER_COLUMNS,
    TrajectorySchemaError,
    validate,
)

I32, I64, F32 = pa.int32(), pa.int64(), pa.float32()
EXPECTED_TYPES = {  # written out from the PPO issue, not read from the module
    "prompt_id": I64,
    "sample_index": I32,
    "policy_version": I64,
    "worker_id": I32,
    "prompt_ids": pa.list_(I32),
    "response_ids": pa.list_(I32),
    "rollout_logprobs": pa.list_(F32),
    "finished_with_eos": pa.bool_(),
    "policy_mask": pa.list_(pa.bool_()),  # multi-turn episodes (the multi-turn issue)
    "env_rewards": pa.list_(F32),
    "turns": I32,
    "end_reason": pa.string(),
    "env_error": pa.string(),
    "score": F32,
    "ref_logprobs": pa.list_(F32),
    "old_logprobs": pa.list_(F32),
    "values": pa.list_(F32),
    "advantages": pa.list_(F32),
    "returns": pa.list_(F32),
    "kl": F32,
    "is_weights": pa.list_(F32),
    "iteration": I64,
}


def small_batch(**overrides) -> pa.RecordBatch:
    """Three hand-written rows with the rollout columns; `overrides` replaces columns (Arrow arrays)."""
    cols = {
        "prompt_id": pa.array([5, 5, 9], I64),
        "sample_index": pa.array([0, 1, 0], I32),
        "policy_version": pa.array([2, 2, 2], I64),
        "worker_id": pa.array([1, 1, 1], I32),
        "prompt_ids": pa.array([[1, 7], [1, 7], [1]], pa.list_(I32)),
        "response_ids": pa.array([[4, 2], [3], [8, 8, 2]], pa.list_(I32)),
        "rollout_logprobs": pa.array([[-1.0, -0.5], [-2.0], [-0.1, -0.2, -0.3]], pa.list_(F32)),
        "finished_with_eos": pa.array([True, False, True]),
    }
    cols.update(overrides)
    return pa.RecordBatch.from_pydict(cols)


def test_schema_types_and_groups():
    assert {f.name: f.type for f in SCHEMA} == EXPECTED_TYPES
    assert ROLLOUT_COLUMNS == tuple(list(EXPECTED_TYPES)[:8])
    assert SCORER_COLUMNS == ("score", "ref_logprobs")
    assert set(LEARNER_COLUMNS) == {"old_logprobs", "values", "advantages", "returns", "kl", "is_weights"}
    assert EPISODE_COLUMNS == ("policy_mask", "env_rewards", "turns", "end_reason", "env_error")
    assert set(PER_TOKEN_COLUMNS) == {n for n, t in EXPECTED_TYPES.items() if t == pa.list_(F32)} | {"policy_mask"}
    for f in SCHEMA:
        assert f.metadata[b"doc"], f.name
        assert f.metadata[b"stage"] in {b"rollout", b"episode", b"scorer", b"learner", b"store"}


def test_valid_batch_passes_and_table_of_chunks_passes():
    validate(small_batch())
    validate(pa.Table.from_batches([small_batch(), small_batch()]))
    validate(pa.Table.from_batches([small_batch()]).slice(1, 2))


def one_line_error(data, required=ROLLOUT_COLUMNS) -> str:
    with pytest.raises(TrajectorySchemaError) as info:
        validate(data, required=required)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_column():
    message = one_line_error(small_batch().drop_columns(["worker_id"]))
    assert "missing column 'worker_id'" in message
    assert "'score'" in one_line_error(small_batch(), required=ROLLOUT_COLUMNS + SCORER_COLUMNS)


@pytest.mark.parametrize(
    "name, bad",
    [
        ("prompt_id", pa.array([5, 5, 9], I32)),
        ("response_ids", pa.array([[4, 2], [3], [8, 8, 2]], pa.large_list(I32))),
        ("response_ids", pa.array([[4, 2], [3], [8, 8, 2]], pa.list_(I64))),
        ("rollout_logprobs", pa.array([[-1.0, -0.5], [-2.0], [-0.1, -0.2, -0.3]], pa.list_(pa.float64()))),
    ],
)
def test_mistyped_column(name, bad):
    message = one_line_error(small_batch(**{name: bad}))
    assert f"column {name!r} has type {bad.type}" in message


def test_per_token_length_mismatch_names_the_row():
    bad = pa.array([[-1.0, -0.5], [-2.0], [-0.1, -0.2]], pa.list_(F32))  # row 2: 2 values, 3 tokens
    message = one_line_error(small_batch(rollout_logprobs=bad))
    assert message == "row 2 (prompt_id=9, sample_index=0): 'rollout_logprobs' has 2 values but 'response_ids' has 3"
    # in a later chunk of a table: the row index counts from the start of the table
    table = pa.Table.from_batches([small_batch(), small_batch(rollout_logprobs=bad)])
    assert one_line_error(table).startswith("row 5 (")


def test_nulls_and_empty_prompts_are_refused():
    assert "'score' has 1 null" in one_line_error(
        small_batch().append_column("score", pa.array([1.0, None, 2.0], F32)), required=()
    )
    assert "row 1 (prompt_id=5, sample_index=1): 'prompt_ids' is empty" in one_line_error(
        small_batch(prompt_ids=pa.array([[1], [], [1]], pa.list_(I32)))
    )


def test_extra_unknown_columns_are_allowed():
    validate(small_batch().append_column("note", pa.array(["a", "b", "c"])))


def test_buffer_import_pulls_in_no_higher_layer():
    """The buffer sits below engines and actors: importing it loads no ray/vllm/deepspeed/transformers."""
    code = (
        "import sys, json, rlhf_dist.buffer\n"
        "print(json.dumps(sorted(m for m in ['ray', 'vllm', 'deepspeed', 'transformers', 'pyarrow', 'torch']"
        " if m in sys.modules)))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == ["pyarrow", "torch"]


def test_float32_values_survive_exactly():
    x = np.float32(-0.1)
    batch = small_batch(rollout_logprobs=pa.array([[x, x], [x], [x, x, x]], pa.list_(F32)))
    assert batch.column("rollout_logprobs")[0].as_py()[0] == float(x)
