"""Layering: a module never imports a module of a higher layer, and light layers never load the
heavy libraries.

The layer order, lowest first (README.md, "Layers", says the same):
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

LAYERS = ["config", "runtime", "trackers", "tasks", "envs", "algo", "models", "data", "buffer", "engines", "actors", "evaluation", "recipes", "cli"]
__doc__ += "\n    " + " < ".join(LAYERS) + "\n"

PACKAGE = Path(__file__).resolve().parents[1] / "rlhf_dist"


def layer_of(module: str) -> int | None:
    """Index in LAYERS of `rlhf_dist.<layer>...`; None for the package root and for other libraries."""
    parts = module.split(".")
    if parts[0] != "rlhf_dist" or len(parts) < 2:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, at any depth (function-level imports
    included), relative imports resolved against `module`."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if layer_of(name) is None:  # `from rlhf_dist import recipes`: the names are the modules
                out += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
            else:
                out.append((node.lineno, name))
    return out


def upward_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every import in `source` of a layer above `module`'s own layer, as 'module:line -> imported'."""
    own = layer_of(module)
    if own is None:
        return []
    bad = []
    for line, name in imported_modules(source, module, is_package):
        target = layer_of(name)
        if target is not None and target > own:
            bad.append(f"{module}:{line} ({LAYERS[own]}) imports {name} ({LAYERS[target]})")
    return sorted(set(bad))


def package_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_package_belongs_to_a_layer():
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in package_modules()} - {"__init__"}
    assert tops <= set(LAYERS), f"not in LAYERS: {sorted(tops - set(LAYERS))}"


def test_no_module_imports_a_higher_layer():
    bad = []
    for path in package_modules():
        bad += upward_imports(path.read_text(), module_name(path), path.name == "__init__.py")
    assert not bad, "imports of a higher layer:\n" + "\n".join(bad)


@pytest.mark.parametrize("source, module", [
    ("from rlhf_dist.recipes.ppo import train_ppo\n", "rlhf_dist.evaluation.evaluate"),
    ("def f():\n    import rlhf_dist.actors.rollout\n", "rlhf_dist.engines.scoring"),
    ("from ..evaluation import metrics\n", "rlhf_dist.data.sampling"),
    ("from rlhf_dist import recipes\n", "rlhf_dist.algo.gae"),
])
def test_the_check_catches_a_planted_upward_import(source, module):
    assert len(upward_imports(source, module)) == 1


@pytest.mark.parametrize("source, module", [
    ("from rlhf_dist.algo import gae\nimport torch\n", "rlhf_dist.engines.ppo"),
    ("from .readers import DataError\n", "rlhf_dist.data.sampling"),
    ("from rlhf_dist.config import ConfigError\n", "rlhf_dist.tasks.base"),
])
def test_the_check_allows_same_or_lower_layers(source, module):
    assert upward_imports(source, module) == []


# Heavy libraries each light module may load at import time (checked in a fresh interpreter).
HEAVY = ["torch", "transformers", "vllm", "ray", "deepspeed", "pyarrow"]
ALLOWED = {
    "rlhf_dist": set(),
    "rlhf_dist.config": set(),
    "rlhf_dist.runtime": set(),
    "rlhf_dist.trackers": set(),
    "rlhf_dist.tasks.base": set(),
    "rlhf_dist.tasks.instruct": set(),
    "rlhf_dist.tasks.labeler": set(),
    "rlhf_dist.tasks.generate": set(),
    "rlhf_dist.envs": set(),  # spawned environment processes start in a fraction of a second
    "rlhf_dist.envs.worker": set(),
    "rlhf_dist.algo": {"torch"},
    "rlhf_dist.models": {"torch", "transformers"},
    "rlhf_dist.data": {"torch"},
    "rlhf_dist.buffer": {"torch", "pyarrow"},
    "rlhf_dist.engines.vllm_rollout": {"torch"},
    "rlhf_dist.engines.weight_sync": {"torch"},
    "rlhf_dist.evaluation.metrics": set(),
    "rlhf_dist.evaluation.sample_and_score": set(),
    "rlhf_dist.cli": set(),
}


def loaded_heavy_modules(module: str) -> set[str]:
    code = (
        f"import sys, json, {module}\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return set(json.loads(res.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_module_imports_only_its_libraries(module):
    extra = loaded_heavy_modules(module) - ALLOWED[module]
    assert not extra, f"importing {module} pulled in {sorted(extra)}"


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (at any depth, function-level imports included)."""
    modules = {module_name(p): p for p in package_modules()}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for _, imported in imported_modules(path.read_text(), name, path.name == "__init__.py"):
            parts = imported.split(".")
            while parts and ".".join(parts) not in modules:  # `from pkg.mod import name` -> pkg.mod
                parts.pop()
            if parts and ".".join(parts) != name:
                deps.add(".".join(parts))
        graph[name] = deps
    return graph


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        path.pop()
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_no_import_cycles_between_modules():
    """Two modules that import each other (even inside functions) are one thing split in two, or a
    helper in the wrong place (the models pipeline of PPO lives apart from the stages it calls)."""
    cycle = import_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycle(graph) == ["a", "b", "c", "a"]
    assert import_cycle({"a": {"b"}, "b": set()}) is None
