"""What the actors of a run ask of the Ray cluster, checked against what it has before any actor
starts: a request that can never be placed would otherwise wait forever (Ray queues an actor until
resources appear). Placement that still waits (e.g. on memory) times out naming the role.

    check_resources([Role("learner rank", 2, cpus=1.0), Role("rollout worker", 1, cpus=0.25, gpus=1)])
"""

from __future__ import annotations

from dataclasses import dataclass

import ray


class ResourceError(ValueError):
    """A request the cluster cannot meet; the message is one line naming what was asked and what exists."""


@dataclass(frozen=True)
class Role:
    """`count` actors of one kind, each asking for `cpus` and `gpus` (Ray's logical resources)."""

    name: str
    count: int
    cpus: float = 0.0
    gpus: float = 0.0

    def describe(self) -> str:
        each = f"{self.cpus:g} CPU" + (f" + {self.gpus:g} GPU" if self.gpus else "")
        return f"{self.count} {self.name}{'s' if self.count != 1 else ''} x {each}"


def _alive_nodes() -> list[dict]:
    return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]


def check_resources(roles: list[Role], nodes: list[dict] | None = None) -> None:
    """Raise ResourceError when the roles together need more CPUs or GPUs than the cluster's alive
    nodes have, or one actor needs more than any single node has. `nodes`: each node's resource
    totals (default: the connected Ray cluster's)."""
    nodes = _alive_nodes() if nodes is None else nodes
    have = {k: sum(n.get(k, 0.0) for n in nodes) for k in ("CPU", "GPU")}
    need = {"CPU": sum(r.count * r.cpus for r in roles), "GPU": sum(r.count * r.gpus for r in roles)}
    asked = "; ".join(r.describe() for r in roles if r.count)
    exists = f"the Ray cluster has {have['CPU']:g} CPUs and {have['GPU']:g} GPUs on {len(nodes)} node(s)"
    for key in ("GPU", "CPU"):
        if need[key] > have[key] + 1e-9:
            raise ResourceError(f"the run asks for {need[key]:g} {key}s in all ({asked}), but {exists}")
    for r in roles:
        for key, each in (("CPU", r.cpus), ("GPU", r.gpus)):
            if r.count and each > max((n.get(key, 0.0) for n in nodes), default=0.0) + 1e-9:
                raise ResourceError(f"one {r.name} asks for {each:g} {key}s, more than any node has ({exists})")


def wait_placed(refs, role: str, timeout_s: float, asked: str) -> list:
    """`ray.get(refs)` with a deadline: a role whose actors are still not placed (or not started)
    after `timeout_s` is an error naming it and what it asked for."""
    try:
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise ResourceError(f"the {role} did not start within {timeout_s:g} s (asked for {asked}): "
                            "the cluster may lack the memory or resources it needs") from None
