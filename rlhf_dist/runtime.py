"""Run infrastructure shared by every command, each piece written once: the run folder's logs
(metrics.jsonl + TensorBoard), atomic file writes, starting or joining Ray, the vLLM CPU
environment defaults, and small console helpers (a timer, a summary table).

Imports only the standard library at module level (Ray and TensorBoard load when used), so every
layer above `config` may use it.

Run folder layout (every training command):
    config.yaml        the resolved config
    metrics.jsonl      one JSON object per logged step (train/...) and per evaluation (eval/...)
    tb/                TensorBoard events
    checkpoints/       DeepSpeed checkpoints every `save_every` steps
    model/             the final model in Hugging Face format (+ tokenizer)
    summary.json       the command's headline numbers and wall time
    wandb/, wandb_run_id, mlflow_run_id   with log.wandb / log.mlflow_uri (rlhf_dist/trackers.py), and
                       log.mlflow_uri's folder when it lies in the run folder
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

# vLLM's CPU backend (docs/stack.md, "vLLM on CPU"): a 1 GiB KV cache (without it the engine reads
# gpu_memory_utilization as a share of host RAM) and no OpenMP thread pinning, which fights other
# processes on shared machines and CI. Values already in the environment win.
VLLM_CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}


def vllm_cpu_env() -> dict[str, str]:
    """The vLLM CPU defaults, overridden by the current environment's own values."""
    return {key: os.environ.get(key, default) for key, default in VLLM_CPU_ENV.items()}


def apply_vllm_cpu_env() -> None:
    """Set the vLLM CPU defaults in this process where the environment does not set them."""
    for key, value in VLLM_CPU_ENV.items():
        os.environ.setdefault(key, value)


