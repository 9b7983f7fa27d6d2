"""Bad values through the `rlhf-dist` command, as a user types them: each is refused with one exact
line on stderr, exit status 2, no traceback, and nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXE = Path(sys.executable).with_name("rlhf-dist")
SUFFIX = " (--debug or RLHF_DIST_DEBUG=1 shows the traceback)"

CASES = [
    ("ppo", "ppo.kl_coef=-0.5", "override 'ppo.kl_coef=-0.5': 'ppo.kl_coef'=-0.5: must be >= 0"),
    ("ppo", "ppo.kl_coef=nan", "override 'ppo.kl_coef=nan': 'ppo.kl_coef'=nan: must be a finite number"),
    ("ppo", "ppo.lam=5", "override 'ppo.lam=5': 'ppo.lam'=5.0: must be <= 1"),
    ("ppo", "ppo.gamma=-1", "override 'ppo.gamma=-1': 'ppo.gamma'=-1.0: must be >= 0"),
    ("ppo", "ppo.clip_eps=-0.2", "override 'ppo.clip_eps=-0.2': 'ppo.clip_eps'=-0.2: must be > 0"),
    ("ppo", "rollout.temperature=nan", "override 'rollout.temperature=nan': 'rollout.temperature'=nan: must be a finite number"),
    ("ppo", "rollout.temperature=0", "override 'rollout.temperature=0': 'rollout.temperature'=0.0: must be > 0"),
    ("ppo", "rollout.cpus_per_worker=-1", "override 'rollout.cpus_per_worker=-1': 'rollout.cpus_per_worker'=-1.0: must be >= 0"),
    ("ppo", "rollout.num_workers=0", "override 'rollout.num_workers=0': 'rollout.num_workers'=0: must be >= 1"),
    ("ppo", "reward.num_actors=0", "override 'reward.num_actors=0': 'reward.num_actors'=0: must be >= 1"),
    ("ppo", "eval_prompts=-3", "override 'eval_prompts=-3': 'eval_prompts'=-3: must be >= 0"),
    ("ppo", "optim.betas=[0.9,1.5]", "override 'optim.betas=[0.9,1.5]': 'optim.betas[1]'=1.5: must be < 1"),
    ("ppo", "optim.lr=-1e-5", "override 'optim.lr=-1e-5': 'optim.lr'=-1e-05: must be > 0"),
    ("ppo", "rollout.max_new_tokens=0", "override 'rollout.max_new_tokens=0': 'rollout.max_new_tokens'=0: must be >= 1"),
    ("ppo", "prompts_per_iteration=0", "override 'prompts_per_iteration=0': 'prompts_per_iteration'=0: must be >= 1"),
    ("ppo", "learner.zero_stage=5", "override 'learner.zero_stage=5': 'learner.zero_stage': expected one of 0, 1, 2, 3, got 5"),
    ("ppo", "learner.dtype=fp16", "override 'learner.dtype=fp16': 'learner.dtype': expected one of fp32, bf16, got 'fp16'"),
    ("ppo", "reward_source=human", "override 'reward_source=human': 'reward_source': expected one of rm, fn, rm+fn, gold, env, "
                                   "got 'human'"),
    ("ppo", "reward_source=fn", "config: reward_source=fn needs reward_fn='module:attr' or 'path/to/file.py:attr'"),
    ("ppo", "reward_fn=my_rewards:score", "config: reward_fn='my_rewards:score' is unused with reward_source=rm: "
                                          "set reward_source=fn or rm+fn"),
    ("ppo", "ppo.kl_estimator=k9", "override 'ppo.kl_estimator=k9': 'ppo.kl_estimator': expected one of k1, k2, k3, got 'k9'"),
    ("ppo", "truncation=left", "override 'truncation=left': 'truncation': expected one of middle, skip, error, got 'left'"),
    ("ppo", "resume=always", "override 'resume=always': 'resume': expected one of never, auto, got 'always'"),
    ("ppo", "seed=abc", "override 'seed=abc': 'seed': expected int, got 'abc'"),
    ("ppo", "iterations=1.5", "override 'iterations=1.5': 'iterations': expected int, got 1.5"),
    ("ppo", "ppo.ptx_coef=inf", "override 'ppo.ptx_coef=inf': 'ppo.ptx_coef'=inf: must be a finite number"),
    ("ppo", "max_restarts=-1", "override 'max_restarts=-1': 'max_restarts'=-1: must be >= 0"),
    ("ppo", "rollout.max_staleness=-1", "override 'rollout.max_staleness=-1': 'rollout.max_staleness'=-1: must be >= 0"),
    ("ppo", "ppo.advantage=grpo", "config: ppo.advantage=grpo compares the responses to one prompt: set "
                                  "rollout.samples_per_prompt >= 2"),
    ("ppo", "ppo.advantage=ppo", "override 'ppo.advantage=ppo': 'ppo.advantage': expected one of gae, grpo, grpo_mean, rloo, "
                                 "reinforce_pp, got 'ppo'"),
    ("ppo", "ppo.kl_penalty=both", "override 'ppo.kl_penalty=both': 'ppo.kl_penalty': expected one of reward, loss, got 'both'"),
    ("ppo", "ppo.is_cap=0.5", "override 'ppo.is_cap=0.5': 'ppo.is_cap'=0.5: must be >= 1"),
    ("sft", "epochs=0", "override 'epochs=0': 'epochs'=0.0: must be > 0"),
    ("sft", "eval_fraction=1.5", "override 'eval_fraction=1.5': 'eval_fraction'=1.5: must be < 1"),
    ("sft", "learner.micro_batch_size=0", "override 'learner.micro_batch_size=0': 'learner.micro_batch_size'=0: must be >= 1"),
    ("rm", "batch_size=0", "override 'batch_size=0': 'batch_size'=0: must be >= 1"),
    ("pretrain", "size=huge", "override 'size=huge': 'size': expected one of tiny, small, got 'huge'"),
    ("eval", "prompts=0", "override 'prompts=0': 'prompts'=0: must be >= 1"),
    ("eval", "temperature=-1", "override 'temperature=-1': 'temperature'=-1.0: must be > 0"),
    ("task-data", "k=1", "override 'k=1': 'k'=1: must be >= 2"),
    ("label", "k=1", "override 'k=1': 'k'=1: must be >= 2"),
    ("overopt", "bon_n=[0,2]", "override 'bon_n=[0,2]': 'bon_n[0]'=0: must be >= 1"),
    ("build-model", "size=big", "override 'size=big': 'size': expected one of tiny, small, got 'big'"),
    ("ppo", "ppo.score_norm=always", "override 'ppo.score_norm=always': 'ppo.score_norm': expected one of none, running, "
                                     "got 'always'"),
    ("rm", "optim.schedule=step", "override 'optim.schedule=step': 'optim.schedule': expected one of cosine, linear, constant, "
                                  "got 'step'"),
    ("eval", "models.sft=3", "override 'models.sft=3': 'models.sft': expected a string, got 3 (quote it: models.sft='3')"),
    ("sft", "truncation=cut", "override 'truncation=cut': 'truncation': expected one of middle, skip, error, got 'cut'"),
    ("quickstart", "rank_k=1", "override 'rank_k=1': 'rank_k'=1: must be >= 2"),
    ("quickstart", "ptx_data=corpus", "override 'ptx_data=corpus': 'ptx_data': expected one of demonstrations, pretraining, "
                                      "both, got 'corpus'"),
]


@pytest.mark.parametrize("command, override, message", CASES, ids=[f"{c}:{o}" for c, o, _ in CASES])
def test_a_bad_value_is_one_exact_line_and_writes_nothing(command, override, message, tmp_path, capsys):
    """In-process through the command's `main`, as the console script calls it (the two tests at
    the end run the script itself: its exit status and stderr are main's)."""
    from rlhf_dist.cli import main

    out = tmp_path / "out"
    assert main([command, "--out", str(out), override]) == 2
    assert capsys.readouterr().err.splitlines() == [f"rlhf-dist {command}: error: {message}{SUFFIX}"]
    assert not out.exists()


