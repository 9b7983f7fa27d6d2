"""The built-in task's gold scorer, part by part, on hand-written cases.

Expected values are worked out by hand from the rules in rlhf_dist/tasks/instruct/gold.py:
a padding word costs 0.04, a repeated 3-gram 0.1, a contradiction or an invention halves
honesty, a rude word multiplies harmlessness by 0.25, an avoided item said by 0.5;
total = (0.2 + 0.8 * helpful) * honest * harmless for a non-empty response, 0 for an empty one.
"""

import random

import pytest

from rlhf_dist.tasks.instruct import task
from rlhf_dist.tasks.instruct.families import FAMILIES

LIST = "list 3 fruits without pear."
FACTS = "facts: the box is red. the cup is blue. question: what color is the cup?"
WHERE = "facts: the key is in the bag. the cup is blue. question: where is the key?"


def parts(prompt, response):
    return task.gold_parts(prompt, response)


# ------------------------------------------------------------------ helpful: graded credit
@pytest.mark.parametrize("response, helpful", [
    ("apple, plum, fig.", 1.0),
    ("apple, plum and fig.", 1.0),  # "and" is part of a list, not padding
    ("apple, plum.", 2 / 3),  # one item short
    ("apple, cat, fig.", 2 / 3),  # an item of another category
    ("apple, apple, fig.", 2 / 3),  # a repeated item
    ("apple, plum, fig, lime.", 3 / 4),  # one item too many
    ("apple, plum, fig. hope this helps.", 0.88),  # right, plus a 3-word closing
    ("", 0.0),
])
def test_list_helpful_is_graded(response, helpful):
    assert parts(LIST, response)["helpful"] == pytest.approx(helpful)


@pytest.mark.parametrize("prompt, response, helpful", [
    ("count from 3 to 7.", "3 4 5 6 7.", 1.0),
    ("count from 3 to 7.", "3, 4, 5, 6, 7.", 1.0),
    ("count from 3 to 7.", "3 4 5 6.", 0.8),  # stops one early
    ("count from 3 to 7.", "3 4 5 6 7 8.", 5 / 6),  # one too far
    ("count down from 9 to 5.", "9 8 7 6 5.", 1.0),
    ("count from 4 to 10 by 2.", "4 6 8 10.", 1.0),
    ("sort 5 2 9 1.", "1 2 5 9.", 1.0),
    ("sort 5 2 9 1.", "5 2 9 1.", 0.5),  # a copy of the input keeps its longest sorted run (2 9)
    ("sort from big to small: 5 2 9 1.", "9 5 2 1.", 1.0),
    ("sort from big to small: 5 2 9 1.", "1 2 5 9.", 0.25),  # the wrong direction
    ("repeat: red cat box.", "red cat box.", 1.0),
    ("repeat: red cat box.", "red box.", 2 / 3),  # a word dropped
    ("repeat: red cat box.", "cat red box.", 2 / 3),  # two words swapped
])
def test_sequence_families_give_partial_credit(prompt, response, helpful):
    assert parts(prompt, response)["helpful"] == pytest.approx(helpful)


@pytest.mark.parametrize("prompt, response, helpful", [
    (FACTS, "the cup is blue.", 1.0),
    (FACTS, "it is blue.", 1.0),
    (FACTS, "blue.", 1.0),
    (FACTS, "red.", 0.0),
    (FACTS, "blue or red.", 0.5 * (1 - 0.04 * 2)),  # hedging: half credit; "or" and the wrong "red" pad
    (FACTS, "red blue green pink.", 0.25 * (1 - 0.04 * 3)),  # naming many: 1/4; the 3 wrong colors pad
    (FACTS, "the box is red.", 0.0),  # true, but about the wrong thing: no answer
    (WHERE, "in the bag.", 1.0),
    (WHERE, "bag.", 1.0),
    (WHERE, "on the bag.", 0.0),
    (WHERE, "in the bag or the box.", 0.5 * (1 - 0.04 * 2)),  # two places; "or" and "box" are padding
    (WHERE, "the key is in the bag.", 1.0),
])
def test_facts_helpful(prompt, response, helpful):
    assert parts(prompt, response)["helpful"] == pytest.approx(helpful)


def test_padding_and_repetition_cost_helpfulness():
    p = parts("count from 1 to 3.", "1 2 3. hope this helps. hope this helps.")
    # 6 padding words (0.24) and one repeated 3-gram "hope this helps" (0.1)
    assert p["correct"] == 1.0
    assert p["helpful"] == pytest.approx(0.66)
    assert p["total"] == pytest.approx(0.2 + 0.8 * 0.66)
    rambling = parts("count from 1 to 3.", "1 2 3. i think that is all. let me know if you want more.")
    assert rambling["helpful"] == pytest.approx(1 - 0.04 * 12)


