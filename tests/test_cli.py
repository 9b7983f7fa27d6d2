"""The `rlhf-dist` console script, run as a newcomer would (subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXE = Path(sys.executable).with_name("rlhf-dist")


def run(*args, cwd=None):
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_console_script_installed_and_lists_commands():
    assert EXE.exists(), "the rlhf-dist console script is not installed in the venv"
    res = run("--help")
    assert res.returncode == 0
    for command in ("demo", "task-data", "build-model"):
        assert command in res.stdout
    assert run("version").stdout.startswith("rlhf-dist ")


@pytest.mark.parametrize("command", ["demo", "build-model"])
def test_unknown_key_is_a_one_line_error_with_nonzero_exit(command, tmp_path):
    res = run(command, "--out", str(tmp_path / "o"), "no_such_key=1")
    assert res.returncode == 2
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "no_such_key" in lines[0], res.stderr
    assert not (tmp_path / "o").exists(), "nothing may be written on bad input"


def test_build_model_missing_corpus_names_the_file(tmp_path):
    res = run("build-model", "--out", str(tmp_path / "m"), f"data={tmp_path / 'nodata'}")
    assert res.returncode == 2 and "pretrain.jsonl" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_an_out_folder_under_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = run("task-data", "--out", str(blocker / "data"), "n_pretrain=10")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines == [f"rlhf-dist task-data: error: out={blocker / 'data'}: {blocker} is a file, not a folder "
                     "(--debug or RLHF_DIST_DEBUG=1 shows the traceback)"], res.stderr
    assert blocker.read_text() == "x"


def test_debug_flag_shows_the_traceback(tmp_path):
    res = run("--debug", "build-model", "--out", str(tmp_path / "m"), f"data={tmp_path / 'nodata'}")
    assert res.returncode != 0 and "Traceback" in res.stderr and "pretrain.jsonl" in res.stderr


@pytest.mark.parametrize("args, code, out", [(["version"], 0, "rlhf-dist "), (["nonsense"], 2, "invalid choice"),
                                             (["ppo", "nonsense=1"], 2, "unknown key 'nonsense'")])
def test_the_command_exits_with_mains_code_after_the_exit_handlers(args, code, out):
    """`run` (the console script) ends with os._exit: the exit handlers must still have run, with
    main's exit code and all output flushed."""
    script = ("import atexit, sys; atexit.register(lambda: print('exit handler ran', flush=True)); "
              f"sys.argv = ['rlhf-dist'] + {args!r}; from rlhf_dist.cli import run; run()")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert out in proc.stdout + proc.stderr
    assert proc.stdout.rstrip().endswith("exit handler ran")
