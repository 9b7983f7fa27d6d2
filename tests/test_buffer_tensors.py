"""to_padded and per_token_column against per-row references (`pad_prompt_response`, Python loops)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from rlhf_dist.buffer import add_columns, per_token_column, rollouts_to_batch, to_padded
from rlhf_dist.models.batching import PaddedBatch, pad_prompt_response
from tests.test_buffer_build import random_rollouts, random_table

PAD = 0


def rows_of(table, name):
    return table.column(name).to_pylist()


def assert_matches_reference(out, table):
    """Token tensors equal pad_prompt_response of the same rows; every other column equals a
    per-row loop that writes row i's values into a zero (B, T) array."""
    ref = pad_prompt_response(rows_of(table, "prompt_ids"), rows_of(table, "response_ids"), PAD)
    assert out.prompt_len == ref.prompt_len
    for name in ("input_ids", "attention_mask", "position_ids", "response_mask"):
        got, want = getattr(out, name), getattr(ref, name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert torch.equal(got, want), name
    B, T = ref.response_mask.shape
    for name in ("rollout_logprobs", "ref_logprobs", "values"):
        if name not in table.schema.names:
            continue
        want = torch.zeros(B, T)
        for i, row in enumerate(rows_of(table, name)):
            want[i, : len(row)] = torch.tensor(row)
        assert out.columns[name].dtype == torch.float32
        assert torch.equal(out.columns[name], want), name
    for name in ("prompt_id", "sample_index", "policy_version", "finished_with_eos", "score"):
        if name in table.schema.names:
            assert out.columns[name].tolist() == rows_of(table, name), name


@pytest.mark.parametrize("seed", range(5))
def test_random_ragged_batches(seed):
    table = random_table(seed, 33, chunks=1, max_prompt=20, max_response=40)
    assert_matches_reference(to_padded(table, PAD), table)


def test_length_one_and_empty_responses():
    table = random_table(10, 16, max_response=1)  # every response has exactly one token
    assert_matches_reference(to_padded(table, PAD), table)
    rollouts = random_rollouts(11, 8, min_response=0, max_response=3)
    rollouts[0].response_ids, rollouts[0].logprobs = [], []
    table = pa.Table.from_batches([rollouts_to_batch(rollouts, list(range(8)), 0, 0)])
    assert_matches_reference(to_padded(table, PAD), table)
    for r in rollouts:
        r.response_ids, r.logprobs = [], []
    empty = pa.Table.from_batches([rollouts_to_batch(rollouts, list(range(8)), 0, 0)])
    out = to_padded(empty, PAD)
    assert out.response_mask.shape == (8, 0)
    assert_matches_reference(out, empty)


def test_sliced_table_rows_3_to_7():
    table = random_table(12, 20)
    sliced = table.slice(3, 5)
    assert sliced.column("response_ids").chunk(0).offset == 3  # really a view with an offset
    out = to_padded(sliced, PAD)
    assert out.input_ids.shape[0] == 5
    assert_matches_reference(out, sliced)
    # and a sliced RecordBatch
    batch = table.to_batches()[0].slice(3, 5)
    assert_matches_reference(to_padded(batch, PAD), batch)


def test_table_of_several_chunks_and_slices_across_chunks():
    table = random_table(13, 40, chunks=4)
    assert table.column("response_ids").num_chunks == 4
    assert_matches_reference(to_padded(table, PAD), table)
    across = table.slice(7, 20)  # starts inside chunk 0, ends inside chunk 2
    assert across.column("response_ids").num_chunks == 3
    assert_matches_reference(to_padded(across, PAD), across)


def test_scorer_and_learner_columns_come_out_padded():
    table = random_table(14, 24, chunks=2)
    lengths = [len(r) for r in rows_of(table, "response_ids")]
    rng = np.random.default_rng(0)
    table = add_columns(
        table,
        score=rng.normal(size=24),
        ref_logprobs=[rng.normal(size=n) for n in lengths],
        values=[rng.normal(size=n) for n in lengths],
    )
    out = to_padded(table, PAD)
    assert_matches_reference(out, table)
    assert set(out.columns) == {
        "prompt_id", "sample_index", "policy_version", "worker_id", "rollout_logprobs",
        "finished_with_eos", "score", "ref_logprobs", "values",
    }
    assert out.columns["finished_with_eos"].dtype == torch.bool
    assert out.columns["sample_index"].dtype == torch.int32
    assert out.columns["score"].dtype == torch.float32
    only = to_padded(table, PAD, columns=["score"])
    assert list(only.columns) == ["score"]
    with pytest.raises(ValueError, match="no column 'kl'"):
        to_padded(table, PAD, columns=["kl"])


def test_fixed_prompt_and_response_lengths():
    table = random_table(15, 6, max_prompt=5, max_response=5)
    out = to_padded(table, PAD, prompt_len=9, response_len=11)
    assert out.input_ids.shape == (6, 20) and out.prompt_len == 9
    for i, (p, r) in enumerate(zip(rows_of(table, "prompt_ids"), rows_of(table, "response_ids"))):
        want = [PAD] * (9 - len(p)) + p + r + [PAD] * (11 - len(r))
        assert out.input_ids[i].tolist() == want
        assert out.attention_mask[i].tolist() == [0] * (9 - len(p)) + [1] * (len(p) + len(r)) + [0] * (11 - len(r))
        assert out.position_ids[i, 9 - len(p) : 9 + len(r)].tolist() == list(range(len(p) + len(r)))
    assert out.response_ids.shape == (6, 11)
    with pytest.raises(ValueError, match="prompt_len=2 is shorter than the longest row"):
        to_padded(table, PAD, prompt_len=2)


def test_padded_batch_view():
    table = random_table(16, 8)
    pb = to_padded(table, PAD).padded_batch()
    assert isinstance(pb, PaddedBatch)
    ref = pad_prompt_response(rows_of(table, "prompt_ids"), rows_of(table, "response_ids"), PAD)
    assert torch.equal(pb.response_ids, ref.response_ids)


# ----------------------------------------------------------------------------- per_token_column


def test_per_token_column_matches_row_loop():
    rng = np.random.default_rng(1)
    padded = torch.tensor(rng.normal(size=(9, 13)), dtype=torch.float32)
    lengths = torch.tensor([13, 1, 0, 5, 7, 13, 2, 1, 9])
    col = per_token_column(padded, lengths)
    assert col.type == pa.list_(pa.float32())
    want = [padded[i, :n].tolist() for i, n in enumerate(lengths.tolist())]
    assert col.to_pylist() == want
    assert per_token_column(padded.numpy(), lengths.numpy()).to_pylist() == want


def test_per_token_column_bf16_and_errors():
    padded = torch.tensor([[0.5, 1.5, 9.0], [2.0, 9.0, 9.0]], dtype=torch.bfloat16)
    assert per_token_column(padded, [2, 1]).to_pylist() == [[0.5, 1.5], [2.0]]
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 3\]"):
        per_token_column(padded, [4, 1])
    with pytest.raises(ValueError, match="need \\(B, T\\) values and \\(B,\\) lengths"):
        per_token_column(padded, [1, 1, 1])


def test_learner_round_trip_table_to_tensors_to_table():
    """What a learner does: pad, compute per-token values on (B, T), write them back as a column."""
    table = random_table(17, 30, chunks=3).slice(2, 25)
    out = to_padded(table, PAD)
    values = torch.where(out.response_mask, out.columns["rollout_logprobs"] * 2, torch.tensor(123.0))
    back = add_columns(table, values=values)
    assert back.column("values").to_pylist() == [[2 * x for x in row] for row in rows_of(table, "rollout_logprobs")]
