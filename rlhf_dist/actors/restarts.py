"""Replacing lost Ray actors: a bounded budget of replacements per role, counted in the run's
faults/* metrics, and `get_replacing`, which waits for a call and, when its actor was lost,
replaces the actor and makes the call again."""

from __future__ import annotations

import time
from collections.abc import Callable

import ray

from rlhf_dist.runtime import RunStopped


class Restarts:
    """At most `limit` replacements of one role's actors in a run; each is printed and counted."""

    def __init__(self, role: str, limit: int) -> None:
        self.role, self.limit, self.count, self.seconds = role, limit, 0, 0.0

    def metrics(self) -> dict:
        return {f"faults/{self.role}_restarts": self.count, f"faults/{self.role}_restart_s": self.seconds}

    def replace(self, old, start: Callable[[], object], label: str, why: str, then: str = ""):
        """Kill `old` (if still there) and return `start()`, its replacement ready for calls."""
        if self.count >= self.limit:
            raise RunStopped(f"{label} {why}; {self.limit} replacements used (max_restarts): stopping")
        begin = time.perf_counter()
        try:
            ray.kill(old, no_restart=True)
        except Exception:  # already gone
            pass
        new = start()
        seconds = time.perf_counter() - begin
        self.count += 1
        self.seconds += seconds
        print(f"   {label} {why}: replaced in {seconds:.1f} s{then}", flush=True)
        return new


def get_replacing(ref, replace: Callable[[str], None], call_again: Callable[[], object]):
    """`ray.get(ref)`; while the actor behind it is lost: `replace(why)`, then `call_again()`."""
    while True:
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as e:
            replace(f"lost ({type(e).__name__})")
            ref = call_again()
