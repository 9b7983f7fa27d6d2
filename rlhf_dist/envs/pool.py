"""EnvPool: environment calls in separate worker processes.

Environments are untrusted code. One that raises, hangs, returns garbage or kills its process must
never hang or crash the caller (a rollout worker inside a Ray actor), so every call runs in a
spawned worker with a deadline, and whatever goes wrong comes back as an EnvResult's `failure`.
"""

from __future__ import annotations

import multiprocessing
import pickle
import signal
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

from rlhf_dist.envs.protocol import EnvSpecError, env_stop, load_env, short_repr
from rlhf_dist.envs.worker import serve
from rlhf_dist.tasks.base import absolute_spec

FAILURES = ("env_error", "env_timeout", "env_bad_return", "env_crash")


@dataclass
class EnvResult:
    """The outcome of one reset or step. On a failure, `state` is the state that was sent (None
    for reset) and observation/reward/done keep their defaults."""

    state: object = None  # the state after the call (reset: the new state)
    observation: str | None = None
    reward: float = 0.0
    done: bool = False
    failure: str | None = None  # None, or one of FAILURES
    error: str = ""  # one line: what went wrong


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection

    def kill(self) -> None:
        """Stop the process whatever it is doing (it may be stuck in env code)."""
        self.conn.close()
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(0.5)
        if self.process.is_alive():
            self.process.kill()
        self.process.join()


