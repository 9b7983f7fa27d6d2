"""rlhf_dist.evaluation.sample_and_score with fakes for every source (no vLLM, no models): a `sample`
returning a real rollout table (rlhf_dist.buffer.rollouts_to_batch), a word tokenizer, a gold task,
an RM returning numpy scores and a reference returning list<float32> log-probs, directly or behind a
handle with `.result()`. Every number is recomputed here with plain Python loops from the inputs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from rlhf_dist.buffer import rollouts_to_batch
from rlhf_dist.evaluation.sample_and_score import SampleScores, sample_and_score

TOL = 1e-5  # fp32 log-probs in the table vs float64 sums here
EOS = 2
WORDS = {EOS: "<eos>", 5: "good", 6: "bad", 7: "very", 8: "fine", 9: "answer"}

# Three prompts (the last is a chat message list: the gold scorer must get its text), token ids, and
# one rollout each: response ids, the sampler's log-probs, whether it ended with EOS.
PROMPTS = ["what is up", "say hi", [{"role": "user", "content": "tell me"}]]
PROMPT_TEXTS = ["what is up", "say hi", "tell me"]
PROMPT_IDS = [[11, 12, 13], [14, 15], [16, 17]]
RESPONSES = [[5, 7, 8, EOS], [6, 6], [9, 5, 7, 8, 9, EOS]]
DECODED = ["good very fine", "bad bad", "answer good very fine answer"]
LOGPROBS = [[-0.1, -0.25, -1.3, -0.05], [-2.0, -0.7], [-0.33, -0.12, -0.9, -1.1, -0.01, -0.2]]
FINISHED = [True, False, True]
REF_LOGPROBS = [[-0.2, -0.2, -1.0, -0.15], [-1.5, -0.9], [-0.5, -0.1, -1.2, -1.0, -0.3, -0.05]]
RM_SCORES = [0.75, -1.25, 2.5]


class WordTokenizer:
    def __init__(self):
        self.calls = []

    def batch_decode(self, ids_lists, skip_special_tokens=False):
        self.calls.append(skip_special_tokens)
        return [" ".join(WORDS[i] for i in ids if not (skip_special_tokens and i == EOS)) for ids in ids_lists]


class WordTask:
    """Gold: 0.5 per "good", -1 per "bad", + 0.1 x the prompt's length in characters."""

    def __init__(self):
        self.seen = []

    def gold_score(self, prompt_text, response):
        self.seen.append((prompt_text, response))
        words = response.split()
        return 0.5 * words.count("good") - 1.0 * words.count("bad") + 0.1 * len(prompt_text)


def expected_gold(prompt_text, response):
    total = 0.1 * len(prompt_text)
    for w in response.split():
        if w == "good":
            total += 0.5
        elif w == "bad":
            total -= 1.0
    return total


def make_sample(calls=None):
    def sample(prompt_ids):
        if calls is not None:
            calls.append(("sample", [list(p) for p in prompt_ids]))
        rollouts = [SimpleNamespace(prompt_ids=p, response_ids=r, logprobs=lp, finished_with_eos=f)
                    for p, r, lp, f in zip(prompt_ids, RESPONSES, LOGPROBS, FINISHED)]
        return rollouts_to_batch(rollouts, list(range(len(rollouts))), 0, 0)

    return sample


class Handle:
    def __init__(self, value, name, events):
        self.value, self.name, self.events = value, name, events

    def result(self):
        self.events.append(f"{self.name}.result")
        return self.value


def reference_array():
    return pa.array(REF_LOGPROBS, type=pa.list_(pa.float32()))


def expected_kl():
    out = []
    for policy, ref in zip(LOGPROBS, REF_LOGPROBS):
        total = 0.0
        for p, r in zip(policy, ref):
            total += p - r
        out.append(total)
    return out


def check_common(scores, task, tok):
    assert isinstance(scores, SampleScores) and isinstance(scores.table, pa.Table)
    assert scores.table.num_rows == 3 and scores.table.column("response_ids").to_pylist() == RESPONSES
    assert scores.responses == DECODED and tok.calls == [True]
    assert task.seen == list(zip(PROMPT_TEXTS, DECODED))
    gold = [expected_gold(p, y) for p, y in zip(PROMPT_TEXTS, DECODED)]
    assert scores.gold == pytest.approx(gold, abs=1e-12)
    assert scores.gold == pytest.approx([0.5 + 0.1 * 10, -2.0 + 0.1 * 6, 0.5 + 0.1 * 7], abs=1e-12)  # by hand
    assert scores.lengths == [4, 2, 6]
    assert scores.eos == [True, False, True]