# With rollout.overlap the roles share the CPUs by design (the next batch is sampled and scored
# while the learner trains), and an OpenMP thread that spins while it waits burns the core that a
# preempted sibling needs: sleeping instead shortens the learner's update. A role that runs alone
# loses by it, so only the actors of an overlapped run get it (docs/stack.md, "Threads on shared
# cores"). Values already in the environment win.
SHARED_CORES_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def shared_cores_env(shared: bool) -> dict[str, str]:
    """The OpenMP settings of an actor whose cores other roles use at the same time (`shared`), else
    none; the current environment's own values win."""
    return {key: os.environ.get(key, default) for key, default in SHARED_CORES_ENV.items()} if shared else {}


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | Path, obj) -> None:
    """`obj` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2))


def stop_on_sigterm() -> None:
    """Make SIGTERM (a scheduler's preemption, `kill`) end the run like Ctrl-C: KeyboardInterrupt
    in the main thread, so `finally` blocks stop the actors and close the logs. `ray.init`
    installs its own handler (it exits with status 15), so `ensure_ray` calls this again after it."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def ensure_ray(address: str = "") -> None:
    """Connect to the given cluster, or $RAY_ADDRESS, or start Ray in-process on this machine."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # address="local": always a fresh in-process instance, even when a `ray start` cluster runs on
        # this machine (plain ray.init would try to join it and refuse num_cpus).
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    stop_on_sigterm()


class RunStopped(RuntimeError):
    """The run cannot go on (a learner rank died, restarts used up); the message is one line."""


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked; the message is one line naming it and the way out."""


def prepare_run_folder(out: str | Path, resume: str, overwrite: bool, artifacts: tuple[str, ...]) -> bool:
    """Decide, before anything is written, what to do with `out`; True when a run there continues.

    A folder holding a run (any of `artifacts`, the files and folders a run writes) is refused
    unless `resume="auto"` (continue it) or `overwrite` (start over: those artifacts are removed,
    nothing else in the folder is touched)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"out={out}: is a file, not a folder")
    held = [name for name in artifacts if (out / name).exists()]
    if not held:
        return False
    if overwrite:
        for name in held:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return False
    if resume == "auto":
        return True
    raise RunFolderError(f"out={out} already holds a run ({held[0]}): give resume=auto to continue it "
                         "or overwrite=true to start over")


CHECKPOINT_STATE = "state.json"  # written last: a checkpoint without it is incomplete


def latest_checkpoint(root: str | Path) -> tuple[Path, dict] | None:
    """(folder, state) of the newest complete checkpoint under `root` (folders named so that they
    sort by step, each with a readable state.json); incomplete or corrupt ones are skipped with a line."""
    root = Path(root)
    for folder in sorted((p for p in root.glob("*") if p.is_dir() and not p.name.startswith(".")), reverse=True):
        try:
            return folder, json.loads((folder / CHECKPOINT_STATE).read_text())
        except (OSError, ValueError) as e:
            print(f"   skipping checkpoint {folder}: incomplete or corrupt ({type(e).__name__})", flush=True)
    return None


@contextmanager
def new_checkpoint(root: str | Path, name: str, state: dict, keep: int):
    """Write a checkpoint atomically: the caller fills the yielded temporary folder, then `state`
    goes in last and the folder is renamed to `root/name`; only the newest `keep` are kept."""
    root = Path(root)
    tmp = root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    write_json(tmp / CHECKPOINT_STATE, state)
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    complete = sorted(p for p in root.glob("*") if p.is_dir() and not p.name.startswith("."))
    for old in complete[: max(0, len(complete) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


class RunLog:
    """metrics.jsonl + TensorBoard of one run folder, one call per record, and the experiment
    trackers (W&B, MLflow: rlhf_dist/trackers.py) it forwards the numbers to.

    `resume_step`: the run continues from a checkpoint taken at that step: the records after it
    (written before the run stopped) are dropped from both logs, so no row is duplicated or missing.

    Trackers: started here (they log the config), given every record's numbers, and ended by
    `finish(summary, files)` after `close()`, or by `close()` itself when an exception is on its
    way out (status FAILED, KILLED for Ctrl-C); a tracker that raises is dropped with one warning
    line and the local logs go on."""

    def __init__(self, out: str | Path, resume_step: int | None = None, trackers: list | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        out = Path(out)
        if resume_step is None:
            # A new run writes its logs afresh: an old run's events would interleave with this one's.
            shutil.rmtree(out / "tb", ignore_errors=True)
            self.file = (out / "metrics.jsonl").open("w")
            self.tb = SummaryWriter(str(out / "tb"))
        else:
            path = out / "metrics.jsonl"
            kept = [line for line in (path.read_text().splitlines() if path.exists() else [])
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            write_text_atomic(path, "".join(line + "\n" for line in kept))
            self.file = path.open("a")
            self.tb = SummaryWriter(str(out / "tb"), purge_step=resume_step + 1)
        self.trackers = list(trackers or [])
        self._each("start", resume_step is not None)
        if self.trackers:
            import atexit

            atexit.register(self._end_trackers, "FAILED")  # a caller that never reached finish()

    def _each(self, method: str, *args) -> None:
        """Call `method` on every tracker; one that raises is dropped with one warning line."""
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as e:  # noqa: BLE001 - a tracker never ends a run
                reason = " ".join(f"{type(e).__name__}: {e}".split())
                print(f"warning: {tracker.name} tracker disabled: {reason[:300]}", flush=True)
                self.trackers.remove(tracker)

    def _end_trackers(self, status: str) -> None:
        self._each("end", status)
        self.trackers = []

    def write(self, step: int, record: dict) -> None:
        self.file.write(json.dumps({"step": step, **record}) + "\n")
        self.file.flush()
        numbers = {}
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tb.add_scalar(key, value, step)
                numbers[key] = float(value)
        if numbers:
            self._each("log_metrics", step, numbers)

    def finish(self, summary: dict, files: list[str | Path] = ()) -> None:
        """Give the trackers the run's summary (headline numbers, and as summary.json) and the
        `files` that exist (e.g. report.html), then end them as FINISHED."""
        self._each("finish", summary, [Path(f) for f in files if Path(f).is_file()])
        self._end_trackers("FINISHED")

    def close(self) -> None:
        import sys

        self.file.close()
        self.tb.close()
        error = sys.exc_info()[0]  # set when called from a `finally` that an exception passes through
        if error is not None:
            self._end_trackers("KILLED" if issubclass(error, KeyboardInterrupt) else "FAILED")


class Timer:
    """Wall time of named phases: `with timer("rollout"): ...` adds to `timer.seconds["rollout"]`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def metrics(self, prefix: str = "time/") -> dict[str, float]:
        """{prefix + name + "_s": seconds}, in the order the phases first ran."""
        return {f"{prefix}{name}_s": s for name, s in self.seconds.items()}


@contextmanager
def stage(name: str, timings: dict[str, float]):
    """Print a stage header and its wall time; record the time in `timings`."""
    print(f"\n== {name}", flush=True)
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = time.perf_counter() - start
    print(f"   done in {timings[name]:.1f} s", flush=True)


def print_table(rows: list[tuple[str, str]], title: str) -> None:
    """A two-column table on the console: key, value."""
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}\n" + "-" * (width + 30))
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
