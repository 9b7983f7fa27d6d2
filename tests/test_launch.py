"""Acceptance test of `launch/submit.sh`: a local Ray cluster (`ray start --head`, token
authentication on), then the tiny PPO run submitted with `ray job submit` in three resource
splits; each job must exit 0 and leave a complete run folder.

The cluster runs in its own temp dir with explicit ports, so it does not meet the in-process
`ray.init` of other tests (Ray records a `ray start` cluster in <temp dir>/ray_current_cluster,
and a plain `ray.init()` would join the one recorded in the default /tmp/ray). It is torn down by
ending exactly its own processes (those naming its temp dir, and their descendants): a blanket
`ray stop --force` would also kill every other Ray instance of this user on the machine, e.g. an
in-process cluster of a test running beside this one. `RAY_ADDRESS` is only set in the
subprocesses' environment, never in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUBMIT = REPO / "launch" / "submit.sh"
VENV_BIN = Path(sys.executable).parent  # the environment the cluster runs in (rlhf-dist installed)


def _ray_cli() -> str | None:
    local = VENV_BIN / "ray"
    return str(local) if local.exists() else shutil.which("ray")


RAY = _ray_cli()
needs_ray_cli = pytest.mark.skipif(RAY is None, reason="the `ray` CLI is not installed (pip install 'ray[default]')")


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process we can read (Linux /proc)."""
    procs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        procs[int(entry.name)] = (ppid, cmd)
    return procs


def _cluster_pids(temp_dir: str) -> set[int]:
    """The cluster's processes: those whose command line names its temp dir (gcs_server, raylet,
    dashboard, monitors) and all their descendants (agents, workers, job drivers)."""
    procs = _processes()
    found = {pid for pid, (_, cmd) in procs.items() if temp_dir in cmd}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    found.discard(os.getpid())
    return found


def _stop_cluster(temp_dir: str, ray: str, env: dict) -> None:
    if not Path("/proc").is_dir():  # not Linux: no way to pick out our processes; stop all of Ray
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
        return
    # SIGTERM first (workers and job drivers exit on it), then SIGKILL (what `ray stop --force`
    # sends): gcs_server, raylet and some agents ignore SIGTERM. The first list is kept, since a
    # process whose parent died is no longer found as a descendant.
    pids: set[int] = set()
    for sig, wait_s in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        pids = {p for p in pids if _alive(p)} | _cluster_pids(temp_dir)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = {p for p in pids if _alive(p)}
        if not pids:
            break


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _start_head(env: dict) -> tuple[str, int, str]:
    """`ray start --head` on 127.0.0.1 in a fresh temp dir with free ports: (temp dir, dashboard
    port, error text or ""). A head that failed to start is torn down before returning."""
    # A short temp dir: Ray's socket paths (<temp>/session_<date>_<pid>/sockets/plasma_store)
    # must stay under the 107-byte limit of Unix sockets.
    temp_dir = tempfile.mkdtemp(prefix="rlhf-ray-", dir="/tmp")
    gcs, dashboard, agent, client, metrics = _free_ports(5)
    cmd = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dashboard}", f"--port={gcs}", f"--dashboard-agent-listen-port={agent}",
           f"--ray-client-server-port={client}", f"--metrics-export-port={metrics}", "--num-cpus=4",
           "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    try:
        started = subprocess.run(cmd, env=env, cwd=temp_dir, capture_output=True, text=True, timeout=180)
        error = "" if started.returncode == 0 else f"exit {started.returncode}: {started.stdout[-1500:]}\n{started.stderr[-1500:]}"
    except subprocess.TimeoutExpired:
        error = "ray start took over 180 s"
    if error:
        _stop_cluster(temp_dir, RAY, env)
        shutil.rmtree(temp_dir, ignore_errors=True)
    return temp_dir, dashboard, error


@pytest.fixture(scope="module")
def ray_cluster():
    """A local head node: (dashboard address, environment for the submitting client)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    # The cluster's `python` is this environment's: like a node with rlhf-dist installed.
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "token"
    errors = []
    for _ in range(3):  # on a busy machine the raylet can miss Ray's fixed 30 s start-up window
        temp_dir, dashboard, error = _start_head(env)
        if not error:
            break
        errors.append(error)
    else:
        pytest.fail("ray start --head failed 3 times:\n" + "\n---\n".join(errors))
    try:
        client_env = dict(env, RAY_ADDRESS=f"http://127.0.0.1:{dashboard}")
        yield client_env["RAY_ADDRESS"], client_env
    finally:
        _stop_cluster(temp_dir, RAY, env)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _submit(args: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SUBMIT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@needs_ray_cli
@pytest.mark.parametrize("workers,ranks", [(2, 2), (1, 2), (2, 1)], ids=["2workers-2ranks", "1worker-2ranks", "2workers-1rank"])
@pytest.mark.slow
def test_submit_tiny_ppo(ray_cluster, ppo_models, tmp_path, workers, ranks):
    import pyarrow.compute as pc

    from rlhf_dist.buffer import read_trajectories

    _, env = ray_cluster
    sft, rm, data = ppo_models
    run = tmp_path / "run"
    iterations, prompts = 2, 16
    result = _submit(["configs/tiny.yaml", f"sft={sft}", f"reward_model={rm}", f"data={data}", f"out={run}",
                      f"iterations={iterations}", f"prompts_per_iteration={prompts}", "ppo.minibatch_size=8",
                      "eval_prompts=8", "learner.micro_batch_size=4", f"rollout.num_workers={workers}",
                      f"learner.num_ranks={ranks}"], env, timeout=600)
    output = result.stdout[-6000:] + "\n" + result.stderr[-4000:]
    assert result.returncode == 0, output
    assert "job id: " in result.stdout and "ray job logs -f" in result.stdout, output
    # The job's driver joined this cluster (Ray sets RAY_ADDRESS for job drivers): no Ray of its own.
    assert "Connected to Ray cluster" in result.stdout and "Started a local Ray instance" not in result.stdout, output

    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == iterations
    table = read_trajectories(run / "trajectories")
    assert table.num_rows == iterations * prompts
    keys = list(zip(table.column("iteration").to_pylist(), table.column("prompt_id").to_pylist(),
                    table.column("sample_index").to_pylist()))
    assert len(set(keys)) == len(keys), "duplicate (iteration, prompt_id, sample_index) rows"
    assert sorted(set(table.column("iteration").to_pylist())) == list(range(iterations))
    assert len(pc.unique(table.column("worker_id"))) == workers


def test_submit_usage_errors(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    no_address = _submit(["configs/tiny.yaml"], env, timeout=60)
    assert no_address.returncode != 0
    assert "RAY_ADDRESS is not set" in no_address.stderr
    missing = _submit([str(tmp_path / "nope.yaml")], dict(env, RAY_ADDRESS="http://127.0.0.1:1"), timeout=60)
    assert missing.returncode != 0
    assert "config file not found" in missing.stderr
