"""The entry point of an env worker process (see pool.py). Spawn re-imports this module in every
worker, so it imports only the standard library and the protocol.

Messages, each one pickle over the pipe:
  worker -> parent at start:  ("ready", stop strings) or ("load_error", one-line message)
  parent -> worker:           ("reset", None, prompt) or ("step", state, text); None: exit
  worker -> parent:           ("ok", state, observation, reward, done) or ("fail", failure, error)
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
from multiprocessing.connection import Connection, wait

from rlhf_dist.envs.protocol import BadEnvReturn, check_step_result, env_stop, load_env, short_repr

ERROR_CHARS = 300


def serve(conn: Connection, spec: str) -> None:
    """Load the env named by `spec` once, then answer calls until the parent closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _exit_with_parent()
    try:
        env = load_env(spec)
    except Exception as exc:  # EnvSpecError already reads "bad env spec ..."
        message = str(exc) if str(exc).startswith("bad env spec") else f"bad env spec {spec!r}: {short_repr(exc)}"
        conn.send(("load_error", message))
        return
    conn.send(("ready", env_stop(env)))
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):  # the parent closed the pipe or died
            return
        try:
            message = pickle.loads(data)
        except Exception as exc:
            conn.send_bytes(_reply(("fail", "env_bad_return", f"the state cannot be unpickled: {short_repr(exc)}")))
            continue
        if message is None:
            return
        conn.send_bytes(_reply(_call(env, *message)))


def _call(env: object, kind: str, state: object, text: str) -> tuple:
    """One reset or step, as the reply tuple; nothing the env does escapes as an exception."""
    try:
        if kind == "reset":
            return ("ok", env.reset(text), None, 0.0, False)
        result = env.step(state, text)
    except Exception as exc:
        return ("fail", "env_error", short_repr(exc, ERROR_CHARS))
    try:
        return ("ok", state, *check_step_result(result))
    except BadEnvReturn as exc:
        return ("fail", "env_bad_return", str(exc))


def _reply(reply: tuple) -> bytes:
    """`reply` pickled; a state the env made unpicklable becomes a bad-return failure."""
    try:
        return pickle.dumps(reply)
    except Exception as exc:
        return pickle.dumps(("fail", "env_bad_return", f"the state cannot be pickled: {short_repr(exc)}"))


def _exit_with_parent() -> None:
    """Exit as soon as the parent dies, even while the env hangs in a call (then the main thread
    never gets back to the pipe to see it close)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
