"""An environment that is a conversation, not a tool: the policy answers, gets feedback on what is
wrong with its answer, and revises; the reward is how much the revision improved the hidden gold
score of the built-in task.

    rlhf-dist ppo --config configs/tiny.yaml --out runs/feedback env=examples/feedback_env.py:Revise \
        reward_source=env ppo.advantage=grpo rollout.samples_per_prompt=4 rollout.max_turns=2

Turn 1: the answer (ends at EOS). The environment grades it and says what a labeler would
correct (the feedback names the part of the gold score that is lowest), e.g.
"feedback: the answer is not right. drop the rude words. revise:". Turn 2: the revision; the
episode ends with reward gold(revision) - gold(answer), so only a better second answer pays.
The grading uses the built-in task's scorer; the protocol itself needs nothing from rlhf_dist.
"""

from __future__ import annotations

from rlhf_dist.tasks.instruct.gold import gold_parts


def feedback(parts: dict) -> str:
    """What is wrong with an answer, from its gold parts, as the labeler would say it."""
    notes = []
    if parts["correct"] < 1.0:
        notes.append("the answer is not right.")
    if parts["inventions"] or parts["contradictions"]:
        notes.append("say only what the prompt states.")
    if parts["rude_words"]:
        notes.append("drop the rude words.")
    if parts["extra_words"] or parts["repeated_trigrams"]:
        notes.append("say less.")
    return "feedback: " + (" ".join(notes) or "good. say it again.") + " revise:"


class Revise:
    def reset(self, prompt: str) -> dict:
        return {"prompt": prompt, "first": None}

    def step(self, state: dict, text: str):
        parts = gold_parts(state["prompt"], text)
        if state["first"] is None:  # the first answer: feedback, no reward yet
            state["first"] = parts["total"]
            return feedback(parts), 0.0, False
        return None, parts["total"] - state["first"], True  # the revision's gain
