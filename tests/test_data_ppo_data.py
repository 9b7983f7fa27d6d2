"""PPO's data checks (rlhf_dist/data/ppo_data.py): a non-finite reward stops the run naming the
prompt and the sample."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from rlhf_dist.buffer import add_columns, rollouts_to_batch
from rlhf_dist.data.ppo_data import NonFiniteScoreError, PPOData


def _table(scores):
    rows = [SimpleNamespace(prompt_ids=[1, 2], response_ids=[3, 4], logprobs=[-0.1, -0.2], finished_with_eos=True)
            for _ in scores]
    prompt_id = [0, 0, 1, 1][: len(scores)]
    t = pa.Table.from_batches([rollouts_to_batch(rows, prompt_id, 0, 0, sample_index=[0, 1, 0, 1][: len(scores)])])
    return add_columns(t, score=np.asarray(scores, dtype=np.float32))


def _data():
    return PPOData("sft", "rm", "rm", 0, ["sort 3 1 2.", "count the birds."], [[1], [2]], [], [], [], None)


def test_finite_scores_pass():
    _data().check_finite_scores(_table([0.5, -1.0, 2.0, 0.0]), "rm")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_score_names_prompt_and_sample(bad):
    with pytest.raises(NonFiniteScoreError) as e:
        _data().check_finite_scores(_table([0.5, 1.0, 0.2, bad]), "gold")
    assert str(e.value) == (f"reward_source=gold: score {float(np.float32(bad))} for prompt 1 ('count the birds.'), sample 1; "
                            "1 of 4 rows of this batch are not finite")


def test_the_first_bad_row_is_named_and_all_are_counted():
    with pytest.raises(NonFiniteScoreError, match=r"for prompt 0 \('sort 3 1 2.'\), sample 1; 2 of 4 rows"):
        _data().check_finite_scores(_table([0.5, float("nan"), 0.2, float("nan")]), "rm")
