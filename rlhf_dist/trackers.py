"""Experiment trackers beside the run folder's own logs: Weights & Biases and MLflow (`log.*` keys,
rlhf_dist/config/logging.py). `RunLog` (rlhf_dist/runtime.py) drives them: `start` when the log
opens (the resolved config as parameters, flattened to dotted keys), `log_metrics` on every
record, `finish` with the summary and the run's files at the end, `end` when the run stops.

A tracker is a convenience, the run folder is the record: any exception from a tracker (a missing
package, a server gone mid-run) drops that tracker with one warning line and the run goes on.
wandb and mlflow are imported only when enabled.

Resume (`resume=auto`): the tracker run id is kept in the run folder (`mlflow_run_id`,
`wandb_run_id`) and a resumed run logs into the same tracker run. Records logged after the
checkpoint and before the stop stay there: MLflow shows those steps twice, W&B keeps the first
values (it ignores steps at or below the last one it has). `overwrite=true` removes those files,
`out/wandb/` and an MLflow folder inside the run folder (`RUN_FOLDER_FILES`, `mlflow_store_in`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from pathlib import Path


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    flat = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def numbers(d: dict) -> dict[str, float]:
    """The numeric leaves of `d` (bools excluded), flattened to dotted keys."""
    return {k: float(v) for k, v in flatten(d).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


class MLflowTracker:
    """One MLflow run per training run, through `MlflowClient` (no process-wide active run, so
    several runs in one process do not mix)."""

    name = "mlflow"

    def __init__(self, uri: str, experiment: str, run_name: str, out: Path, params: dict) -> None:
        # A plain folder holds an SQLite store and the artifacts (MLflow 3 refuses its old file
        # store); absolute, since the working directory may change. `mlflow ui --backend-store-uri
        # sqlite:///FOLDER/mlflow.db` shows it.
        self.folder = None if ":" in uri else Path(uri).resolve()
        self.uri = f"sqlite:///{self.folder / 'mlflow.db'}" if self.folder else uri
        self.experiment, self.run_name, self.out, self.params = experiment, run_name, Path(out), params
        self.client = self.run_id = None

    def start(self, resumed: bool) -> None:
        # A lost server must cost a training step seconds, not MLflow's default minutes of retries.
        for key, value in {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                           "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}.items():
            os.environ.setdefault(key, value)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        id_file = self.out / "mlflow_run_id"
        logged = {}
        if resumed and id_file.exists():
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            logged = self.client.get_run(self.run_id).data.params
        else:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None and self.folder:
                self.folder.mkdir(parents=True, exist_ok=True)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(
                self.experiment, artifact_location=(self.folder / "artifacts").as_uri() if self.folder else None)
            self.run_id = self.client.create_run(exp_id, run_name=self.run_name).info.run_id
            id_file.write_text(self.run_id + "\n")
        # MLflow refuses to change a logged parameter: a resumed run adds only the new keys.
        params = [Param(k, str(v)) for k, v in flatten(self.params).items() if k not in logged]
        for chunk in _chunks(params, 100):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, params=chunk)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for chunk in _chunks([Metric(k, v, now, step) for k, v in metrics.items()], 1000):
            self.client.log_batch(self.run_id, metrics=chunk)

    def finish(self, summary: dict, files: list[Path]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        headline = {f"summary/{k}": v for k, v in numbers({k: v for k, v in summary.items() if k != "config"}).items()
                    if math.isfinite(v)}
        for chunk in _chunks([Metric(k, v, now, 0) for k, v in headline.items()], 1000):
            self.client.log_batch(self.run_id, metrics=chunk)
        self.client.log_dict(self.run_id, summary, "summary.json")
        for path in files:
            self.client.log_artifact(self.run_id, str(path))

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


class WandbTracker:
    """One W&B run per training run; offline runs are written under `out/wandb/` and need no
    network (`wandb sync out/wandb/offline-run-*` uploads them later)."""

    name = "wandb"

    def __init__(self, project: str, run_name: str, mode: str, out: Path, params: dict) -> None:
        self.project, self.run_name, self.mode, self.out, self.params = project, run_name, mode, Path(out), params
        self.run = None

    def start(self, resumed: bool) -> None:
        import wandb

        id_file = self.out / "wandb_run_id"
        if resumed and id_file.exists():
            run_id = id_file.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            id_file.write_text(run_id + "\n")
        # No system-stats sampler, git probe or console capture: the run folder has the console, and
        # the sampler would take a core from training on small machines.
        settings = wandb.Settings(console="off", x_disable_stats=True, disable_git=True, save_code=False, silent=True)
        self.run = wandb.init(project=self.project, name=self.run_name, id=run_id, resume="allow", dir=str(self.out),
                              mode=self.mode, config=flatten(self.params), reinit="create_new", settings=settings)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def finish(self, summary: dict, files: list[Path]) -> None:
        self.run.summary.update({f"summary/{k}": v for k, v in
                                 numbers({k: v for k, v in summary.items() if k != "config"}).items()})
        # Files in the run's own folder are part of the run (uploaded with it, kept by `wandb sync`).
        Path(self.run.dir, "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        for path in files:
            shutil.copy(path, Path(self.run.dir, Path(path).name))

    def end(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


# What the trackers write into a run folder, whichever are on: W&B's own folder (`wandb.init(dir=out)`
# puts the run under out/wandb/) and the tracker run ids a resumed run continues. Run folders list
# them with their artifacts, so `overwrite=true` removes them (rlhf_dist/recipes/train_stage.py, ppo_checkpoint.py).
RUN_FOLDER_FILES = ("wandb", "wandb_run_id", "mlflow_run_id")


def mlflow_store_in(cfg, out: str | Path) -> tuple[str, ...]:
    """The MLflow store that `cfg.mlflow_uri` (a LogConfig's) keeps inside the run folder `out`, as
    paths relative to it: the folder itself when it lies below `out`, or the store's files
    (`mlflow.db`, `artifacts`) when it is `out`; () for a server, an SQLite URI or a folder elsewhere."""
    if not cfg.mlflow_uri or ":" in cfg.mlflow_uri:  # the same test as MLflowTracker's
        return ()
    folder, out = Path(cfg.mlflow_uri).resolve(), Path(out).resolve()
    if folder == out:
        return ("mlflow.db", "artifacts")
    return (str(folder.relative_to(out)),) if folder.is_relative_to(out) else ()


def make_trackers(cfg, out: str | Path, config: dict) -> list:
    """The trackers `cfg` (a LogConfig) enables for the run folder `out`, not yet started;
    `config` is the run's resolved config (`config_to_dict`), logged as parameters."""
    out = Path(out)
    run_name = Path(out).resolve().name
    trackers = []
    if cfg.mlflow_uri:
        trackers.append(MLflowTracker(cfg.mlflow_uri, cfg.mlflow_experiment, run_name, out, config))
    if cfg.wandb:
        trackers.append(WandbTracker(cfg.wandb_project, cfg.wandb_run or run_name, cfg.wandb_mode, out, config))
    return trackers
