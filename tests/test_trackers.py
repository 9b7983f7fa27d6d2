"""Experiment trackers (rlhf_dist/trackers.py) through RunLog: what a run writes is what MLflow (a
real tracking server, and a local folder) and an offline W&B run read back; a tracker that fails
mid-run is dropped with one warning and the local log keeps every record; the `log.*` keys; a
stage's own summary numbers (added after training) reach the tracker; `overwrite=true` removes
what the trackers wrote in the run folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rlhf_dist.config import ConfigError, load_config
from rlhf_dist.config.logging import LogConfig
from rlhf_dist.config.stages import SFTConfig
from rlhf_dist.runtime import RunLog
from rlhf_dist.trackers import make_trackers

pytest.importorskip("mlflow")

CONFIG = {"seed": 3, "optim": {"lr": 0.001, "betas": [0.9, 0.95]}, "learner": {"num_ranks": 2}}
RECORDS = [(0, {"eval/loss": 2.0}), (1, {"train/loss": 1.5, "train/lr": 1e-3, "note": "text", "flag": True}),
           (2, {"train/loss": 1.25, "train/lr": 9e-4}), (2, {"eval/loss": 1.4})]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, uri
        except OSError:
            time.sleep(0.5)
        assert proc.poll() is None, "the mlflow server exited at start"
    stop(proc)
    pytest.fail("the mlflow server did not answer within 120 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the server and its workers
    proc.wait(timeout=30)


def write_run(out: Path, cfg: LogConfig, report: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    if report:
        (out / "report.html").write_text("<html>report</html>")
    log = RunLog(out, trackers=make_trackers(cfg, out, CONFIG))
    for step, record in RECORDS:
        log.write(step, record)
    log.close()
    summary = {"steps": 2, "eval/loss": 1.4, "model": str(out / "model"), "config": CONFIG}
    log.finish(summary, [out / "report.html"])
    return summary


def check_mlflow(uri: str, out: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run_id = (out / "mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == out.name
    assert client.get_experiment(run.info.experiment_id).name == "trk-test"
    history = {key: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.value))]
               for key in ("train/loss", "train/lr", "eval/loss")}
    assert history == {"train/loss": [(1, 1.5), (2, 1.25)], "train/lr": [(1, 1e-3), (2, 9e-4)],
                       "eval/loss": [(0, 2.0), (2, 1.4)]}
    assert "note" not in run.data.metrics and "flag" not in run.data.metrics
    assert run.data.params["optim.lr"] == "0.001" and run.data.params["learner.num_ranks"] == "2"
    assert run.data.metrics["summary/eval/loss"] == 1.4
    assert {a.path for a in client.list_artifacts(run_id)} == {"summary.json", "report.html"}
    local = client.download_artifacts(run_id, "summary.json", str(out / "dl"))
    assert json.loads(Path(local).read_text())["steps"] == 2


def test_mlflow_server_reads_back_metrics_params_and_artifacts(tmp_path, capsys):
    proc, uri = start_mlflow_server(tmp_path / "server")
    try:
        out = tmp_path / "run_a"
        write_run(out, LogConfig(mlflow_uri=uri, mlflow_experiment="trk-test"))
        check_mlflow(uri, out)
        # Resume: the same MLflow run continues, the config's parameters are not logged again.
        log = RunLog(out, resume_step=2, trackers=make_trackers(LogConfig(mlflow_uri=uri, mlflow_experiment="trk-test"), out,
                                                                {**CONFIG, "seed": 4, "extra": 1}))
        log.write(3, {"train/loss": 1.0})
        log.close()
        log.finish({"steps": 3})
        from mlflow.tracking import MlflowClient

        run = MlflowClient(tracking_uri=uri).get_run((out / "mlflow_run_id").read_text().strip())
        assert run.data.metrics["train/loss"] == 1.0 and run.data.params["seed"] == "3" and run.data.params["extra"] == "1"
        assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 2, 3]

        # The server dies mid-run: one warning, the tracker is dropped within seconds (not MLflow's
        # default minutes of retries), the local log keeps every record.
        out = tmp_path / "run_b"
        out.mkdir()
        capsys.readouterr()
        log = RunLog(out, trackers=make_trackers(LogConfig(mlflow_uri=uri, mlflow_experiment="trk-test"), out, CONFIG))
        log.write(1, {"train/loss": 1.0})
        stop(proc)
        start = time.monotonic()
        for step in range(2, 6):
            log.write(step, {"train/loss": 1.0 / step})
        log.close()
        log.finish({"steps": 5}, [])
        assert time.monotonic() - start < 60 and not log.trackers
        warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1 and warnings[0].startswith("warning: mlflow tracker disabled: "), warnings
        assert len((out / "metrics.jsonl").read_text().splitlines()) == 5
    finally:
        stop(proc)


def test_a_dead_tracker_warns_once_and_the_log_goes_on(tmp_path, capsys):
    class Flaky:
        name = "mlflow"
        calls = 0

        def start(self, resumed):
            pass

        def log_metrics(self, step, metrics):
            Flaky.calls += 1
            if step >= 2:
                raise ConnectionError("server gone\nsecond line")

        def finish(self, summary, files):
            raise AssertionError("a dropped tracker is not called again")

        end = finish

    log = RunLog(tmp_path, trackers=[Flaky()])
    for step in range(1, 6):
        log.write(step, {"train/loss": float(step)})
    log.close()
    log.finish({"steps": 5})
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: mlflow tracker disabled: ConnectionError: server gone second line"]
    assert Flaky.calls == 2
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]


def test_mlflow_local_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run_local"
    write_run(out, LogConfig(mlflow_uri="mlruns", mlflow_experiment="trk-test"))
    check_mlflow(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", out)
    assert list((tmp_path / "mlruns" / "artifacts").rglob("report.html"))


def test_wandb_offline_writes_the_run_under_the_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # belt and braces: this test never reaches a network
    out = tmp_path / "run_w"
    write_run(out, LogConfig(wandb=True, wandb_project="trk-test"))
    run_id = (out / "wandb_run_id").read_text().strip()
    [run_dir] = (out / "wandb").glob(f"offline-run-*-{run_id}")
    [records_file] = run_dir.glob("*.wandb")
    history, summary, config = [], {}, {}

    def key(item) -> str:  # a key with "/" may come as its parts
        return item.key or "/".join(item.nested_key)

    for record in wandb_records(records_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {key(item): json.loads(item.value_json) for item in record.history.item if not key(item).startswith("_")}
            history.append((record.history.step.num, row))
        elif kind == "summary":
            summary.update({key(item): json.loads(item.value_json) for item in record.summary.update})
        elif kind == "run":
            config = {key(item): json.loads(item.value_json) for item in record.run.config.update}
    assert history == [(0, {"eval/loss": 2.0}), (1, {"train/loss": 1.5, "train/lr": 1e-3}),
                       (2, {"train/loss": 1.25, "train/lr": 9e-4, "eval/loss": 1.4})]
    assert summary["summary/eval/loss"] == 1.4 and summary["train/loss"] == 1.25
    assert config["optim.lr"] == 0.001 and config["learner.num_ranks"] == 2
    assert json.loads((run_dir / "files" / "summary.json").read_text())["steps"] == 2
    assert (run_dir / "files" / "report.html").exists()


def wandb_records(path: Path):
    """The protobuf records of a `.wandb` file: a 7-byte header, then a LevelDB-style log (32 KiB
    blocks of records, each with a 7-byte header; a record may span blocks in pieces)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, piece = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        piece += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(piece)
            piece = b""
            yield record