def exit_reason(process: multiprocessing.process.BaseProcess) -> str:
    """'exited with code 3' / 'was killed by SIGSEGV' for a dead worker."""
    process.join(1.0)
    code = process.exitcode
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class EnvPool:
    """`workers` processes, each serving the environment named by `spec` (see rlhf_dist.envs).

    A batch of calls runs in parallel, one call in flight per worker, results in input order. Each
    call has `timeout_s` from when its worker receives it; a worker that times out or dies is
    replaced (`restarts` counts them). Not thread-safe: one batch at a time.
    """

    def __init__(self, spec: str, workers: int = 2, timeout_s: float = 30.0, start_timeout_s: float = 120.0,
                 *, timeout_setting: str = ""):
        if workers < 1:
            raise ValueError(f"EnvPool needs at least one worker, got {workers}")
        self.stop: list[str] = env_stop(load_env(spec))  # a clean message before any process starts
        self.spec = absolute_spec(spec)
        self.timeout_s = float(timeout_s)
        self.start_timeout_s = float(start_timeout_s)
        self.timeout_setting = timeout_setting  # named in timeout errors, e.g. "rollout.env_timeout_s"
        self.restarts = 0
        self._context = multiprocessing.get_context("spawn")
        self._broken = ""  # why a worker slot is empty (a replacement failed to start)
        self._workers: list[_Worker | None] = []
        self._workers = list(self._start(workers))

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        return [w.process.pid for w in self._workers if w is not None]

    def reset(self, prompts: list[str]) -> list[EnvResult]:
        """env.reset(prompt) per episode; each result's `state` is the new episode's state."""
        return self._run("reset", [(None, prompt) for prompt in prompts])

    def step(self, calls: list[tuple[object, str]]) -> list[EnvResult]:
        """env.step(state, text) per (state, text); each result's `state` is the state after the
        step (changes the env made in place included)."""
        return self._run("step", list(calls))

    def close(self) -> None:
        """Stop all workers; safe to call twice."""
        workers = [w for w in self._workers if w is not None]
        self._workers = []
        for w in workers:
            try:
                w.conn.send_bytes(pickle.dumps(None))
            except OSError:  # already dead
                pass
        for w in workers:
            w.process.join(1.0)
            w.kill()

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, kind: str, calls: list[tuple[object, str]]) -> list[EnvResult]:
        """Run `calls` over the workers: a queue, one call in flight per worker, per-call deadlines."""
        if not self._workers:
            raise RuntimeError("the EnvPool is closed")
        self._refill()
        results: list[EnvResult | None] = [None] * len(calls)
        queue = deque(range(len(calls)))
        busy: dict[int, tuple[int, float]] = {}  # worker slot -> (call index, deadline)
        while queue or busy:
            for slot, worker in enumerate(self._workers):
                if queue and worker is not None and slot not in busy:
                    i = queue.popleft()
                    state, text = calls[i]
                    try:
                        data = pickle.dumps((kind, state, text))
                    except Exception as exc:
                        results[i] = EnvResult(state, failure="env_bad_return",
                                               error=f"the state cannot be pickled: {short_repr(exc)}")
                        continue
                    try:
                        worker.conn.send_bytes(data)
                    except OSError:  # it died while idle
                        results[i] = self._crashed(slot, kind, state)
                        continue
                    busy[slot] = (i, time.monotonic() + self.timeout_s)
            if not busy:
                if queue:  # no worker left to run them
                    for i in queue:
                        results[i] = EnvResult(calls[i][0], failure="env_crash",
                                               error=f"no env worker is running: {self._broken}")
                    queue.clear()
                break
            timeout = max(0.0, min(deadline for _, deadline in busy.values()) - time.monotonic())
            ready = wait([self._workers[slot].conn for slot in busy], timeout)
            for slot in list(busy):
                worker = self._workers[slot]
                i, deadline = busy[slot]
                if worker.conn in ready or worker.conn.poll(0):
                    results[i] = self._receive(slot, kind, calls[i][0])
                elif time.monotonic() >= deadline:
                    results[i] = self._timed_out(slot, kind, calls[i][0])
                else:
                    continue
                del busy[slot]
        return results

    def _receive(self, slot: int, kind: str, state: object) -> EnvResult:
        """The answer of the worker in `slot`, or a crash if its pipe closed."""
        try:
            reply = pickle.loads(self._workers[slot].conn.recv_bytes())
        except (EOFError, OSError):
            return self._crashed(slot, kind, state)
        except Exception as exc:  # the env's state cannot be rebuilt here
            return EnvResult(state, failure="env_bad_return", error=f"the state cannot be unpickled: {short_repr(exc)}")
        if reply[0] == "ok":
            _, new_state, observation, reward, done = reply
            return EnvResult(new_state, observation, reward, done)
        _, failure, error = reply
        return EnvResult(state, failure=failure, error=error)

    def _timed_out(self, slot: int, kind: str, state: object) -> EnvResult:
        setting = f" ({self.timeout_setting})" if self.timeout_setting else ""
        self._replace(slot)
        return EnvResult(state, failure="env_timeout", error=f"{kind} took longer than {self.timeout_s} s{setting}")

    def _crashed(self, slot: int, kind: str, state: object) -> EnvResult:
        reason = exit_reason(self._workers[slot].process)
        self._replace(slot)
        return EnvResult(state, failure="env_crash", error=f"the env worker {reason} during {kind}")

    def _replace(self, slot: int) -> None:
        """Kill the worker in `slot` and start a fresh one (the slot stays empty if that fails)."""
        self._workers[slot].kill()
        self._workers[slot] = None
        self.restarts += 1
        try:
            self._workers[slot] = self._start(1)[0]
        except EnvSpecError as exc:
            self._broken = str(exc)

    def _refill(self) -> None:
        """Retry starting workers whose replacement failed earlier."""
        for slot, worker in enumerate(self._workers):
            if worker is None:
                try:
                    self._workers[slot] = self._start(1)[0]
                except EnvSpecError as exc:
                    self._broken = str(exc)

    def _start(self, count: int) -> list[_Worker]:
        """Start `count` workers and wait until each has loaded the env (EnvSpecError if one fails)."""
        started = []
        for _ in range(count):
            parent_conn, child_conn = self._context.Pipe()
            process = self._context.Process(target=serve, args=(child_conn, self.spec), name="env-worker", daemon=True)
            process.start()
            child_conn.close()  # so that the worker's death reads as EOF here
            started.append(_Worker(process, parent_conn))
        pending = {w.conn: w for w in started}
        deadline = time.monotonic() + self.start_timeout_s
        try:
            while pending:
                ready = wait(list(pending), max(0.0, deadline - time.monotonic()))
                if not ready:
                    raise EnvSpecError(f"bad env spec {self.spec!r}: an env worker did not load it "
                                       f"within {self.start_timeout_s} s")
                for conn in ready:
                    worker = pending.pop(conn)
                    try:
                        kind, payload = conn.recv()
                    except (EOFError, OSError):
                        raise EnvSpecError(f"bad env spec {self.spec!r}: an env worker "
                                           f"{exit_reason(worker.process)} while loading it") from None
                    if kind != "ready":
                        raise EnvSpecError(payload)
                    self.stop = payload
        except BaseException:
            for worker in started:
                worker.kill()
            raise
        return started
