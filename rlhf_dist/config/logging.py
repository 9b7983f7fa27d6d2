"""Config of the experiment trackers a run logs to beside its own metrics.jsonl and TensorBoard:
Weights & Biases and MLflow (rlhf_dist/trackers.py). Both are off by default; a tracker that fails
mid-run is dropped with one warning line, the run and its local logs go on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhf_dist.config.fields import param


@dataclass
class LogConfig:
    wandb: bool = param(False, "also log to Weights & Biases (needs the wandb package)")
    wandb_project: str = param("rlhf-dist", "W&B project")
    wandb_run: str = param("", "W&B run name (default: the run folder's name)")
    wandb_mode: Literal["offline", "online"] = param(
        "offline", "offline: no network, the run is written under out/wandb/ (upload later with `wandb sync`); "
                   "online: streams to the W&B server (needs `wandb login` or WANDB_API_KEY)")
    mlflow_uri: str = param("", "also log to MLflow: a local folder (an SQLite store and the artifacts in it), "
                                "sqlite:///file.db or http://host:port (a tracking server); empty: off; needs the mlflow package")
    mlflow_experiment: str = param("rlhf-dist", "MLflow experiment name")
