"""`import rlhf_dist.algo` must stay light: torch only, none of the heavy stack."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("ray", "vllm", "deepspeed", "transformers", "pyarrow")


def test_algo_import_loads_no_heavy_dependency():
    code = (
        "import json, sys\n"
        "import rlhf_dist.algo\n"
        "from rlhf_dist.algo import gae_advantages, policy_loss, ranking_loss\n"
        f"heavy = {HEAVY!r}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "print(json.dumps(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"import rlhf_dist.algo pulled in {loaded}"


def test_algo_exports():
    import rlhf_dist.algo as algo

    for name in algo.__all__:
        assert callable(getattr(algo, name)), name
