"""PPO's data checks (rlhf_dist/data/ppo_data.py): a non-finite reward stops the run naming the
prompt and the sample; a reward model is required and read only where the reward uses it."""

from __future__ import annotations

import re
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


@pytest.mark.parametrize("source", ["fn", "gold"])
def test_no_reward_model_is_required_or_read_without_one_in_use(ppo_models, source, tmp_path):
    """fn / gold: no RM folder needed (critic ""), a given reward_model= is only the critic's start,
    and with critic= given it is not read at all."""
    from rlhf_dist.config.ppo import PPOConfig
    from rlhf_dist.data.ppo_data import load_ppo_data

    sft, rm, data = ppo_models
    fn = {"reward_fn": "rlhf_dist.tasks.instruct:correctness"} if source == "fn" else {}
    base = dict(out=str(tmp_path), sft=sft, data=data, reward_source=source, eval_prompts=0, **fn)
    d = load_ppo_data(PPOConfig(**base))
    assert (d.reward_model, d.critic) == ("", "") and d.prompt_ids
    d = load_ppo_data(PPOConfig(**base, reward_model=rm))
    assert (d.reward_model, d.critic) == ("", rm)
    d = load_ppo_data(PPOConfig(**base, reward_model=str(tmp_path / "no_such_rm"), critic=rm))
    assert (d.reward_model, d.critic) == ("", rm)


def test_a_reward_model_is_required_where_it_is_the_reward(ppo_models, tmp_path):
    from rlhf_dist.config.ppo import PPOConfig
    from rlhf_dist.data.ppo_data import load_ppo_data

    sft, rm, data = ppo_models
    for source, fn in (("rm", ""), ("rm+fn", "m:f")):
        with pytest.raises(ValueError, match=rf"^reward_source={re.escape(source)} needs reward_model=DIR"):
            load_ppo_data(PPOConfig(out=str(tmp_path), sft=sft, data=data, reward_source=source, reward_fn=fn))
    d = load_ppo_data(PPOConfig(out=str(tmp_path), sft=sft, data=data, reward_model=rm, reward_source="rm+fn",
                                reward_fn="m:f", eval_prompts=0))
    assert (d.reward_model, d.critic) == (rm, rm)