def test_with_reward_and_reference_values():
    calls, task, tok = [], WordTask(), WordTokenizer()
    scores = sample_and_score(make_sample(calls), PROMPTS, PROMPT_IDS, task, tok,
                              reward=lambda table: np.asarray(RM_SCORES, dtype=np.float32),
                              reference=lambda table: reference_array())
    assert calls == [("sample", PROMPT_IDS)]
    check_common(scores, task, tok)
    assert scores.proxy == pytest.approx(RM_SCORES, abs=TOL)
    kl = expected_kl()
    assert len(scores.kl) == 3
    for got, want in zip(scores.kl, kl):
        assert abs(got - want) <= TOL
    # hand-computed KLs: 0.1 - 0.05 - 0.3 + 0.1 = -0.15; -0.5 + 0.2 = -0.3; 0.17 - 0.02 + 0.3 - 0.1 + 0.29 - 0.15 = 0.49
    assert scores.kl == pytest.approx([-0.15, -0.3, 0.49], abs=TOL)

    summary = scores.summary()
    assert set(summary) == {"gold", "proxy", "kl", "response_len", "eos_rate", "prompts"}
    assert summary["prompts"] == 3
    assert summary["gold"] == pytest.approx((1.5 + -1.4 + 1.2) / 3, abs=1e-12)
    assert summary["proxy"] == pytest.approx((0.75 - 1.25 + 2.5) / 3, abs=TOL)
    assert summary["kl"] == pytest.approx((-0.15 - 0.3 + 0.49) / 3, abs=TOL)
    assert summary["response_len"] == pytest.approx(12 / 3)
    assert summary["eos_rate"] == pytest.approx(2 / 3)


def test_reward_and_reference_are_both_started_before_either_is_waited_on():
    events, seen_tables = [], []

    def reward(table):
        events.append("reward.call")
        seen_tables.append(table)
        return Handle(np.asarray(RM_SCORES, dtype=np.float32), "reward", events)

    def reference(table):
        events.append("reference.call")
        seen_tables.append(table)
        return Handle(reference_array(), "reference", events)

    task, tok = WordTask(), WordTokenizer()
    scores = sample_and_score(make_sample(), PROMPTS, PROMPT_IDS, task, tok, reward=reward, reference=reference)
    assert sorted(events) == ["reference.call", "reference.result", "reward.call", "reward.result"]
    first_result = min(events.index("reward.result"), events.index("reference.result"))
    assert events.index("reward.call") < first_result and events.index("reference.call") < first_result
    # both scorers get the sampled rows as a Table
    assert all(isinstance(t, pa.Table) and t.column("response_ids").to_pylist() == RESPONSES for t in seen_tables)
    check_common(scores, task, tok)
    assert scores.proxy == pytest.approx(RM_SCORES, abs=TOL)
    for got, want in zip(scores.kl, expected_kl()):
        assert abs(got - want) <= TOL


def test_without_reward_and_reference():
    task, tok = WordTask(), WordTokenizer()
    scores = sample_and_score(make_sample(), PROMPTS, PROMPT_IDS, task, tok)
    check_common(scores, task, tok)
    assert scores.proxy is None and scores.kl is None
    summary = scores.summary()
    assert summary["proxy"] is None and summary["kl"] is None
    assert summary["gold"] == pytest.approx(1.3 / 3, abs=1e-12)
    assert summary["response_len"] == pytest.approx(4.0) and summary["eos_rate"] == pytest.approx(2 / 3)
    assert summary["prompts"] == 3


def test_prompt_count_mismatch_raises_before_sampling():
    calls = []
    with pytest.raises(ValueError, match="2 prompts but 3 prompt id lists"):
        sample_and_score(make_sample(calls), PROMPTS[:2], PROMPT_IDS, WordTask(), WordTokenizer())
    assert calls == []
