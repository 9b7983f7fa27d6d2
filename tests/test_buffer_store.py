"""Trajectories on disk: one file per iteration, atomic, read back by pyarrow and pandas;
one row per sampled response, nothing missing or duplicated."""

from __future__ import annotations

import collections
import os

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rlhf_dist.buffer import (
    ROLLOUT_COLUMNS,
    TrajectorySchemaError,
    TrajectoryWriter,
    add_columns,
    balance,
    concat,
    read_trajectories,
    rollouts_to_batch,
    trajectory_files,
)
from tests.test_buffer_build import random_rollouts

N_SAMPLES = 4


def iteration_batches(iteration: int, prompt_ids: list[int], workers: int):
    """What the rollout workers of one iteration emit: prompts balanced across workers, each
    worker sampling N_SAMPLES responses per prompt (fake rollouts), with scores added."""
    batches = []
    for worker, part in enumerate(balance(prompt_ids, workers)):
        ids = [p for p in part for _ in range(N_SAMPLES)]
        rollouts = random_rollouts(1000 * iteration + worker, len(ids))
        batch = rollouts_to_batch(rollouts, ids, policy_version=iteration, worker_id=worker)
        batches.append(add_columns(batch, score=[float(i) for i in range(len(ids))]))
    return batches


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_every_sampled_response_once(tmp_path, fmt):
    writer = TrajectoryWriter(tmp_path, format=fmt)
    prompts = {1: list(range(10)), 2: list(range(10, 17)), 3: list(range(17, 30))}
    written = {}
    for it, ids in prompts.items():
        written[it] = concat(iteration_batches(it, ids, workers=3))
        path = writer.write(it, written[it])
        assert path.name == f"iter_{it:06d}.{fmt}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"iter_{i:06d}.{fmt}" for i in (1, 2, 3)]  # no temp files

    table = read_trajectories(tmp_path)
    assert table.num_rows == sum(len(ids) * N_SAMPLES for ids in prompts.values())
    keys = list(zip(*(table.column(c).to_pylist() for c in ("iteration", "prompt_id", "sample_index"))))
    assert len(set(keys)) == len(keys)  # nothing duplicated
    expected = {(it, p, s) for it, ids in prompts.items() for p in ids for s in range(N_SAMPLES)}
    assert set(keys) == expected  # nothing missing
    counts = collections.Counter(table.column("iteration").to_pylist())
    assert counts == {it: len(ids) * N_SAMPLES for it, ids in prompts.items()}
    # content: the rows written, in order, plus their iteration
    for it, src in written.items():
        got = table.filter(pc.equal(table.column("iteration"), it))
        assert got.drop_columns(["iteration"]).to_pylist() == src.to_pylist()
    assert table.schema.field("response_ids").metadata[b"doc"]  # field docs survive the file


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_plain_pyarrow_and_pandas_read_the_files(tmp_path, fmt):
    writer = TrajectoryWriter(tmp_path, format=fmt)
    src = concat(iteration_batches(5, list(range(6)), workers=2))
    path = writer.write(5, src)
    if fmt == "parquet":
        plain = pq.read_table(path)
        df = pd.read_parquet(path)
        whole_dir = pd.read_parquet(tmp_path)
        assert len(whole_dir) == src.num_rows
    else:
        plain = pa.ipc.open_file(path).read_all()
        df = pd.read_feather(path)
    assert plain.drop_columns(["iteration"]).equals(src)
    assert len(df) == src.num_rows
    assert not df.duplicated(["prompt_id", "sample_index"]).any()
    assert (df["iteration"] == 5).all()
    assert [list(x) for x in df["response_ids"]] == src.column("response_ids").to_pylist()
    assert df["score"].tolist() == src.column("score").to_pylist()


def test_iterations_with_different_columns_are_unified(tmp_path):
    writer = TrajectoryWriter(tmp_path)
    plain = rollouts_to_batch(random_rollouts(1, 3), [0, 1, 2], 0, 0)
    writer.write(1, plain)
    writer.write(2, add_columns(plain, score=[1, 2, 3]))
    table = read_trajectories(tmp_path)
    assert table.schema.names == list(ROLLOUT_COLUMNS) + ["score", "iteration"]
    assert table.column("score").to_pylist() == [None] * 3 + [1.0, 2.0, 3.0]
    assert read_trajectories(tmp_path, iterations=[2]).num_rows == 3
    with pytest.raises(FileNotFoundError, match=r"iteration\(s\) \[7\]"):
        read_trajectories(tmp_path, iterations=[7])


def test_overwrite_and_duplicate_iteration_files(tmp_path):
    writer = TrajectoryWriter(tmp_path)
    batch = rollouts_to_batch(random_rollouts(2, 3), [0, 1, 2], 0, 0)
    writer.write(1, batch)
    with pytest.raises(FileExistsError, match="iter_000001.parquet exists"):
        writer.write(1, batch)
    writer.write(1, batch.slice(0, 2), overwrite=True)
    assert read_trajectories(tmp_path).num_rows == 2
    TrajectoryWriter(tmp_path, format="arrow").write(1, batch)
    with pytest.raises(ValueError, match="iteration 1 is stored twice"):
        read_trajectories(tmp_path)


def test_failed_write_leaves_nothing_and_temp_files_are_ignored(tmp_path, monkeypatch):
    writer = TrajectoryWriter(tmp_path)
    batch = rollouts_to_batch(random_rollouts(3, 3), [0, 1, 2], 0, 0)
    writer.write(1, batch)

    def half_write(table, where, **kwargs):
        with open(where, "wb") as f:
            f.write(b"PAR1 truncated")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", half_write)
    with pytest.raises(OSError, match="disk full"):
        writer.write(2, batch)
    assert sorted(os.listdir(tmp_path)) == ["iter_000001.parquet"]
    monkeypatch.undo()
    # a temp file left by a killed writer (hidden name) is skipped by every reader
    (tmp_path / ".iter_000002.parquet.tmp-123").write_bytes(b"PAR1 truncated")
    assert list(trajectory_files(tmp_path)) == [1]
    assert read_trajectories(tmp_path).num_rows == 3
    assert pq.read_table(tmp_path).num_rows == 3
    assert len(pd.read_parquet(tmp_path)) == 3


def test_write_validates_and_refuses_bad_input(tmp_path):
    writer = TrajectoryWriter(tmp_path)
    batch = rollouts_to_batch(random_rollouts(4, 2), [0, 1], 0, 0)
    with pytest.raises(TrajectorySchemaError, match="missing column 'worker_id'"):
        writer.write(1, batch.drop_columns(["worker_id"]))
    with pytest.raises(ValueError, match="format must be one of"):
        TrajectoryWriter(tmp_path, format="csv")
    assert writer.write(3, [batch, batch]).exists()  # a list of batches is concatenated
    assert list(trajectory_files(tmp_path)) == [3]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no iter_"):
        read_trajectories(empty)
