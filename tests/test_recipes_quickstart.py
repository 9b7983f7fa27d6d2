"""`rlhf-dist quickstart` (rlhf_dist/recipes/quickstart.py): bad settings are refused in one line,
exit status 2, before anything is written. The whole pipeline runs as `make demo`."""

from __future__ import annotations

import subprocess

import pytest


@pytest.mark.parametrize("override, message", [("rm_data=bogus", "rm_data"), ("rank_k=1", "rank_k"), ("nope=1", "nope"),
                                               ("base=no/such/model", "base=no/such/model"), ("ptx_data=corpus", "ptx_data"),
                                               ("eval_temperature=0", "eval_temperature=0")])
def test_quickstart_bad_settings_fail_before_writing(override, message, tmp_path):
    import sys

    out = tmp_path / "qs"
    proc = subprocess.run([sys.executable, "-m", "rlhf_dist.cli", "quickstart", f"out={out}", override],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0], proc.stderr
    assert not out.exists()