@pytest.mark.parametrize("command, override, message", CASES[:1] + CASES[-1:], ids=["ppo", "quickstart"])
def test_a_bad_value_through_the_console_script(command, override, message, tmp_path):
    out = tmp_path / "out"
    res = subprocess.run([str(EXE), command, "--out", str(out), override], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.splitlines() == [f"rlhf-dist {command}: error: {message}{SUFFIX}"]
    assert not out.exists()


# Every command with an output folder, and what it needs besides `out` to get past its config.
OUT_COMMANDS = [("ppo", []), ("sft", []), ("rm", []), ("pretrain", []), ("dpo", []), ("eval", ["models.sft=s"]),
                ("task-data", []), ("label", ["policy=p", "data=d"]), ("overopt", ["sft=s", "reward_model=r", "data=d"]),
                ("build-model", []), ("quickstart", []), ("compare", []), ("report", [])]


@pytest.mark.parametrize("command, extra", OUT_COMMANDS, ids=[c for c, _ in OUT_COMMANDS])
@pytest.mark.parametrize("under_a_file", [True, False], ids=["FILE/run", "FILE"])
def test_an_unusable_out_is_refused_before_anything_starts(command, extra, under_a_file, tmp_path, capsys):
    """out=FILE/run and out=FILE: one line naming out and the file at fault, exit status 2, and
    nothing else on stderr (no Ray start-up, no actor), nothing written. In-process through the
    command's `main` (the console script adds only the exit: the test above runs it)."""
    from rlhf_dist.cli import main

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    out = blocker / "run" if under_a_file else blocker
    assert main([command, "--out", str(out), *extra]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"rlhf-dist {command}: error: out={out}: {blocker} is a file, not a folder{SUFFIX}"]
    assert blocker.read_text() == "not a folder\n" and [p.name for p in tmp_path.iterdir()] == ["a_file"]


def test_an_out_under_a_file_through_the_console_script(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    res = subprocess.run([str(EXE), "ppo", "--config", "configs/tiny.yaml", f"out={blocker}/run"], capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 2
    assert res.stderr.splitlines() == [f"rlhf-dist ppo: error: out={blocker}/run: {blocker} is a file, not a folder{SUFFIX}"]
