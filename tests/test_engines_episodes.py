"""Multi-turn episodes on a real vLLM engine (CPU build) and a tiny local model: token-exact
trajectories (the learner's log-probs of a whole episode equal vLLM's at every policy token),
observations as tokenized context, stop strings, limits and environment failures.

The environments here are in-process objects with the pool's interface (`reset`, `step`,
`stop`, results with `failure`), so these tests check the episode loop alone; the process pool
is tested in tests/test_envs_pool.py and the whole path in tests/test_ppo_episodes.py."""

from __future__ import annotations

import os

import pytest
import torch

from rlhf_dist.data import encode_observation
from rlhf_dist.engines.episodes import EpisodeLimits, final_turn, run_episodes
from rlhf_dist.envs import EnvResult
from rlhf_dist.models import load_causal_lm, pad_prompt_response, response_logprobs


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process engine core: starts in seconds
    from rlhf_dist.engines.vllm_rollout import VLLMRolloutEngine

    yield VLLMRolloutEngine(str(tiny_model_dir), seed=0, max_model_len=256)


class EchoEnv:
    """Answers every turn with 'you said N words.' and a reward of 0.25 per turn; done after
    `turns` turns. Records what it was given."""

    stop = [" the"]  # a common word of the toy corpus, so some turns end at the stop string

    def __init__(self, turns=3, fail_at=None):
        self.turns, self.fail_at, self.texts = turns, fail_at, []

    def reset(self, prompts):
        return [EnvResult(state={"n": 0, "prompt": p}) for p in prompts]

    def step(self, calls):
        out = []
        for state, text in calls:
            self.texts.append(text)
            state["n"] += 1
            if self.fail_at is not None and state["n"] == self.fail_at and state["prompt"] == "the cat":
                out.append(EnvResult(failure="env_error", error="RuntimeError('boom')"))
                continue
            done = state["n"] >= self.turns
            out.append(EnvResult(state=state, observation=None if done else f"you said {len(text.split())} words.",
                                 reward=0.25, done=done))
        return out


class StopAtE(EchoEnv):
    stop = ["e"]


PROMPTS = ["the cat", "a red box is under the mat and", "count one two", "list"]


def _episodes(engine, env, temperature=1.0, limits=EpisodeLimits(4, 120, 12), seed=5):
    tok = engine.tokenizer
    return run_episodes(engine, [tok(p).input_ids for p in PROMPTS], PROMPTS, env, limits, temperature, seed)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_learner_logprobs_equal_vllm_at_every_policy_token_of_multi_turn_episodes(engine, tiny_model_dir, temperature):
    episodes = _episodes(engine, EchoEnv(turns=3), temperature)
    assert sum(e.turns for e in episodes) > len(episodes)  # several turns happened
    assert any(not all(e.policy_mask) for e in episodes)  # observations are in the rows
    model = load_causal_lm(tiny_model_dir)
    tok = engine.tokenizer
    batch = pad_prompt_response([e.prompt_ids for e in episodes], [e.response_ids for e in episodes], tok.pad_token_id)
    with torch.no_grad():
        learner = response_logprobs(model, batch, temperature=temperature)
    policy = torch.zeros_like(batch.response_mask)
    engine_lp = torch.zeros(batch.response_mask.shape)
    for i, e in enumerate(episodes):
        policy[i, : len(e.policy_mask)] = torch.tensor(e.policy_mask)
        engine_lp[i, : len(e.logprobs)] = torch.tensor(e.logprobs)
    diff = (learner - engine_lp).abs()[policy]
    assert diff.numel() > 20 and diff.max().item() < 1e-3, f"max |learner - vLLM| = {diff.max().item():.2e}"
    # The check can fail: observation tokens were never sampled, so their learner log-probs are far from 0.
    assert (learner - engine_lp).abs()[batch.response_mask & ~policy].max().item() > 1e-2


