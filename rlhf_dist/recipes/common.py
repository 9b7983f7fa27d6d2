"""Small helpers shared by the recipes: JSONL reading, stage timing, run folders, tables."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path


def read_jsonl(path: str | Path, field: str | None = None) -> list:
    """Rows of a JSONL file (or one field of each). Bad lines raise ValueError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    rows = []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if field is not None:
                if not isinstance(row, dict) or field not in row:
                    raise ValueError(f"{path}:{lineno}: missing field '{field}'")
                row = row[field]
            rows.append(row)
    return rows


@contextmanager
def stage(name: str, timings: dict[str, float]):
    """Print a stage header and its wall time; record the time in `timings`."""
    print(f"\n== {name}", flush=True)
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start
    print(f"   done in {timings[name]:.1f} s", flush=True)


def print_table(rows: list[tuple[str, str]], title: str) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}\n" + "-" * (width + 30))
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
