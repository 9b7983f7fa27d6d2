"""Environments: multi-turn episodes where untrusted user code answers each model turn.

An environment is any object with

    reset(prompt: str) -> state                      # any picklable value
    step(state, text: str) -> (observation, reward, done)
        # text: the model's latest turn; observation (str | None): what the environment appends
        # before the model's next turn; reward: float; done: bool. step may change state in place.
    stop: list[str]                                  # optional: strings that end a turn as EOS does

named by `env=module:attr` or `env=path/to/file.py:attr`, where `attr` is an instance, a class
(called with no arguments) or a zero-argument factory. An environment imports nothing from
rlhf_dist, e.g. a guessing game in my_env.py (`env=my_env.py:Guess`):

    class Guess:
        stop = ["\\n"]

        def reset(self, prompt):
            return {"secret": len(prompt) % 10, "tries": 0}

        def step(self, state, text):
            state["tries"] += 1
            if text.strip() == str(state["secret"]):
                return None, 1.0, True
            if state["tries"] == 3:
                return None, 0.0, True
            return "wrong, try again:", 0.0, False

protocol.py  load_env, env_stop, check_step_result and their errors
pool.py      EnvPool: calls run in worker processes with deadlines; failures come back as results
worker.py    the worker processes' entry point
Standard library only.
"""

from rlhf_dist.envs.pool import FAILURES, EnvPool, EnvResult
from rlhf_dist.envs.protocol import BadEnvReturn, EnvSpecError, check_step_result, env_stop, load_env

__all__ = [
    "FAILURES", "BadEnvReturn", "EnvPool", "EnvResult", "EnvSpecError", "check_step_result", "env_stop", "load_env",
]