def test_episode_layout_observations_rewards_and_limits(engine):
    env = EchoEnv(turns=3)
    episodes = _episodes(engine, env)
    tok = engine.tokenizer
    texts = iter(env.texts)
    for e in episodes:
        assert len(e.response_ids) == len(e.logprobs) == len(e.policy_mask) == len(e.env_rewards) <= 120
        assert e.end_reason in ("done", "max_new_tokens", "max_episode_tokens", "max_turns")
        # Split the row into runs: policy turns alternate with observations, each observation is
        # exactly the tokenized answer to the text of the turn before it.
        runs, start = [], 0
        for k in range(1, len(e.policy_mask) + 1):
            if k == len(e.policy_mask) or e.policy_mask[k] != e.policy_mask[start]:
                runs.append((e.policy_mask[start], e.response_ids[start:k], e.env_rewards[start:k]))
                start = k
        assert runs[0][0] and sum(1 for p, _, _ in runs if p) == e.turns
        assert [p for p, _, _ in runs] == [k % 2 == 0 for k in range(len(runs))]  # policy, observation, policy, ...
        for (p1, ids1, rew1), (p2, ids2, _) in zip(runs[::2], runs[1::2]):
            assert ids2 == encode_observation(tok, f"you said {len(tok.decode(ids1, skip_special_tokens=True).split())} words.")
            assert rew1[:-1] == [0.0] * (len(rew1) - 1) and rew1[-1] == 0.25  # the turn's reward on its last token
        if e.end_reason == "done":
            assert e.turns == 3 and e.finished_with_eos and sum(e.env_rewards) == pytest.approx(0.75)
        assert final_turn(e.response_ids, e.policy_mask) == runs[-1][1] if runs[-1][0] else True
    assert next(texts, None) is not None


def test_turn_ends_at_stop_string_keeping_the_sampled_tokens(engine):
    episodes = _episodes(engine, StopAtE(turns=4), limits=EpisodeLimits(4, 200, 30))
    tok = engine.tokenizer
    stopped = 0
    for e in episodes:
        start = 0
        for k in range(1, len(e.policy_mask) + 1):
            if k == len(e.policy_mask) or e.policy_mask[k] != e.policy_mask[start]:
                if e.policy_mask[start] and k < len(e.policy_mask):  # a policy turn the environment answered
                    text = tok.decode(e.response_ids[start:k], skip_special_tokens=True)
                    ends_eos = e.response_ids[k - 1] == tok.eos_token_id
                    # ends at EOS, or at the first token whose text completes the stop string
                    before = tok.decode(e.response_ids[start:k - 1], skip_special_tokens=True)
                    assert ends_eos or ("e" in text and "e" not in before), (text, before)
                    stopped += not ends_eos
                start = k
    assert stopped > 0


def test_seeded_episodes_repeat_and_limits_end_them(engine):
    a, b = _episodes(engine, EchoEnv(turns=3), seed=9), _episodes(engine, EchoEnv(turns=3), seed=9)
    assert [e.response_ids for e in a] == [e.response_ids for e in b]
    short = _episodes(engine, StopAtE(turns=10), limits=EpisodeLimits(2, 200, 30))
    assert all(e.turns <= 2 for e in short)
    assert {e.end_reason for e in short} <= {"max_turns", "max_new_tokens"} and any(e.end_reason == "max_turns" for e in short)
    tight = _episodes(engine, EchoEnv(turns=10), limits=EpisodeLimits(10, 20, 12))
    assert all(len(e.response_ids) <= 20 for e in tight) and any(e.end_reason == "max_episode_tokens" for e in tight)


def test_failed_environment_ends_only_its_episode_with_zero_reward(engine):
    episodes = _episodes(engine, EchoEnv(turns=3, fail_at=2))
    by_prompt = dict(zip(PROMPTS, episodes))
    bad = by_prompt["the cat"]
    if bad.turns >= 2:
        assert bad.end_reason == "env_error" and bad.env_error == "RuntimeError('boom')"
        assert sum(bad.env_rewards) == 0.0 and not bad.finished_with_eos
    assert all(e.end_reason != "env_error" for p, e in by_prompt.items() if p != "the cat")
