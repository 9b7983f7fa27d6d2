"""The environments the docs show run as written: the complete one of docs/environments.md (through
the process pool, by file path) and examples/feedback_env.py (answer, feedback, revision)."""

from __future__ import annotations

import re
from pathlib import Path

from rlhf_dist.envs import EnvPool, load_env
from rlhf_dist.tasks.instruct import task

REPO = Path(__file__).resolve().parents[1]


def test_the_documented_environment_runs_in_the_pool(tmp_path):
    source = re.search(r"```python\n(.*?)```", (REPO / "docs" / "environments.md").read_text(), re.S).group(1)
    assert "rlhf_dist" not in source and 20 <= len(source.splitlines()) <= 40
    (tmp_path / "my_env.py").write_text(source)
    with EnvPool(f"{tmp_path / 'my_env.py'}:Guess", workers=1, timeout_s=10) as pool:
        assert pool.stop == ["\n"]
        (start,) = pool.reset(["one two three"])
        low, = pool.step([(start.state, "1 word")])
        assert (low.observation, low.reward, low.done, low.failure) == ("more than 1.", 0.0, False, None)
        junk, = pool.step([(low.state, "many")])
        assert (junk.observation, junk.reward, junk.done) == ("say a number:", -0.1, False)
        hit, = pool.step([(junk.state, "3")])
        assert (hit.observation, hit.reward, hit.done) == (None, 1.0, True) and hit.state["tries"] == 3


def test_feedback_environment_rewards_the_gold_gain_of_the_revision():
    env = load_env(str(REPO / "examples" / "feedback_env.py") + ":Revise")
    prompt = "sort from big to small: 12 5 33 7."
    wrong, right = "12 33 7 5. you are stupid.", task.optimal_response(prompt)
    state = env.reset(prompt)
    observation, reward, done = env.step(state, wrong)
    assert not done and reward == 0.0
    assert observation.startswith("feedback: ") and "not right" in observation and "rude" in observation
    observation, reward, done = env.step(state, right)
    assert done and observation is None
    assert reward == task.gold_score(prompt, right) - task.gold_score(prompt, wrong) > 0.5
    state = env.reset(prompt)
    env.step(state, right)
    assert env.step(state, wrong)[1] < 0  # a worse revision costs