def test_log_keys_in_help_and_a_misspelt_key_refused(capsys):
    from rlhf_dist.cli import main

    with pytest.raises(SystemExit):
        main(["sft", "--help"])
    help_text = capsys.readouterr().out
    for key in ("log.wandb", "log.wandb_project", "log.wandb_run", "log.wandb_mode", "log.mlflow_uri", "log.mlflow_experiment"):
        assert key in help_text
    assert "offline, online" in help_text
    cfg = load_config(SFTConfig, overrides=["out=o", "log.mlflow_uri=http://127.0.0.1:5000", "log.wandb=true"])
    assert cfg.log.mlflow_uri == "http://127.0.0.1:5000" and cfg.log.wandb and cfg.log.wandb_mode == "offline"
    with pytest.raises(ConfigError, match="mlflow_urii"):
        load_config(SFTConfig, overrides=["out=o", "log.mlflow_urii=x"])
    with pytest.raises(ConfigError, match="wandb_mode"):
        load_config(SFTConfig, overrides=["out=o", "log.wandb_mode=cloud"])


def test_no_tracker_library_is_imported_when_off(tmp_path):
    code = ("import sys; from rlhf_dist.runtime import RunLog; from rlhf_dist.trackers import make_trackers; "
            "from rlhf_dist.config.logging import LogConfig; "
            f"log = RunLog({str(tmp_path)!r}, trackers=make_trackers(LogConfig(), {str(tmp_path)!r}, {{}})); "
            "log.write(1, {'a': 1.0}); log.close(); log.finish({}); "
            "print(sorted(m for m in ('mlflow', 'wandb') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"


class FakeLearnerGroup:
    """Stands in for the learner group (Ray, DeepSpeed) in `run_stage`: constant rm metrics and a
    saved model folder (the init's config), so a stage's summary path runs in seconds."""

    def __init__(self, spec, cfg, optim, global_batch, total_steps, pad_id):
        self.init, self.grad_accum = spec.path, 1
        self.info = [{"params": 1, "trainable_params": 1}]

    def train_step(self, objective, items):
        return {**self.evaluate(objective, items), "lr": 1e-3}

    def evaluate(self, objective, items):
        n = float(len(items))
        return {"loss_sum": 0.5 * n, "prompts": n, "correct_pairs": 0.75 * n, "pairs": n, "reward_sum": 0.25 * 2 * n,
                "reward_sq_sum": 1.0 * 2 * n, "responses": 2 * n}

    def save_model(self, path, tokenizer_path=None):
        Path(path).mkdir(parents=True)
        (Path(path) / "config.json").write_text((Path(self.init) / "config.json").read_text())

    def peak_memory_mb(self):
        return [1.0]

    def optimizer_state_mb(self):
        return [1.0]

    def shutdown(self):
        pass


def test_a_stage_summary_reaches_mlflow_with_the_stage_own_numbers(ppo_models, tmp_path, monkeypatch):
    """rm adds the RM's bias and the labeler's ceiling after training: MLflow gets them as summary
    metrics and in summary.json; an error while adding them ends the tracker run FAILED."""
    import rlhf_dist.actors.learner_group as learner_group
    import rlhf_dist.actors.resources as resources
    import rlhf_dist.recipes.train_stage as train_stage
    from mlflow.tracking import MlflowClient

    from rlhf_dist.config.stages import RMConfig
    from rlhf_dist.recipes.stages import rm

    monkeypatch.setattr(learner_group, "LearnerGroup", FakeLearnerGroup)
    monkeypatch.setattr(resources, "check_resources", lambda roles: None)
    monkeypatch.setattr(train_stage, "ensure_ray", lambda address: None)
    sft, _, data = ppo_models
    log_cfg = LogConfig(mlflow_uri=str(tmp_path / "mlruns"), mlflow_experiment="trk-stage")
    out = tmp_path / "rm"
    summary = rm(RMConfig(out=str(out), init=sft, data=data, batch_size=4, log=log_cfg))
    assert summary["reward_bias"] == 0.25 and 0 <= summary["labeler_ceiling"] <= 1
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    run = client.get_run((out / "mlflow_run_id").read_text().strip())
    assert run.info.status == "FINISHED"
    assert run.data.metrics["summary/reward_bias"] == 0.25
    assert run.data.metrics["summary/labeler_ceiling"] == pytest.approx(summary["labeler_ceiling"])
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path))).read_text())
    assert logged["labeler_ceiling"] == summary["labeler_ceiling"] and logged == json.loads((out / "summary.json").read_text())

    def fail(summary):
        raise RuntimeError("sampling failed")

    out = tmp_path / "failed"
    with pytest.raises(RuntimeError, match="sampling failed"):
        train_stage.run_stage(RMConfig(out=str(out), init=sft, batch_size=4, log=log_cfg), "rm", "scalar_from_lm",
                              [None] * 8, [None] * 4, 0, lambda sums: {"loss": 0.0}, add_to_summary=fail)
    assert client.get_run((out / "mlflow_run_id").read_text().strip()).info.status == "FAILED"


