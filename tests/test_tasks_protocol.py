"""load_task: the forms a task spec may take, and one-line errors for bad ones."""

import random
from pathlib import Path

import pytest

from rlhf_dist.tasks import base
from rlhf_dist.tasks.base import DEFAULT_TASK, TaskSpecError, load_task

TASK_FILE = '''
import random

class Tiny:
    name = "tiny"
    def sample_prompt(self, rng): return f"say {rng.randint(0, 999)}"
    def demonstrate(self, prompt, rng): return prompt.split()[1] if rng.random() < 0.5 else "no"
    def optimal_response(self, prompt): return prompt.split()[1]
    def gold_score(self, prompt, response): return float(response == prompt.split()[1])
    def pretrain_text(self, rng): return self.sample_prompt(rng)

instance = Tiny()
def factory(): return Tiny()
not_a_task = 42
def broken(): raise RuntimeError("boom")
'''


@pytest.fixture
def task_file(tmp_path):
    path = tmp_path / "tiny_task.py"
    path.write_text(TASK_FILE)
    return path


@pytest.mark.parametrize("attr", ["instance", "Tiny", "factory"])
def test_instance_class_or_factory(task_file, attr):
    task = load_task(f"{task_file}:{attr}")
    assert task.name == "tiny"
    assert isinstance(task, base.Task)
    assert task.gold_score("say 7", task.optimal_response("say 7")) == 1.0


def test_default_task_loads():
    task = load_task(DEFAULT_TASK)
    assert task.name == "instruct" and isinstance(task, base.Task)


@pytest.mark.parametrize("spec, fragment", [
    ("no_colon", "expected 'module:attr'"),
    (":task", "expected"),
    ("rlhf_dist.tasks.instruct:", "expected"),
    ("no_such_module_xyz:task", "cannot import"),
    ("rlhf_dist.tasks.instruct:nope", "no attribute 'nope'"),
    ("/no/such/file.py:task", "no file"),
])
def test_bad_specs(spec, fragment):
    with pytest.raises(TaskSpecError) as err:
        load_task(spec)
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("attr, fragment", [("not_a_task", "lacks name"), ("broken", "boom")])
def test_objects_that_are_not_tasks(task_file, attr, fragment):
    with pytest.raises(TaskSpecError) as err:
        load_task(f"{task_file}:{attr}")
    assert fragment in str(err.value)


def test_default_candidates_are_distinct_when_possible(task_file):
    task = load_task(f"{task_file}:instance")
    got = base.candidates(task, "say 5", random.Random(0), 2)
    assert sorted(got) == ["5", "no"]
    # only two distinct answers exist: a third candidate is a duplicate rather than a hang
    assert len(base.candidates(task, "say 5", random.Random(0), 3)) == 3


def test_relative_path_spec(task_file, monkeypatch):
    monkeypatch.chdir(task_file.parent)
    assert load_task(f"{Path(task_file.name)}:instance").name == "tiny"