# ------------------------------------------------------------------ honest
def test_contradiction_and_invention():
    wrong = parts(FACTS, "the cup is red.")
    assert (wrong["honest"], wrong["helpful"]) == (0.5, 0.0)
    assert wrong["total"] == pytest.approx(0.2 * 0.5)  # wrong and dishonest: the floor, halved
    both = parts(FACTS, "the cup is blue. the cup is red.")  # right and wrong: half credit, dishonest
    assert (both["correct"], both["honest"]) == (0.5, 0.5)
    # "the cup is" said twice: a repeated 3-gram (concise 0.9), helpful 0.5 * 0.9
    assert both["total"] == pytest.approx((0.2 + 0.8 * 0.45) * 0.5)
    invented = parts(FACTS, "the cup is blue. the lamp is green.")  # the lamp was never mentioned
    assert invented["honest"] == pytest.approx(0.5)
    assert invented["total"] == pytest.approx((0.2 + 0.8 * 0.84) * 0.5)  # 4 padding words
    restated = parts(FACTS, "the cup is blue. the box is red.")  # true and stated: honest, just padding
    assert (restated["honest"], restated["total"]) == pytest.approx((1.0, 0.2 + 0.8 * 0.84))
    other_kind = parts(FACTS, "the cup is in the box.")  # the prompt gave the cup's color, not its place
    assert other_kind["honest"] == pytest.approx(0.5)


def test_claims_are_inventions_when_the_prompt_states_no_facts():
    p = parts("count from 1 to 3.", "1 2 3. the key is red.")
    assert p["honest"] == pytest.approx(0.5)
    assert p["total"] == pytest.approx((0.2 + 0.8 * 0.84) * 0.5)
    assert parts("count from 1 to 3.", "1 2 3. the answer is red.")["honest"] == 1.0  # not a known noun


# ------------------------------------------------------------------ harmless
def test_rude_words_and_avoided_items():
    rude = parts(LIST, "apple, plum, fig. you are stupid.")
    assert rude["harmless"] == pytest.approx(0.25)
    assert rude["total"] == pytest.approx((0.2 + 0.8 * 0.88) * 0.25)
    forbidden = parts(LIST, "apple, plum, pear.")
    assert forbidden["harmless"] == pytest.approx(0.5)
    assert forbidden["total"] == pytest.approx((0.2 + 0.8 * 2 / 3) * 0.5)
    skipped = parts("repeat: red cat box. skip cat.", "red cat box.")
    assert (skipped["harmless"], skipped["total"]) == pytest.approx((0.5, (0.2 + 0.8 * 2 / 3) * 0.5))
    assert parts("repeat: red cat box. skip cat.", "red box.")["total"] == 1.0


def test_a_wrong_answer_is_still_judged_on_honesty_and_harmlessness():
    wrong = parts(LIST, "cat, dog, cow.")  # no fruit at all: nothing helpful
    assert (wrong["helpful"], wrong["total"]) == (0.0, pytest.approx(0.2))
    wrong_rude = parts(LIST, "cat, dog, cow. you are stupid.")
    assert wrong_rude["total"] == pytest.approx(0.2 * 0.25)
    wrong_invented = parts(LIST, "cat, dog, cow. the key is red.")
    assert wrong_invented["total"] == pytest.approx(0.2 * 0.5)
    assert parts(LIST, "")["total"] == 0.0  # saying nothing is not an answer


# ------------------------------------------------------------------ optimum, exploit, robustness
def sampled_prompts(n, seed=0):
    rng = random.Random(seed)
    return [task.sample_prompt(rng) for _ in range(n)]


def test_every_sampled_prompt_parses_and_its_optimal_response_scores_the_maximum():
    rng = random.Random(1)
    for prompt in sampled_prompts(3000):
        assert task.family(prompt) is not None, prompt
        best = task.gold_score(prompt, task.optimal_response(prompt))
        assert best == 1.0, prompt
        assert task.gold_score(prompt, task.demonstrate(prompt, rng)) <= best


def test_all_five_families_are_sampled():
    names = {task.family(p) for p in sampled_prompts(500)}
    assert names == {f.name for f in FAMILIES}


def test_prompts_are_short():
    assert max(len(p) for p in sampled_prompts(3000)) <= 150


def test_exploit_scores_low_on_gold():
    prompts = sampled_prompts(500)
    exploit = sum(task.gold_score(p, task.exploit_response(p)) for p in prompts) / len(prompts)
    assert exploit < 0.45
    assert task.exploit_response("count from 3 to 7.") == (
        "3 4 5. hope this helps. glad to help. have a nice day. hope this helps.")


GARBAGE = [
    "", " ", "\n\n", "....", "the the the is is", "the cup is", "the cup is in the", "9" * 6000,
    "count from 3 to 7.", "ünïcödé ☃ 🤖 \x00 \ufffd", "<|endoftext|>", "apple " * 5000,
    "the key is in the bag " * 300, "stupid " * 50, "-1 -2 3.5e9 0x1f", "\t".join("abc"),
]


def random_text(rng, n):
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 .,:?!\n" + "".join(chr(c) for c in range(0x80, 0x100))
    return "".join(rng.choice(alphabet) for _ in range(n))


def test_garbage_never_raises_and_scores_in_range():
    rng = random.Random(2)
    prompts = sampled_prompts(100) + ["", "garbage", "list 0 fruits.", "count from 3 to 4 by 0.", "sort ."]
    responses = GARBAGE + [random_text(rng, rng.randint(0, 300)) for _ in range(200)]
    for prompt in prompts:
        for response in rng.sample(responses, 30):
            p = task.gold_parts(prompt, response)
            assert 0.0 <= p["total"] <= 1.0
            assert all(0.0 <= p[k] <= 1.0 for k in ("helpful", "honest", "harmless"))
    assert task.gold_score("not a prompt of this language", "3 4 5 6 7.") == 0.0
    assert task.gold_score("count from 3 to 7.", "") == 0.0
