"""Trajectories on disk: one file per PPO iteration, for inspection and replay.

    runs/x/trajectories/iter_000001.parquet   (or .arrow: Arrow IPC file format, memory-mappable)

Each file holds every row of its iteration plus an `iteration` column, with the schema's field
docs in its metadata. Written atomically (hidden temp file + rename), so a reader never sees a
half-written file, and the hidden temp name (leading '.') is skipped by pyarrow.dataset and
pandas when they read the whole folder. Plain readers work:

    pyarrow.parquet.read_table("runs/x/trajectories")      pandas.read_parquet(".../iter_000001.parquet")
    pyarrow.ipc.open_file(".../iter_000001.arrow").read_all()   pandas.read_feather(".../iter_000001.arrow")

A plain read of the whole folder takes the column set of ONE file (pyarrow.dataset's rule): if
iterations were written with different columns, use `read_trajectories`, which unifies them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rlhf_dist.buffer.build import concat
from rlhf_dist.buffer.schema import ROLLOUT_COLUMNS, SCHEMA, canonical_order, validate

FORMATS = {"parquet": "parquet", "arrow": "arrow"}  # format -> file suffix
_FILE = re.compile(r"^iter_(\d{6,})\.(parquet|arrow)$")


class TrajectoryWriter:
    """Writes `iter_{iteration:06d}.{parquet|arrow}` files into `directory` (created if needed)."""

    def __init__(self, directory: str | os.PathLike, format: str = "parquet") -> None:
        if format not in FORMATS:
            raise ValueError(f"TrajectoryWriter: format must be one of {sorted(FORMATS)}, got {format!r}")
        self.directory = Path(directory)
        self.format = format
        self.directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, iteration: int) -> Path:
        return self.directory / f"iter_{iteration:06d}.{FORMATS[self.format]}"

    def write(
        self,
        iteration: int,
        data: pa.Table | pa.RecordBatch | Sequence[pa.RecordBatch],
        overwrite: bool = False,
    ) -> Path:
        """Write one iteration's trajectories (validated; an `iteration` column is added).

        An existing file of that iteration is an error unless `overwrite` (e.g. when a run resumes
        from a checkpoint and redoes the iteration); the replacement is atomic.
        """
        if iteration < 0:
            raise ValueError(f"TrajectoryWriter: iteration must be >= 0, got {iteration}")
        table = _as_table(data)
        validate(table, required=ROLLOUT_COLUMNS)
        if "iteration" in table.schema.names:
            raise ValueError("TrajectoryWriter: the table already has an 'iteration' column")
        table = table.append_column(SCHEMA.field("iteration"), pa.array(np.full(table.num_rows, iteration, np.int64)))
        table = table.select(canonical_order(table.schema.names))
        path = self.path_for(iteration)
        if not overwrite and path.exists():
            raise FileExistsError(f"TrajectoryWriter: {path} exists (pass overwrite=True to replace it)")
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            if self.format == "parquet":
                pq.write_table(table, tmp)
            else:
                with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                    writer.write_table(table)
            _fsync(tmp)  # the data is on disk before the name points at it
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path


def _as_table(data) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    return concat(list(data))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def trajectory_files(directory: str | os.PathLike) -> dict[int, Path]:
    """{iteration: path} of the iteration files in `directory`; the same iteration in both
    formats is an error (its rows would be read twice)."""
    found: dict[int, Path] = {}
    for path in sorted(Path(directory).iterdir()):
        match = _FILE.match(path.name)
        if not match:
            continue
        iteration = int(match.group(1))
        if iteration in found:
            raise ValueError(f"iteration {iteration} is stored twice: {found[iteration].name} and {path.name}")
        found[iteration] = path
    return dict(sorted(found.items()))


def read_trajectories(directory: str | os.PathLike, iterations: Iterable[int] | None = None) -> pa.Table:
    """All (or the chosen) iterations' rows as one Table, in iteration order, with `iteration`.

    Iterations with different column sets (e.g. learner columns written from some iteration on)
    are unified: a column missing from a file comes back null for its rows.
    """
    files = trajectory_files(directory)
    if iterations is not None:
        wanted = list(iterations)
        missing = [i for i in wanted if i not in files]
        if missing:
            raise FileNotFoundError(f"read_trajectories: no file for iteration(s) {missing} in {directory}")
        files = {i: files[i] for i in sorted(wanted)}
    if not files:
        raise FileNotFoundError(f"read_trajectories: no iter_*.parquet / iter_*.arrow files in {directory}")
    table = pa.concat_tables([_read_file(path) for path in files.values()], promote_options="default")
    return table.select(canonical_order(table.schema.names))


def _read_file(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    # memory-mapped: the table's buffers point into the file's pages, nothing is copied
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()
