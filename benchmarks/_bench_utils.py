"""Shared helpers for the benchmark scripts: interleaved timing, medians, JSON and table output.

Output convention of every script in this folder: exactly ONE JSON object, on ONE line, is the
last line written to stdout; everything for humans (progress, tables, library logs) goes to
stderr. So `python benchmarks/bench_ppo.py > out.json`, `python benchmarks/bench_ppo.py | tail -1` and
`--json-out FILE` all give the machine-readable result.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable


def set_vllm_cpu_env(**extra: str) -> None:
    """vLLM CPU settings for a shared machine (docs/stack.md), logs to stderr so stdout stays JSON,
    no hub access; `extra` adds script-specific variables. Call before vLLM is imported. Values
    already in the environment win."""
    from rlhf_dist.runtime import VLLM_CPU_ENV

    for key, value in {**VLLM_CPU_ENV,
                       "VLLM_LOGGING_STREAM": "ext://sys.stderr", "VLLM_LOGGING_LEVEL": "WARNING",
                       "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **extra}.items():
        os.environ.setdefault(key, value)


def log(*args) -> None:
    """Progress and tables: to stderr, so stdout stays machine-readable."""
    print(*args, file=sys.stderr, flush=True)


def calls_per_repeat(seconds_per_call: float, min_repeat_s: float) -> int:
    """How many back-to-back calls make one timed repeat last at least `min_repeat_s` (>= 1).

    Tiny functions (tens of microseconds) are timed in batches so that timer resolution and
    the harness's own Python overhead do not dominate.
    """
    return max(1, math.ceil(min_repeat_s / max(seconds_per_call, 1e-7)))


def time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, min_repeat_s: float = 0.02, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each function, `repeats` samples each, measured side by side.

    Each repeat runs every function once (its batch of calls), rotating the order from repeat to
    repeat, so a burst of load from other processes on the shared machine hits all candidates
    alike instead of one of them. Ratios between the returned medians are therefore fair.
    """
    numbers = {}
    for name, fn in fns.items():  # warm-up; the last warm-up call also sizes the batch of calls
        for _ in range(max(1, warmup)):
            start = time.perf_counter()
            fn()
        numbers[name] = calls_per_repeat(time.perf_counter() - start, min_repeat_s)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            fn, n = fns[name], numbers[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n)
    return samples


def summarize(samples: list[float]) -> dict[str, float]:
    """Median (the figure to quote), min and max of a list of per-call times in seconds."""
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "n": len(samples),
    }


def environment(torch_threads: int | None = None) -> dict:
    """What the numbers depend on: date, versions, cores, load, torch threads."""
    import torch

    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "loadavg_1m_at_start": os.getloadavg()[0],
        "torch_threads": torch.get_num_threads() if torch_threads is None else torch_threads,
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
    }


def emit(result: dict, json_out: str | None) -> None:
    """Write the result as one JSON line to stdout (last line) and optionally to a file."""
    text = json.dumps(result, sort_keys=False)
    if json_out:
        with open(json_out, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
    sys.stdout.flush()
    print(text, flush=True)


def table(rows: list[dict], columns: list[str], title: str = "") -> str:
    """A plain fixed-width text table of `rows` (dicts) restricted to `columns`."""
    cells = [[_fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = [title] if title else []
    lines.append("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
