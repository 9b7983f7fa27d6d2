"""Small helpers shared by the recipes: stage timing and summary tables."""

from __future__ import annotations

import time
from contextlib import contextmanager


@contextmanager
def stage(name: str, timings: dict[str, float]):
    """Print a stage header and its wall time; record the time in `timings`."""
    print(f"\n== {name}", flush=True)
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start
    print(f"   done in {timings[name]:.1f} s", flush=True)


def write_text_atomic(path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: readers never see half a file."""
    import os
    from pathlib import Path

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def print_table(rows: list[tuple[str, str]], title: str) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}\n" + "-" * (width + 30))
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
