"""PPO's input checks: a non-finite reward stops the run naming the prompt and the sample
(rlhf_dist/actors/ppo_actors.py); a reward model is required and read only where the reward or
the critic uses it (rlhf_dist/config/ppo.py decides, `check_models` checks); the data are read
with the SFT tokenizer (rlhf_dist/data/ppo_data.py)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from rlhf_dist.actors.ppo_actors import NonFiniteScoreError, check_finite_scores, check_models
from rlhf_dist.buffer import add_columns, rollouts_to_batch
from rlhf_dist.config import derive
from rlhf_dist.config.ppo import PPOConfig
from rlhf_dist.data.ppo_data import load_ppo_data

PROMPTS = ["sort 3 1 2.", "count the birds."]


def _table(scores):
    rows = [SimpleNamespace(prompt_ids=[1, 2], response_ids=[3, 4], logprobs=[-0.1, -0.2], finished_with_eos=True)
            for _ in scores]
    prompt_id = [0, 0, 1, 1][: len(scores)]
    t = pa.Table.from_batches([rollouts_to_batch(rows, prompt_id, 0, 0, sample_index=[0, 1, 0, 1][: len(scores)])])
    return add_columns(t, score=np.asarray(scores, dtype=np.float32))


def test_finite_scores_pass():
    check_finite_scores(_table([0.5, -1.0, 2.0, 0.0]), PROMPTS, "rm")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_score_names_prompt_and_sample(bad):
    with pytest.raises(NonFiniteScoreError) as e:
        check_finite_scores(_table([0.5, 1.0, 0.2, bad]), PROMPTS, "gold")
    assert str(e.value) == (f"reward_source=gold: score {float(np.float32(bad))} for prompt 1 ('count the birds.'), sample 1; "
                            "1 of 4 rows of this batch are not finite")


def test_the_first_bad_row_is_named_and_all_are_counted():
    with pytest.raises(NonFiniteScoreError, match=r"for prompt 0 \('sort 3 1 2.'\), sample 1; 2 of 4 rows"):
        check_finite_scores(_table([0.5, float("nan"), 0.2, float("nan")]), PROMPTS, "rm")


@pytest.mark.parametrize("source", ["fn", "gold"])
def test_no_reward_model_is_required_or_read_without_one_in_use(ppo_models, source, tmp_path):
    """fn / gold: no RM folder needed (no critic start without one), a given reward_model= is only
    the critic's start, and with critic= given it is not read at all."""
    sft, rm, data = ppo_models
    fn = {"reward_fn": "rlhf_dist.tasks.instruct:correctness"} if source == "fn" else {}
    base = dict(out=str(tmp_path), sft=sft, data=data, reward_source=source, eval_prompts=0, **fn)
    critic_free = derive(PPOConfig(**base), ppo={"advantage": "grpo"}, rollout={"samples_per_prompt": 2})
    assert (critic_free.reward_uses_rm, critic_free.reads_reward_model, critic_free.critic_start) == (False, False, "")
    d = load_ppo_data(critic_free, check_models(critic_free))
    assert d.prompt_ids and d.pad_id == d.tokenizer.pad_token_id
    with pytest.raises(ValueError, match=r"^ppo.advantage=gae trains a critic: give its start"):
        check_models(PPOConfig(**base))
    cfg = PPOConfig(**base, reward_model=rm)
    assert (cfg.reward_uses_rm, cfg.reads_reward_model, cfg.critic_start) == (False, True, rm)
    check_models(cfg)
    cfg = PPOConfig(**base, reward_model=str(tmp_path / "no_such_rm"), critic=rm)
    assert (cfg.reads_reward_model, cfg.critic_start) == (False, rm)
    check_models(cfg)  # the missing RM folder is never read


def test_a_reward_model_is_required_where_it_is_the_reward(ppo_models, tmp_path):
    sft, rm, data = ppo_models
    for source, fn in (("rm", ""), ("rm+fn", "m:f")):
        with pytest.raises(ValueError, match=rf"^reward_source={re.escape(source)} needs reward_model=DIR"):
            check_models(PPOConfig(out=str(tmp_path), sft=sft, data=data, reward_source=source, reward_fn=fn))
    cfg = PPOConfig(out=str(tmp_path), sft=sft, data=data, reward_model=rm, reward_source="rm+fn", reward_fn="m:f",
                    eval_prompts=0)
    assert (cfg.reward_uses_rm, cfg.reward_uses_fn, cfg.reward_reads_text, cfg.critic_start) == (True, True, True, rm)
    check_models(cfg)


def test_a_broken_reward_model_folder_is_named(ppo_models, tmp_path):
    sft, _, data = ppo_models
    with pytest.raises(FileNotFoundError, match=r"^reward_model="):
        check_models(PPOConfig(out=str(tmp_path), sft=sft, data=data, reward_model=str(tmp_path / "missing")))
