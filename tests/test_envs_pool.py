"""The env protocol loader and EnvPool: environments written to files, run in worker processes
that raise, hang, return garbage or die, and a parent killed under its workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rlhf_dist.envs import EnvPool, EnvSpecError, check_step_result, env_stop, load_env
from rlhf_dist.envs.protocol import BadEnvReturn

ROOT = Path(__file__).resolve().parents[1]

# Step behaviour is chosen by the model's text, so that one batch mixes good and bad calls.
ENVS = '''
import multiprocessing, os, time

class Counter:
    stop = ["</a>"]

    def reset(self, prompt):
        if prompt == "boom":
            raise KeyError("no reset")
        name, _, delay = prompt.partition(":")
        return {"n": 0, "name": name, "delay": float(delay or 0)}

    def step(self, state, text):
        if text == "boom":
            raise ValueError("boom")
        if text == "hang":
            time.sleep(60)
        if text == "crash":
            os._exit(3)
        if text == "unpicklable":
            state["f"] = lambda: 0
            return None, 0.0, False
        if text.startswith("garbage:"):
            return GARBAGE[int(text[8:])]
        time.sleep(state["delay"])
        state["n"] += 1
        return f"n={state['n']}", 1.0, state["n"] == 3

GARBAGE = ["abc", (None, "x", True), (None, float("nan"), False), (1, 0.0, False), (None, 1.0)]
counter = Counter()

def make_counter():
    return Counter()

class NoStep:
    def reset(self, prompt):
        return None

class BadStop(Counter):
    stop = ["</a>", ""]

class NoStopAttr:
    def reset(self, prompt):
        return 0
    def step(self, state, text):
        return None, 0.0, True

def broken_factory():
    raise RuntimeError("cannot build")

class WorkerOnly(Counter):
    def __init__(self):
        if multiprocessing.parent_process() is not None:
            raise OSError("no GPU in the worker")
'''


@pytest.fixture(scope="module")
def env_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("envs") / "my_envs.py"
    path.write_text(ENVS)
    return str(path)


@pytest.fixture
def pool(env_file):
    with EnvPool(f"{env_file}:Counter", workers=2, timeout_s=1.0) as p:
        yield p


def test_counter_episodes_run_in_parallel_and_come_back_in_input_order(pool):
    names = ["a:0.3", "b", "c:0.1", "d", "e"]
    states = [r.state for r in pool.reset(names)]
    assert [s["name"] for s in states] == ["a", "b", "c", "d", "e"]
    for n in (1, 2, 3):
        results = pool.step([(s, f"turn {n}") for s in states])
        assert [r.failure for r in results] == [None] * 5
        assert [r.state["name"] for r in results] == ["a", "b", "c", "d", "e"]  # the slow "a" did not reorder
        assert [r.state["n"] for r in results] == [n] * 5  # the env's in-place change came back
        assert [r.observation for r in results] == [f"n={n}"] * 5
        assert [r.reward for r in results] == [1.0] * 5
        assert [r.done for r in results] == [n == 3] * 5
        states = [r.state for r in results]
    assert pool.stop == ["</a>"] and pool.restarts == 0


def test_two_workers_run_two_calls_at_a_time(pool):
    states = [r.state for r in pool.reset(["x:0.4"] * 4)]
    start = time.monotonic()
    results = pool.step([(s, "go") for s in states])
    elapsed = time.monotonic() - start
    assert all(r.failure is None for r in results)
    assert 0.75 < elapsed < 1.5  # 4 x 0.4 s: serial would be 1.6 s, four at once 0.4 s


def test_an_env_exception_is_an_env_error_and_the_worker_keeps_serving(pool):
    pids = pool.pids
    states = [r.state for r in pool.reset(["a", "b"])]
    results = pool.step([(states[0], "boom"), (states[1], "ok")])
    assert results[0].failure == "env_error" and results[0].error == "ValueError('boom')"
    assert results[0].state == states[0]
    assert results[1].failure is None and results[1].state["n"] == 1
    reset = pool.reset(["boom"])[0]
    assert reset.failure == "env_error" and reset.error == "KeyError('no reset')" and reset.state is None
    assert pool.pids == pids and pool.restarts == 0


@pytest.mark.parametrize("text, error", [
    ("garbage:0", "step returned 'abc' (str), expected (observation: str | None, reward: float, done: bool)"),
    ("garbage:1", "step returned reward 'x' (str), expected a float"),
    ("garbage:2", "reward nan is not finite"),
    ("garbage:3", "step returned observation 1 (int), expected a str or None"),
    ("garbage:4", "step returned (None, 1.0) (tuple), expected (observation: str | None, reward: float, done: bool)"),
    ("unpicklable", "the state cannot be pickled: "),
])
def test_garbage_from_step_is_a_bad_return_and_the_worker_survives(pool, text, error):
    pids = pool.pids
    state = pool.reset(["a"])[0].state
    result = pool.step([(state, text)])[0]
    assert result.failure == "env_bad_return"
    assert result.error.startswith(error) and "\n" not in result.error
    assert pool.step([(state, "ok")])[0].observation == "n=1"
    assert pool.pids == pids and pool.restarts == 0


def test_an_unpicklable_state_from_the_caller_is_a_bad_return(pool):
    result = pool.step([({"f": lambda: 0}, "ok")])[0]
    assert result.failure == "env_bad_return" and result.error.startswith("the state cannot be pickled")


def test_a_hanging_step_times_out_while_the_rest_of_the_batch_runs(pool):
    states = [r.state for r in pool.reset(["a", "b", "c", "d"])]
    start = time.monotonic()
    results = pool.step([(states[0], "hang")] + [(s, "ok") for s in states[1:]])
    assert time.monotonic() - start < 4.0
    assert results[0].failure == "env_timeout" and results[0].error == "step took longer than 1.0 s"
    assert [r.failure for r in results[1:]] == [None] * 3
    assert [r.state["name"] for r in results[1:]] == ["b", "c", "d"]
    assert pool.restarts == 1 and len(pool.pids) == 2
    later = pool.step([(r.state, "ok") for r in results[1:]])
    assert [r.state["n"] for r in later] == [2, 2, 2]


def test_the_timeout_error_names_the_setting(env_file):
    with EnvPool(f"{env_file}:Counter", workers=1, timeout_s=0.5, timeout_setting="rollout.env_timeout_s") as p:
        result = p.step([(p.reset(["a"])[0].state, "hang")])[0]
    assert result.error == "step took longer than 0.5 s (rollout.env_timeout_s)"


def test_a_worker_that_dies_is_an_env_crash_and_is_replaced(pool):
    states = [r.state for r in pool.reset(["a", "b", "c"])]
    results = pool.step([(states[0], "ok"), (states[1], "crash"), (states[2], "ok")])
    assert results[1].failure == "env_crash" and results[1].error == "the env worker exited with code 3 during step"
    assert [results[0].state["n"], results[2].state["n"]] == [1, 1]
    assert pool.restarts == 1
    later = pool.step([(s, "ok") for s in states] + [(states[0], "crash")])
    assert [r.failure for r in later] == [None, None, None, "env_crash"]
    assert pool.restarts == 2 and len(pool.pids) == 2


def test_close_stops_the_workers_and_is_idempotent(env_file):
    p = EnvPool(f"{env_file}:Counter", workers=2)
    pids = p.pids
    p.close()
    p.close()
    assert not any(alive(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="closed"):
        p.reset(["a"])


@pytest.mark.parametrize("attr", ["Counter", "counter", "make_counter"])
def test_an_env_may_be_a_class_an_instance_or_a_factory(env_file, attr):
    env = load_env(f"{env_file}:{attr}")
    assert env_stop(env) == ["</a>"]
    assert env.step(env.reset("a"), "x") == ("n=1", 1.0, False)


def test_a_factory_env_runs_in_the_pool_and_stop_is_optional(env_file):
    with EnvPool(f"{env_file}:make_counter", workers=1) as p:
        assert p.step([(p.reset(["a"])[0].state, "x")])[0].observation == "n=1"
    with EnvPool(f"{env_file}:NoStopAttr", workers=1) as p:
        assert p.stop == []
        assert p.step([(p.reset(["a"])[0].state, "x")])[0].done is True


@pytest.mark.parametrize("spec, message", [
    ("/no/such/env.py:Env", "bad env spec '/no/such/env.py:Env': no file '/no/such/env.py'"),
    ("{file}:Missing", "bad env spec '{file}:Missing': '{file}' has no attribute 'Missing'"),
    ("{file}:NoStep", "bad env spec '{file}:NoStep': the object lacks step"),
    ("{file}:BadStop", "bad env spec '{file}:BadStop': 'stop' must be a list of non-empty strings, got ['</a>', '']"),
    ("{file}:broken_factory", "bad env spec '{file}:broken_factory': calling 'broken_factory' failed: "
                              "RuntimeError('cannot build')"),
    ("{file}", "bad env spec '{file}': expected 'module:attr' or 'path/to/file.py:attr'"),
    ("no_such_module_xyz:Env", "bad env spec 'no_such_module_xyz:Env': cannot import 'no_such_module_xyz'"),
])
def test_bad_specs_are_one_line_errors(env_file, spec, message):
    spec, message = spec.format(file=env_file), message.format(file=env_file)
    with pytest.raises(EnvSpecError) as load_error:
        load_env(spec)
    with pytest.raises(EnvSpecError) as pool_error:
        EnvPool(spec)
    for error in (load_error, pool_error):
        assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_worker_that_cannot_load_the_env_fails_the_constructor(env_file):
    with pytest.raises(EnvSpecError) as error:
        EnvPool(f"{env_file}:WorkerOnly", workers=2)
    assert str(error.value) == (f"bad env spec '{env_file}:WorkerOnly': calling 'WorkerOnly' failed: "
                                f"OSError('no GPU in the worker')")


def test_check_step_result_accepts_plain_and_numpy_values():
    assert check_step_result(("obs", 1, False)) == ("obs", 1.0, False)
    assert check_step_result([None, -0.5, True]) == (None, -0.5, True)
    np = pytest.importorskip("numpy")
    obs, reward, done = check_step_result((None, np.float32(0.25), np.bool_(True)))
    assert (reward, done) == (0.25, True) and type(reward) is float and type(done) is bool


@pytest.mark.parametrize("result, message", [
    ((None, True, False), "step returned reward True (bool), expected a float"),
    ((None, 1.0, 1), "step returned done 1 (int), expected a bool"),
    ((None, float("inf"), True), "reward inf is not finite"),
    (None, "step returned None (NoneType), expected"),
])
def test_check_step_result_rejects(result, message):
    with pytest.raises(BadEnvReturn) as error:
        check_step_result(result)
    assert str(error.value).startswith(message)


PARENT = textwrap.dedent('''
    import os, signal, sys, threading, time
    from rlhf_dist.envs import EnvPool
    pool = EnvPool(sys.argv[1], workers=2, timeout_s=60)
    state = pool.reset(["a"])[0].state
    threading.Thread(target=pool.step, args=([(state, "hang")],), daemon=True).start()
    time.sleep(0.5)  # one worker hangs in step, the other waits for a call
    print(" ".join(map(str, pool.pids)), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
''')


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie left for a non-reaping init counts as dead)."""
    try:
        import psutil
    except ImportError:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
        except OSError:
            return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_workers_exit_when_the_parent_is_killed(env_file, tmp_path):
    # Files, not pipes: workers inherit the parent's stdout, and a pipe would stay open while they live.
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        code = subprocess.run([sys.executable, "-c", PARENT, f"{env_file}:Counter"], cwd=ROOT,
                              stdout=stdout, stderr=stderr, timeout=60).returncode
    assert code == -9, err.read_text()
    pids = [int(pid) for pid in out.read_text().split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 5.0
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in pids if alive(pid)]
    for pid in survivors:  # not left behind by a failing run
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "env workers outlived their parent"
