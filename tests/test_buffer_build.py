"""rollouts_to_batch, add_columns and concat, against per-row Python references."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest
import torch

from rlhf_dist.buffer import (
    ROLLOUT_COLUMNS,
    SCHEMA,
    TrajectorySchemaError,
    add_columns,
    concat,
    rollouts_to_batch,
)
from rlhf_dist.engines.vllm_rollout import Rollout


def random_rollouts(seed: int, n: int, max_prompt: int = 12, max_response: int = 16, min_response: int = 1):
    """n Rollouts with random lengths (prompts >= 1 token; responses >= min_response tokens).
    Log-probs are float32 values so that they compare exactly after the float32 column."""
    rng = random.Random(seed)
    rollouts = []
    for _ in range(n):
        p = [rng.randrange(3, 500) for _ in range(rng.randint(1, max_prompt))]
        r = [rng.randrange(3, 500) for _ in range(rng.randint(min_response, max_response))]
        lp = [float(np.float32(-rng.random() * 5)) for _ in r]
        rollouts.append(Rollout(p, r, lp, rng.random() < 0.5))
    return rollouts


def random_table(seed: int, n: int, chunks: int = 1, **kwargs) -> pa.Table:
    """A Table of n rows in `chunks` RecordBatches (prompt ids 100.., 2 samples per prompt)."""
    rollouts = random_rollouts(seed, n, **kwargs)
    prompt_id = [100 + i // 2 for i in range(n)]
    bounds = np.linspace(0, n, chunks + 1).astype(int)
    batches = [
        rollouts_to_batch(rollouts[a:b], prompt_id[a:b], policy_version=seed, worker_id=k, sample_index=[i % 2 for i in range(a, b)])
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))
    ]
    return pa.Table.from_batches(batches)


def test_rollouts_to_batch_matches_rollouts_row_by_row():
    rollouts = random_rollouts(0, 20)
    prompt_id = [7 * i for i in range(20)]
    batch = rollouts_to_batch(rollouts, prompt_id, policy_version=3, worker_id=2, sample_index=list(range(20)))
    assert isinstance(batch, pa.RecordBatch)
    assert batch.schema.names == list(ROLLOUT_COLUMNS)
    rows = batch.to_pylist()
    assert len(rows) == 20
    for i, (row, r) in enumerate(zip(rows, rollouts)):
        assert row == {
            "prompt_id": 7 * i,
            "sample_index": i,
            "policy_version": 3,
            "worker_id": 2,
            "prompt_ids": r.prompt_ids,
            "response_ids": r.response_ids,
            "rollout_logprobs": r.logprobs,
            "finished_with_eos": r.finished_with_eos,
        }


def test_default_sample_index_counts_samples_of_each_prompt():
    batch = rollouts_to_batch(random_rollouts(1, 6), [7, 3, 7, 7, 3, 9], policy_version=0, worker_id=0)
    assert batch.column("sample_index").to_pylist() == [0, 0, 1, 2, 1, 0]


def test_duck_typed_rollouts_and_empty_batch():
    class R:  # anything with the four attributes
        prompt_ids, response_ids, logprobs, finished_with_eos = [1], [2, 3], [-1.0, -2.0], True

    assert rollouts_to_batch([R()], [0], 0, 0).column("response_ids").to_pylist() == [[2, 3]]
    empty = rollouts_to_batch([], [], 0, 0)
    assert empty.num_rows == 0 and empty.schema.names == list(ROLLOUT_COLUMNS)


def test_rollouts_to_batch_errors():
    rollouts = random_rollouts(2, 3)
    with pytest.raises(ValueError, match="3 rollouts but 2 prompt ids"):
        rollouts_to_batch(rollouts, [1, 2], 0, 0)
    with pytest.raises(ValueError, match="3 rollouts but 1 sample indices"):
        rollouts_to_batch(rollouts, [1, 2, 3], 0, 0, sample_index=[0])
    rollouts[1].logprobs = rollouts[1].logprobs + [-1.0]
    with pytest.raises(TrajectorySchemaError, match=r"row 1 \(prompt_id=2, sample_index=0\): 'rollout_logprobs'"):
        rollouts_to_batch(rollouts, [1, 2, 3], 0, 0)


# ----------------------------------------------------------------------------- add_columns


def reference_rows(lengths, seed=0):
    """Per-row float32 values, one per response token, built in a Python loop."""
    rng = random.Random(seed)
    return [[float(np.float32(rng.gauss(0, 1))) for _ in range(n)] for n in lengths]


def padded_from_rows(rows, T):
    """(B, T) tensor with row i = rows[i] then a junk pad value (which add_columns must drop)."""
    out = torch.full((len(rows), T), 99.0)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


@pytest.mark.parametrize("form", ["list_of_lists", "list_of_tensors", "padded_tensor", "padded_numpy_wider", "arrow"])
def test_add_per_token_column_from_each_form(form):
    table = random_table(3, 17, chunks=3)
    lengths = [len(r) for r in table.column("response_ids").to_pylist()]
    rows = reference_rows(lengths)
    value = {
        "list_of_lists": rows,
        "list_of_tensors": [torch.tensor(r, dtype=torch.float64) for r in rows],
        "padded_tensor": padded_from_rows(rows, max(lengths)),
        "padded_numpy_wider": padded_from_rows(rows, max(lengths) + 5).numpy(),
        "arrow": pa.array(rows, pa.list_(pa.float64())),
    }[form]
    out = add_columns(table, ref_logprobs=value)
    assert isinstance(out, pa.Table)
    assert out.column("ref_logprobs").to_pylist() == rows
    assert out.schema.field("ref_logprobs").type == pa.list_(pa.float32())
    assert out.select(table.schema.names).equals(table)  # nothing else changed


def test_add_scalar_columns_keeps_type_and_canonical_order():
    batch = rollouts_to_batch(random_rollouts(4, 5), [1, 2, 3, 4, 5], 0, 0)
    out = add_columns(batch, kl=np.arange(5, dtype=np.float64), score=torch.tensor([0.5, 1, 2, 3, 4], dtype=torch.bfloat16))
    assert isinstance(out, pa.RecordBatch)
    assert out.column("score").to_pylist() == [0.5, 1, 2, 3, 4]
    assert out.column("kl").to_pylist() == [0, 1, 2, 3, 4]
    assert out.schema.field("score").type == pa.float32() and out.schema.field("kl").type == pa.float32()
    assert out.schema.names == [n for n in SCHEMA.names if n in out.schema.names]  # score before kl
    assert out.schema.field("score").metadata == SCHEMA.field("score").metadata


def test_add_columns_on_a_sliced_table():
    table = random_table(5, 12, chunks=2).slice(3, 5)  # rows 3..7, across the chunk boundary
    lengths = [len(r) for r in table.column("response_ids").to_pylist()]
    rows = reference_rows(lengths, seed=1)
    out = add_columns(table, values=padded_from_rows(rows, max(lengths)), score=[1, 2, 3, 4, 5])
    assert out.num_rows == 5
    assert out.column("values").to_pylist() == rows
    assert out.column("prompt_id").to_pylist() == table.column("prompt_id").to_pylist()


def test_add_columns_length_checks():
    batch = rollouts_to_batch(random_rollouts(6, 4, min_response=2), [1, 2, 3, 4], 0, 0)
    lengths = [len(r) for r in batch.column("response_ids").to_pylist()]
    with pytest.raises(TrajectorySchemaError, match="'score' has 3 rows, the batch has 4"):
        add_columns(batch, score=[1.0, 2.0, 3.0])
    with pytest.raises(TrajectorySchemaError, match="padded column has 5 rows, the batch has 4"):
        add_columns(batch, values=torch.zeros(5, max(lengths)))
    with pytest.raises(TrajectorySchemaError, match="'ref_logprobs' has 3 rows"):
        add_columns(batch, ref_logprobs=reference_rows(lengths[:3]))
    short = reference_rows(lengths)
    short[2] = short[2][:-1]
    with pytest.raises(TrajectorySchemaError, match=rf"row 2 \(prompt_id=3, sample_index=0\): 'ref_logprobs' has {lengths[2] - 1} values"):
        add_columns(batch, ref_logprobs=short)
    with pytest.raises(TrajectorySchemaError, match=f"padded column is {max(lengths) - 1} wide, the longest response has {max(lengths)}"):
        add_columns(batch, values=torch.zeros(4, max(lengths) - 1))  # narrower than the longest response
    with pytest.raises(TrajectorySchemaError, match="must be 1-D"):
        add_columns(batch, score=torch.zeros(4, 1))


def test_add_columns_refuses_existing_and_unknown_names():
    batch = add_columns(rollouts_to_batch(random_rollouts(7, 2), [1, 2], 0, 0), score=[1, 2])
    with pytest.raises(TrajectorySchemaError, match=r"\['score'\] already present"):
        add_columns(batch, score=[3, 4])
    with pytest.raises(TrajectorySchemaError, match="unknown trajectory column"):
        add_columns(batch, scores=[3, 4])


# ----------------------------------------------------------------------------- concat


def test_concat_keeps_rows_in_order_without_copying():
    batches = [rollouts_to_batch(random_rollouts(s, s + 1), list(range(s + 1)), 0, worker_id=s) for s in range(4)]
    table = concat(batches)
    assert table.num_rows == sum(b.num_rows for b in batches)
    assert table.column("response_ids").num_chunks == 4
    expected = [row for b in batches for row in b.to_pylist()]
    assert table.to_pylist() == expected
    # zero-copy: the table's chunk points at the batch's own buffer
    assert table.column("response_ids").chunk(2).values.buffers()[1].address == batches[2].column("response_ids").values.buffers()[1].address


def test_concat_refuses_different_schemas():
    a = rollouts_to_batch(random_rollouts(8, 2), [1, 2], 0, 0)
    b = add_columns(a, score=[1, 2])
    with pytest.raises(TrajectorySchemaError, match="batch 1 has columns"):
        concat([a, b])
    with pytest.raises(ValueError, match="no batches"):
        concat([])
