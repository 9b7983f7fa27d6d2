"""The environment protocol: `load_env("module:attr")`, the stop strings and the check of a step's
return. Standard library only (and the spec resolver of the tasks layer)."""

from __future__ import annotations

import math
import numbers

from rlhf_dist.tasks.base import SpecError, resolve_spec

REQUIRED = ("reset", "step")
STEP_SHAPE = "(observation: str | None, reward: float, done: bool)"


class EnvSpecError(SpecError):
    """An `env` spec that cannot be resolved or names no environment; the message is one line."""


class BadEnvReturn(ValueError):
    """A step returned something other than (observation, reward, done); the message is one line."""


def short_repr(value: object, limit: int = 120) -> str:
    """repr(value) on one line, cut to `limit` characters (values come from untrusted code)."""
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not hide the real problem
        text = f"<unprintable {type(value).__name__}: {exc!r}>"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def missing_parts(obj: object) -> list[str]:
    """Names of the protocol's methods that `obj` lacks or has as non-callables."""
    return [name for name in REQUIRED if not callable(getattr(obj, name, None))]


def load_env(spec: str) -> object:
    """Resolve "module:attr" or "path/to/file.py:attr" to an environment object.

    `attr` may be an instance, a class (called with no arguments) or a zero-argument factory
    (called when the object itself lacks reset/step). Raises EnvSpecError in one line.
    """
    obj = resolve_spec(spec, "env", EnvSpecError)
    attr = spec.rpartition(":")[2]
    if isinstance(obj, type) or (missing_parts(obj) and callable(obj)):
        try:
            obj = obj()
        except Exception as exc:  # a failing constructor is a bad spec, reported in one line
            raise EnvSpecError(f"bad env spec {spec!r}: calling {attr!r} failed: {short_repr(exc, 300)}") from None
    missing = missing_parts(obj)
    if missing:
        raise EnvSpecError(f"bad env spec {spec!r}: the object lacks {', '.join(missing)}")
    stop = getattr(obj, "stop", None)
    if stop is not None and not (
        isinstance(stop, (list, tuple)) and all(isinstance(s, str) and s for s in stop)
    ):
        raise EnvSpecError(
            f"bad env spec {spec!r}: 'stop' must be a list of non-empty strings, got {short_repr(stop)}"
        )
    return obj


def env_stop(env: object) -> list[str]:
    """The strings that end a model turn as EOS does (empty when the env has no `stop`)."""
    return list(getattr(env, "stop", None) or [])


def check_step_result(result: object) -> tuple[str | None, float, bool]:
    """`result` of env.step as (observation, reward, done) with plain types; BadEnvReturn otherwise.

    The reward may be any real number but a bool (numpy floats included) and must be finite; done
    must be a bool (numpy's bool_ too).
    """
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        raise BadEnvReturn(f"step returned {short_repr(result)} ({type(result).__name__}), expected {STEP_SHAPE}")
    observation, reward, done = result
    if observation is not None and not isinstance(observation, str):
        raise BadEnvReturn(
            f"step returned observation {short_repr(observation)} ({type(observation).__name__}), "
            f"expected a str or None"
        )
    if isinstance(reward, bool) or not isinstance(reward, numbers.Real):
        raise BadEnvReturn(f"step returned reward {short_repr(reward)} ({type(reward).__name__}), expected a float")
    reward = float(reward)
    if not math.isfinite(reward):
        raise BadEnvReturn(f"reward {reward} is not finite")
    if not (isinstance(done, bool) or _is_numpy_bool(done)):
        raise BadEnvReturn(f"step returned done {short_repr(done)} ({type(done).__name__}), expected a bool")
    return observation, reward, bool(done)


def _is_numpy_bool(value: object) -> bool:
    """numpy.bool_ (named "bool" since numpy 2), recognised without importing numpy."""
    return type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool")
