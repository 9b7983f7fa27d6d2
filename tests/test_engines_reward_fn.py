"""Reward functions (rlhf_dist/engines/reward_fn.py): Python code as PPO's reward.

- specs resolve as tasks do ("module:attr", "path/to/file.py:attr"); a bad one is one line naming reward_fn;
- `RewardFunction` scores an Arrow trajectory table as the function scores the decoded texts
  directly (or the prompt texts it is given), in one call; every fault of the function (exception, NaN, inf, wrong length, a
  string) is one line naming the function, the prompt id, the sample index and the prompt;
- the built-in task's `correctness` agrees with its gold scorer's answer check and with an
  independent one (right/wrong answers written by the task's families);
- a reward actor holds only what its source needs and sums RM + function for rm+fn;
- `rlhf-dist ppo reward_source=fn` runs the function inside the reward actor, and its scores are
  the run's; a bad function stops the run with one line naming the prompt and the sample.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from random import Random
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from rlhf_dist.buffer import rollouts_to_batch
from rlhf_dist.engines.reward_fn import (RewardFnSpecError, RewardFunction, RewardFunctionError, gold_reward_fn,
                                         load_reward_fn)
from rlhf_dist.tasks.instruct import correctness, task
from rlhf_dist.tasks.instruct import gold as gold_module
from rlhf_dist.tasks.instruct.families import FAMILIES

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["count down from 9 to 5.", "sort from big to small: 12 5 33 7.", "list 3 fruits without pear.",
           "repeat: red cat box. skip cat."]
RESPONSES = ["9 8 7 6 5.", "33 12 7 5. hope this helps.", "apple, pear.", "red box."]


def length_reward(prompts, responses):
    return [len(r) / 10.0 + 0.01 * len(p) for p, r in zip(prompts, responses)]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from rlhf_dist.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def table(tok):
    """Two samples of each of two prompts (prompt ids 5 and 7), as the rollout workers write them."""
    from rlhf_dist.data import encode_responses, format_prompts

    prompt_ids, response_ids = format_prompts(tok, PROMPTS), encode_responses(tok, RESPONSES)
    rows = [SimpleNamespace(prompt_ids=p, response_ids=r, logprobs=[-0.5] * len(r), finished_with_eos=True)
            for p, r in zip(prompt_ids, response_ids)]
    return pa.Table.from_batches([rollouts_to_batch(rows, [5, 5, 7, 7], 0, 0, sample_index=[0, 1, 0, 1])])


@pytest.fixture
def fn_file(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text("def reward(prompts, responses):\n    return [float(len(r)) for r in responses]\n\n"
                    "NOT_CALLABLE = 3\n")
    return path


# ---------------------------------------------------------------------------------------------- loading


def test_module_spec_and_file_spec_load_the_function(fn_file):
    assert load_reward_fn("rlhf_dist.tasks.instruct:correctness") is correctness
    fn = load_reward_fn(f"{fn_file}:reward")
    assert fn(["a", "b"], ["xyz", ""]) == [3.0, 0.0]


@pytest.mark.parametrize("spec, fragment", [
    ("correctness", "expected 'module:attr' or 'path/to/file.py:attr'"),
    ("rlhf_dist.tasks.instruct:", "expected 'module:attr' or 'path/to/file.py:attr'"),
    ("rlhf_dist.tasks.instruct:nope", "'rlhf_dist.tasks.instruct' has no attribute 'nope'"),
    ("no_such_module_for_rewards:f", "cannot import 'no_such_module_for_rewards'"),
    ("/nowhere/rewards.py:f", "no file '/nowhere/rewards.py'"),
    ("rlhf_dist.tasks.instruct:FAMILIES", "tuple object is not callable"),
])
def test_bad_specs_are_one_line_naming_reward_fn(spec, fragment):
    with pytest.raises(RewardFnSpecError) as e:
        load_reward_fn(spec)
    message = str(e.value)
    assert message.startswith(f"bad reward_fn spec {spec!r}: ") and fragment in message and "\n" not in message
    assert isinstance(e.value, ValueError)


def test_a_file_that_fails_to_load_and_a_non_callable_in_a_file(tmp_path, fn_file):
    broken = tmp_path / "broken_reward.py"
    broken.write_text("raise RuntimeError('no reward today')\n")
    with pytest.raises(RewardFnSpecError, match=r"loading the file failed: RuntimeError\('no reward today'\)"):
        load_reward_fn(f"{broken}:reward")
    with pytest.raises(RewardFnSpecError, match="int object is not callable"):
        load_reward_fn(f"{fn_file}:NOT_CALLABLE")


def test_a_file_spec_is_made_absolute_for_the_actors(tmp_path, monkeypatch):
    from rlhf_dist.tasks.base import absolute_spec

    monkeypatch.chdir(tmp_path)
    assert absolute_spec("rewards/mine.py:score") == f"{tmp_path.resolve()}/rewards/mine.py:score"
    assert absolute_spec("rlhf_dist.tasks.instruct:correctness") == "rlhf_dist.tasks.instruct:correctness"


@pytest.mark.parametrize("overrides, message", [
    ({"reward_source": "fn"}, "reward_source=fn needs reward_fn='module:attr' or 'path/to/file.py:attr'"),
    ({"reward_source": "rm+fn", "reward_fn": " "}, "reward_source=rm+fn needs reward_fn="),
    ({"reward_fn": "m:f"}, "reward_fn='m:f' is unused with reward_source=rm: set reward_source=fn or rm+fn"),
    ({"reward_source": "gold", "reward_fn": "m:f"}, "reward_fn='m:f' is unused with reward_source=gold"),
])
def test_inconsistent_reward_settings_are_refused(overrides, message):
    from rlhf_dist.config.ppo import PPOConfig

    with pytest.raises(ValueError, match=re.escape(message)):
        PPOConfig(out="x", **overrides)
    for source in ("rm", "gold"):
        PPOConfig(out="x", reward_source=source)
    PPOConfig(out="x", reward_source="fn", reward_fn="m:f")


# ---------------------------------------------------------------------------------------------- the engine


def test_the_table_is_scored_as_the_function_scores_the_texts_in_one_call(table, tok):
    calls = []

    def fn(prompts, responses):
        calls.append((list(prompts), list(responses)))
        return np.asarray(length_reward(prompts, responses))  # an array is a sequence of numbers too

    scores = RewardFunction(fn, "reward_fn=test:fn", tok).score(table)
    assert calls == [(PROMPTS, RESPONSES)]  # plain prompt text (no separator, no BOS), responses without EOS
    assert scores.dtype == np.float32
    assert scores.tolist() == pytest.approx(length_reward(PROMPTS, RESPONSES), rel=1e-6)
    half = RewardFunction(fn, "reward_fn=test:fn", tok).score(table.slice(2, 2))
    assert calls[-1] == (PROMPTS[2:], RESPONSES[2:]) and half.tolist() == pytest.approx(scores[2:].tolist())
    assert RewardFunction(fn, "x", tok).score(table.slice(0, 0)).shape == (0,) and len(calls) == 2
    # the driver passes each prompt as written (a prompt cut by truncation=middle arrives whole)
    whole = [p + " (whole)" for p in PROMPTS]
    given = RewardFunction(fn, "reward_fn=test:fn", tok).score(table, whole)
    assert calls[-1] == (whole, RESPONSES) and given.tolist() == pytest.approx(length_reward(whole, RESPONSES), rel=1e-6)
    with pytest.raises(ValueError, match=r"^reward_fn=test:fn: 3 prompt texts for 4 rows$"):
        RewardFunction(fn, "reward_fn=test:fn", tok).score(table, whole[:3])


def test_gold_is_the_task_gold_scorer_through_the_same_path(table, tok):
    scores = RewardFunction.gold("rlhf_dist.tasks.instruct:task", tok).score(table)
    assert scores.tolist() == pytest.approx([task.gold_score(p, r) for p, r in zip(PROMPTS, RESPONSES)], abs=1e-6)
    assert gold_reward_fn("rlhf_dist.tasks.instruct:task")(PROMPTS[:1], ["9 8 7 6 5."]) == [1.0]


def _raises(prompts, responses):
    raise ZeroDivisionError("no score\nfor this row")


@pytest.mark.parametrize("fn, message", [
    (_raises, "reward_fn=my:fn raised ZeroDivisionError: no score for this row on a batch of 4 rows starting at "
              "prompt 5 ('count down from 9 to 5.'), sample 0"),
    (lambda p, r: [0.0, 1.0, float("nan"), float("nan")],
     "reward_fn=my:fn: score nan for prompt 7 ('list 3 fruits without pear.'), sample 0; 2 of 4 rows of this batch "
     "are not finite"),
    (lambda p, r: [0.0, float("-inf"), 1.0, 1.0],
     "reward_fn=my:fn: score -inf for prompt 5 ('sort from big to small: 12 5 33 7.'), sample 1; 1 of 4 rows of this "
     "batch are not finite"),
    (lambda p, r: [1.0, 2.0, 3.0],
     "reward_fn=my:fn returned 3 scores for a batch of 4 rows starting at prompt 5 ('count down from 9 to 5.'), sample 0"),
    (lambda p, r: [1.0, 2.0, 3.0, "4.0"],
     "reward_fn=my:fn: score '4.0' is not a number, for prompt 7 ('repeat: red cat box. skip cat.'), sample 1"),
    (lambda p, r: "1234",
     "reward_fn=my:fn returned str, not a sequence of 4 scores, on a batch starting at prompt 5 "
     "('count down from 9 to 5.'), sample 0"),
    (lambda p, r: None,
     "reward_fn=my:fn returned NoneType, not a sequence of 4 scores, on a batch starting at prompt 5 "
     "('count down from 9 to 5.'), sample 0"),
])
def test_each_fault_of_the_function_is_one_line_naming_the_row(table, tok, fn, message):
    with pytest.raises(RewardFunctionError) as e:
        RewardFunction(fn, "reward_fn=my:fn", tok).score(table)
    assert str(e.value) == message
    assert isinstance(e.value, ValueError)  # the CLI prints it in one line and exits 2


# ---------------------------------------------------------------------------------------------- correctness


def test_correctness_agrees_with_the_gold_answer_check_on_the_task_data(ppo_models):
    """On the task's demonstrations and ranked comparisons: 1.0 exactly where the gold scorer's
    answer check gives full credit; both kinds occur; and a correct answer is not always gold 1
    (padding, honesty and harmlessness are gold's business, not correctness')."""
    data = Path(ppo_models[2])
    pairs = [(r["prompt"], r["response"]) for r in map(json.loads, (data / "sft.jsonl").read_text().splitlines())]
    for row in map(json.loads, (data / "comparisons.jsonl").read_text().splitlines()):
        pairs += [(row["prompt"], y) for y in row["responses"]]
    prompts, responses = [p for p, _ in pairs], [r for _, r in pairs]
    got = correctness(prompts, responses)
    assert got == [float(gold_module.gold_parts(p, r)["correct"] == 1.0) for p, r in pairs]
    assert 0 < sum(got) < len(got)
    assert any(c == 1.0 and task.gold_score(p, r) < 1.0 for c, p, r in zip(got, prompts, responses))


def test_correctness_independently_right_and_wrong_answers():
    """Answers written by the families themselves: right ones (any style) score 1, padded
    optimal ones too, wrong ones (one realistic mistake) 0; empty and foreign prompts 0."""
    rng = Random(0)
    for family in FAMILIES:
        specs = [family.sample(rng) for _ in range(30)]
        prompts = [family.prompt(s, rng) for s in specs]
        assert correctness(prompts, [family.right(s, rng) for s in specs]) == [1.0] * 30, family.name
        assert correctness(prompts, [family.optimal(s) + " hope this helps." for s in specs]) == [1.0] * 30
        assert correctness(prompts, [""] * 30) == [0.0] * 30
        if family.name != "facts":  # a facts answer's mistake can be an invented fact: dishonest, still correct
            assert correctness(prompts, [family.wrong(s, rng, n_mistakes=1) for s in specs]) == [0.0] * 30, family.name
    assert correctness(["what is the meaning of life?"], ["42."]) == [0.0]


# ---------------------------------------------------------------------------------------------- the reward actor


def test_reward_actor_loads_only_what_its_source_needs_and_sums_rm_and_fn(ppo_models, table):
    from rlhf_dist.actors.scorers import RewardActor

    sft, rm, _ = ppo_models
    spec = f"{Path(__file__).resolve()}:length_reward"
    only_fn = RewardActor("", 0, 4, "float32", spec, "", sft)
    assert only_fn.engine is None  # no RM weights
    gold = RewardActor("", 0, 4, "float32", "", "rlhf_dist.tasks.instruct:task", sft)
    assert gold.engine is None and gold.score(table).tolist() == pytest.approx(
        [task.gold_score(p, r) for p, r in zip(PROMPTS, RESPONSES)], abs=1e-6)
    only_rm = RewardActor(rm, 0, 4, "float32")
    assert only_rm.function is None
    both = RewardActor(rm, 0, 4, "float32", spec, "", sft)
    expected = only_rm.score(table) + np.asarray(length_reward(PROMPTS, RESPONSES), np.float32)
    assert both.score(table).tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert only_fn.score(table).tolist() == pytest.approx(length_reward(PROMPTS, RESPONSES), rel=1e-6)


# ---------------------------------------------------------------------------------------------- a real run

RUN_PROMPTS = 8
MARKED = '''import json, os

import ray


def reward(prompts, responses):
    scores = [len(r) / 10.0 + 0.01 * len(p) for p, r in zip(prompts, responses)]
    with open({marker!r}, "a") as f:
        f.write(json.dumps({{"pid": os.getpid(), "actor": ray.get_runtime_context().get_actor_id(),
                            "prompts": prompts, "scores": scores}}) + "\\n")
    return scores


def bad(prompts, responses):
    return [0.5, float("nan")] + [0.5] * (len(prompts) - 2)
'''


def _ppo(ppo_models, out, *extra):
    sft, rm, data = ppo_models
    return subprocess.Popen(
        [sys.executable, "-m", "rlhf_dist.cli", "ppo", "--config", str(REPO / "configs" / "tiny.yaml"), f"out={out}",
         f"sft={sft}", f"reward_model={rm}", f"data={data}", f"prompts_per_iteration={RUN_PROMPTS}", "ppo.minibatch_size=8",
         "ppo.epochs=1", "learner.micro_batch_size=4", "eval_prompts=0", "rollout.max_new_tokens=8", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def fn_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reward_fn")
    path = folder / "marked_reward.py"
    path.write_text(MARKED.format(marker=str(folder / "calls.jsonl")))
    return path, folder / "calls.jsonl"


@pytest.mark.slow
def test_ppo_with_a_reward_function_scores_in_the_reward_actor(ppo_models, fn_module, tmp_path):
    from rlhf_dist.buffer import read_trajectories
    from rlhf_dist.data import load_prompts, prompt_text

    path, marker = fn_module
    proc = _ppo(ppo_models, tmp_path / "run", "iterations=2", "reward_source=fn", f"reward_fn={path}:reward")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert f"reward function {path}:reward" in stdout
    calls = [json.loads(line) for line in marker.read_text().splitlines()]
    assert len(calls) == 2  # one batched call per iteration (one reward actor)
    for c in calls:
        assert c["actor"] is not None and c["pid"] not in (os.getpid(), proc.pid)  # inside a Ray actor
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "objective/score" in r]
    assert [r["objective/score"] for r in train] == pytest.approx([np.mean(c["scores"]) for c in calls], rel=1e-5)
    table = read_trajectories(tmp_path / "run" / "trajectories")
    assert table.column("score").to_pylist() == pytest.approx([s for c in calls for s in c["scores"]], rel=1e-6)
    # each prompt as written in the prompts file, also where max_prompt_len cut its tokens
    prompts = load_prompts(Path(ppo_models[2]) / "rl_prompts.jsonl")
    assert [p for c in calls for p in c["prompts"]] == [prompt_text(prompts[i]) for i in table.column("prompt_id").to_pylist()]


@pytest.mark.slow
def test_ppo_with_a_bad_reward_function_stops_in_one_line(ppo_models, fn_module, tmp_path):
    from rlhf_dist.data import load_prompts

    path, _ = fn_module
    proc = _ppo(ppo_models, tmp_path / "run", "iterations=1", "reward_source=fn", f"reward_fn={path}:bad")
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 2
    lines = re.findall(r"rlhf-dist ppo: [^\r\n]*", stderr)  # the progress bar shares stderr, ending in \r
    assert len(lines) == 1, stderr[-3000:]
    m = re.fullmatch(rf"rlhf-dist ppo: error: reward_fn={re.escape(str(path))}:bad: score nan for prompt (\d+) "
                     r"\('(.*)'\), sample 0; 1 of 8 rows of this batch are not finite "
                     r"\(--debug or RLHF_DIST_DEBUG=1 shows the traceback\)", lines[0])
    assert m, lines[0]
    prompts = load_prompts(Path(ppo_models[2]) / "rl_prompts.jsonl")
    assert prompts[int(m.group(1))][:60] == m.group(2)