@pytest.mark.parametrize("command, store", [("stage", "mlruns"), ("ppo", ".")])
def test_overwrite_removes_what_the_trackers_wrote(tmp_path, monkeypatch, command, store):
    """Everything the trackers wrote in the run folder (W&B's folder, the run-id files, an MLflow
    folder under it or the MLflow store in the folder itself) goes with overwrite=true; the user's
    own file stays."""
    import importlib.util

    from rlhf_dist.config.ppo import PPOConfig
    from rlhf_dist.recipes.ppo_checkpoint import prepare_ppo_folder
    from rlhf_dist.recipes.train_stage import prepare_stage_folder

    if importlib.util.find_spec("wandb"):
        monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    log_cfg = LogConfig(mlflow_uri=str(out / store), mlflow_experiment="trk-test",
                        wandb=importlib.util.find_spec("wandb") is not None)
    write_run(out, log_cfg, report=False)
    (out / "notes.txt").write_text("mine")
    written = {p.name for p in out.iterdir()}
    assert {"mlflow_run_id", "notes.txt"} | ({"wandb", "wandb_run_id"} if log_cfg.wandb else set()) <= written
    assert (out / store / "mlflow.db").is_file()
    if command == "stage":
        assert prepare_stage_folder(SFTConfig(out=str(out), overwrite=True, log=log_cfg)) is False
    else:
        assert prepare_ppo_folder(PPOConfig(out=str(out), overwrite=True, log=log_cfg)) is False
    assert [p.relative_to(out).as_posix() for p in out.rglob("*")] == ["notes.txt"]
