"""`rlhf-dist task-data`: write every data file of a task for one seed (rlhf_dist/tasks/generate.py)
and print its headroom and label-quality statistics.

    rlhf-dist task-data --out runs/data                                  # built-in task, defaults
    rlhf-dist task-data --out runs/data seed=1 n_sft=1000 k=4 labeler_temperature=0.05
    rlhf-dist task-data --out runs/echo task=examples/echo_task.py:task
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rlhf_dist.config import ConfigError, parse_cli
from rlhf_dist.config.pipeline import TaskDataConfig
from rlhf_dist.tasks.base import TaskSpecError
from rlhf_dist.tasks.generate import generate, report


def write_task_data(cfg: TaskDataConfig, quiet: bool = False) -> dict:
    """Write the files of `cfg` (atomically) and return the manifest."""
    start = time.perf_counter()
    manifest = generate(Path(cfg.out), cfg)
    if not quiet:
        print(report(manifest, time.perf_counter() - start))
        print(f"wrote {cfg.out}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """0 on success, 2 on a bad command line or task spec (one line on stderr), 1 on failure."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = parse_cli(TaskDataConfig, argv, "rlhf-dist task-data", __doc__)
        write_task_data(cfg)
    except (ConfigError, TaskSpecError) as exc:
        print(f"rlhf-dist task-data: error: {exc} (--debug or RLHF_DIST_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"rlhf-dist task-data: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
