"""Layering: a lower layer never imports a higher one (design.md).

algo (torch only) <- models (transformers) <- data <- buffer (pyarrow) <- engines (vllm, deepspeed:
lazily) <- actors (ray) <- recipes/cli.
The task plug-ins (the simulated labeler) need only the standard library.
Each check imports a module in a fresh interpreter and lists the heavy modules that got loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ["torch", "transformers", "vllm", "ray", "deepspeed", "pyarrow"]

ALLOWED = {
    "rlhf_dist": set(),
    "rlhf_dist.config": set(),
    "rlhf_dist.tasks.base": set(),
    "rlhf_dist.tasks.instruct": set(),
    "rlhf_dist.tasks.labeler": set(),
    "rlhf_dist.models": {"torch", "transformers"},
    "rlhf_dist.data": {"torch"},
    "rlhf_dist.buffer": {"torch", "pyarrow"},
    "rlhf_dist.engines.vllm_rollout": {"torch"},
    "rlhf_dist.engines.vllm_weight_sync": {"torch"},
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
def test_module_imports_only_its_layer(module):
    extra = loaded_heavy_modules(module) - ALLOWED[module]
    assert not extra, f"importing {module} pulled in {sorted(extra)}"
