"""The built-in task's tool: one call per instruction, error results, the environment protocol,
gold without the tool traffic, demonstrations in turns, and SFT on them (readers, token layout,
loss mask, task-data rows)."""

from __future__ import annotations

import hashlib
import json
import random
import string
from pathlib import Path

import pytest
import torch

from rlhf_dist.data.collate import collate_sft, sft_token_count
from rlhf_dist.data.encode import (
    encode_observation,
    encode_policy_turn,
    encode_response,
    format_prompt,
    tokenize_demonstrations,
    tokenize_sft,
)
from rlhf_dist.data.readers import DataError, SFTExample, load_lm_data, load_sft
from rlhf_dist.models.batching import pad_prompt_response
from rlhf_dist.recipes.task_data import main as task_data_main
from rlhf_dist.tasks import instruct
from rlhf_dist.tasks.instruct import demonstrator, gold
from rlhf_dist.tasks.instruct.families import CountSpec, FactsSpec, ListSpec, RepeatSpec, SortSpec
from rlhf_dist.tasks.instruct.tools import ToolEnv, run_tool, strip_tool_markup, tool_stats

REPO = Path(__file__).resolve().parents[1]


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [demonstrator.sample_prompt(rng) for _ in range(n)]


def my_command(spec) -> str:
    """The call for a spec, written here from the documented command language."""
    if isinstance(spec, SortSpec):
        return f"sort {'down ' if spec.descending else ''}{' '.join(str(x) for x in spec.numbers)}"
    if isinstance(spec, CountSpec):
        return f"count {spec.start} to {spec.stop}" + ("" if spec.step == 1 else f" by {spec.step}")
    if isinstance(spec, ListSpec):
        return f"list {spec.n} {spec.category}" + (" without " + " or ".join(spec.avoid) if spec.avoid else "")
    if isinstance(spec, RepeatSpec):
        return "repeat " + " ".join(spec.words) + (f" skip {spec.skip}" if spec.skip else "")
    assert isinstance(spec, FactsSpec)
    return f"fact {spec.question}"


def result_of(observation: str) -> str:
    assert observation.startswith("<result>") and observation.endswith("</result>")
    return observation[len("<result>"):-len("</result>")]


# --- the command language ------------------------------------------------------------------


def test_examples_of_each_command():
    facts = gold.parse_prompt("facts: the key is in the bag. the cup is red. question: where is the key?")[1].facts
    assert run_tool("sort 41 19 37") == "19 37 41"
    assert run_tool("sort up 41 19 37") == "19 37 41"
    assert run_tool("sort down 41 19 37") == "41 37 19"
    assert run_tool("count 3 to 7") == "3 4 5 6 7"
    assert run_tool("count 9 to 5") == "9 8 7 6 5"
    assert run_tool("count 3 to 11 by 2") == "3 5 7 9 11"
    assert run_tool("count 12 to 6 by 3") == "12 9 6"
    assert run_tool("list 3 fruits without pear or lime") == "apple, plum, fig"
    assert run_tool("list 1 fruit") == "apple"
    assert run_tool("repeat red cat box skip cat") == "red box"
    assert run_tool("repeat red cat box") == "red cat box"
    assert run_tool("fact key", facts) == "the key is in the bag"
    assert run_tool("fact cup", facts) == "the cup is red"
    assert run_tool(" sort 3, 1, 2. ") == "1 2 3"  # the prompt's punctuation copied along


@pytest.mark.parametrize("family", ["list", "count", "sort", "repeat", "facts"])
def test_every_family_answer_is_one_call_away(family):
    """On many sampled prompts of each family, result + "." is the family's optimal answer, both
    for the call written here and for the demonstrator's call."""
    seen = 0
    for prompt in prompts(3000, seed=7):
        fam, spec = gold.parse_prompt(prompt)
        if fam.name != family:
            continue
        seen += 1
        env = ToolEnv()
        for command in (my_command(spec), demonstrator.tool_command(spec)):
            observation, reward, done = env.step(env.reset(prompt), f"<tool>{command}</tool>")
            assert (reward, done) == (0.0, False)
            assert result_of(observation) + "." == fam.optimal(spec), (prompt, command)
            assert gold.gold_score(prompt, result_of(observation) + ".") == 1.0
    assert seen > 450


@pytest.mark.parametrize("command", [
    "", "   ", "hello", "SORT 1 2", "sorts 1 2", "sort", "sort down", "sort 1 x", "sort 1 -2", "sort 1234 5",
    "sort " + " ".join(["1"] * 21), "count", "count 3 to", "count 3 7", "count 3 to 8 by 2", "count 3 to 9 by 0",
    "count 0 to 999", "count a to b", "count 3 to 7 by", "count 3 to 7 step 2", "list", "list fruits",
    "list 3 cars", "list 0 fruits", "list 9 fruits", "list 7 fruits without pear or lime", "list 3 fruits without",
    "list 3 fruits without cat", "list 3 fruits but pear", "list 3 fruits without pear and lime", "repeat",
    "repeat skip cat", "repeat red cat skip dog", "repeat red 7 cat", "fact", "fact key", "fact key cup", "fact dog",
    "9" * 5000,
])
def test_malformed_calls_are_answered_error(command):
    facts = gold.parse_prompt("facts: the cup is red. the hat is blue. question: what color is the cup?")[1].facts
    assert run_tool(command, facts if command.startswith("fact key") else ()) == "error"
    env = ToolEnv()
    state = env.reset("count from 3 to 7.")
    assert env.step(state, f"<tool>{command}</tool>") == ("<result>error</result>", 0.0, False)


def test_fact_lookup_needs_the_prompts_facts():
    env = ToolEnv()
    state = env.reset("facts: the cup is red. the hat is blue. question: what color is the cup?")
    assert env.step(state, "<tool>fact hat</tool>")[0] == "<result>the hat is blue</result>"
    assert env.step(state, "<tool>fact key</tool>")[0] == "<result>error</result>"
    state = env.reset("sort 3 1 2.")  # no facts stated
    assert env.step(state, "<tool>fact hat</tool>")[0] == "<result>error</result>"


def test_garbage_never_raises():
    rng = random.Random(3)
    alphabet = string.ascii_lowercase[:6] + string.digits + " <>/,.-" + "\n"
    words = ["sort", "count", "list", "repeat", "fact", "to", "by", "without", "or", "skip", "down", "fruits"]
    env = ToolEnv()
    for _ in range(3000):
        parts = [rng.choice(words) if rng.random() < 0.5 else "".join(rng.choices(alphabet, k=rng.randint(0, 6)))
                 for _ in range(rng.randint(0, 8))]
        text = " ".join(parts)
        assert isinstance(run_tool(text), str)
        state = env.reset(rng.choice(["sort 3 1 2.", "", "facts: the cup is red. question: what color is the cup?"]))
        observation, reward, done = env.step(state, f"<tool>{text}</tool>")
        assert observation.startswith("<result>") and reward == 0.0 and done is False
        assert isinstance(strip_tool_markup(text + "<tool>" + text), str)
        assert set(tool_stats(f"<tool>{text}</tool>")) == {"calls", "malformed"}
    assert run_tool(None) == "error"
    assert env.step(env.reset(None), None) == (None, 0.0, True)


# --- the environment ------------------------------------------------------------------------


def test_episode_protocol():
    env = ToolEnv()
    assert env.stop == ["</tool>"]
    assert instruct.tool_env is ToolEnv and instruct.ToolEnv is ToolEnv
    prompt = "sort from big to small: 12 5 33 7."
    state = env.reset(prompt)
    # the rollout ends a turn right after the stop string, which stays in the turn
    assert env.step(state, "<tool>sort down 12 5 33 7</tool>") == ("<result>33 12 7 5</result>", 0.0, False)
    # the last complete call of a turn is the one answered
    assert env.step(state, "<tool>sort 1 2</tool> then <tool>sort 9 8</tool>") == ("<result>8 9</result>", 0.0, False)
    # no call, or an unfinished one: the final answer, the episode ends
    assert env.step(state, "33 12 7 5.") == (None, 0.0, True)
    assert env.step(env.reset(prompt), "<tool>sort 12 5") == (None, 0.0, True)
    assert env.step(env.reset(prompt), "") == (None, 0.0, True)


def test_call_limit_and_independent_episodes():
    env = ToolEnv()
    a, b = env.reset("count from 1 to 3."), env.reset("count from 4 to 6.")
    for _ in range(3):
        assert env.step(a, "<tool>count 1 to 3</tool>") == ("<result>1 2 3</result>", 0.0, False)
    assert env.step(b, "<tool>count 4 to 6</tool>") == ("<result>4 5 6</result>", 0.0, False)  # b has its own count
    assert env.step(a, "<tool>count 1 to 3</tool>") == (None, 0.0, True)  # a 4th call ends the episode
    assert env.step(b, "<tool>count 4 to 6</tool>")[2] is False
    one = ToolEnv(max_calls=1)
    s = one.reset("count from 1 to 3.")
    assert one.step(s, "<tool>count 1 to 3</tool>")[2] is False
    assert one.step(s, "<tool>count 1 to 3</tool>") == (None, 0.0, True)


# --- reading responses ----------------------------------------------------------------------


def test_strip_tool_markup():
    assert strip_tool_markup("<tool>sort 3 1</tool> <result>1 3</result> 1 3.") == "1 3."
    assert strip_tool_markup("a  <tool>x</tool>b<result>y</result>\n c") == "a b c"
    assert strip_tool_markup("1 3. <tool>sort 3 1") == "1 3."  # a dangling call
    assert strip_tool_markup("<result>1 3</result>") == ""  # an answer inside the markup is no answer
    assert strip_tool_markup("<tool>a\nb</tool>ok") == "ok"
    assert strip_tool_markup("plain   answer.\n") == "plain answer."
    assert strip_tool_markup("1 <result>2") == "1 <result>2"  # stray tags stay (and cost as extra words)
    assert strip_tool_markup(None) == ""


def test_tool_stats():
    assert tool_stats("19 37 41.") == {"calls": 0, "malformed": 0}
    ok = "<tool>sort 41 19 37</tool> <result>19 37 41</result> 19 37 41."
    assert tool_stats(ok) == {"calls": 1, "malformed": 0}
    bad = "<tool>srt 1 2</tool> <result>error</result> <tool>sort 2 1</tool> <result>1 2</result> 1 2."
    assert tool_stats(bad) == {"calls": 2, "malformed": 1}
    # calls without results are run here; a fact lookup needs the prompt
    facts = "facts: the cup is red. question: what color is the cup?"
    assert tool_stats("<tool>fact cup</tool> red.", facts) == {"calls": 1, "malformed": 0}
    assert tool_stats("<tool>fact cup</tool> red.") == {"calls": 1, "malformed": 1}
    assert tool_stats("<tool>sort 1 2") == {"calls": 0, "malformed": 0}
    assert tool_stats(None) == {"calls": 0, "malformed": 0}


# --- gold grades the answer, not the tool traffic -------------------------------------------

# sha256 of the responses and their gold parts below, computed with the gold scorer and
# demonstrator as they were before the tool existed: neither may move without markup.
GOLD_DIGEST = "d9d5f93a4acccfc9148fc76e1d5ec3b75a0b9fb16189c1459c04dc47e7fe943a"


def test_gold_and_demonstrations_unchanged_without_markup():
    rng = random.Random(2024)
    lines = []
    for i in range(3000):
        p = demonstrator.sample_prompt(rng)
        habits = demonstrator.CARELESS if i % 3 == 2 else None
        for r in (demonstrator.respond(p, rng, habits), demonstrator.exploit_response(p)):
            assert "<" not in r
            parts = gold.gold_parts(p, r)
            lines.append(r + " | " + " ".join(f"{k}={round(float(v), 9)!r}" for k, v in sorted(parts.items())))
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == GOLD_DIGEST


def test_gold_of_call_result_and_answer_is_gold_of_the_answer():
    rng = random.Random(5)
    checked = 0
    for prompt in prompts(600, seed=11):
        fam, spec = gold.parse_prompt(prompt)
        env = ToolEnv()
        call = f"<tool>{my_command(spec)}</tool>"
        observation, _, _ = env.step(env.reset(prompt), call)
        for answer in (fam.optimal(spec), demonstrator.respond(prompt, rng)):
            with_tool = f"{call} {observation} {answer}"
            assert gold.gold_parts(prompt, with_tool) == gold.gold_parts(prompt, answer)
            assert gold.correctness([prompt], [with_tool]) == gold.correctness([prompt], [answer])
            checked += 1
        # the result alone, without an answer after it, is not an answer
        assert gold.gold_score(prompt, f"{call} {observation}") == 0.0
    assert checked == 1200


# --- demonstrations in turns ----------------------------------------------------------------


def test_share_of_tool_demonstrations_and_their_observations():
    rng = random.Random(0)
    turns = [demonstrator.respond_turns(p, rng, 0.4) for p in prompts(2000, seed=1)]
    with_tool = [t for t in turns if len(t) > 1]
    assert 0.36 < len(with_tool) / len(turns) < 0.44  # 0.4 +- 4 standard deviations
    assert all(len(t) in (1, 3) for t in turns)
    env = ToolEnv()
    correct = malformed = 0
    for p, t in zip(prompts(2000, seed=1), turns):
        if len(t) == 1:
            continue
        call, observation, answer = t
        assert call.startswith("<tool>") and call.endswith("</tool>") and call.count("</tool>") == 1
        assert env.step(env.reset(p), call) == (observation, 0.0, False)  # exactly the env's answer
        assert "<" not in answer
        malformed += tool_stats(" ".join(t))["malformed"]
        correct += gold.gold_parts(p, " ".join(t))["correct"] >= 1.0
    # bad calls: 5% malformed, 5% asking the wrong thing; the answers are otherwise copied results
    assert 0.02 < malformed / len(with_tool) < 0.09
    assert 0.85 < correct / len(with_tool) < 0.97


def test_no_tool_leaves_the_respond_stream_byte_identical():
    ps = prompts(800, seed=2)
    a, b = random.Random(9), random.Random(9)
    for p in ps:
        assert demonstrator.respond_turns(p, a, 0.0) == [demonstrator.respond(p, b)]
    assert a.getstate() == b.getstate()
    # with the tool on, rng still advances as respond makes it, and the demonstrations that do
    # not use the tool are the very responses of respond
    a, b = random.Random(9), random.Random(9)
    singles = 0
    for p in ps:
        turns, plain = demonstrator.respond_turns(p, a, 0.5), demonstrator.respond(p, b)
        if len(turns) == 1:
            assert turns == [plain]
            singles += 1
    assert a.getstate() == b.getstate() and 300 < singles < 500
    assert instruct.task.demonstrate_turns(ps[0], random.Random(1), 0.0) == [instruct.task.demonstrate(
        ps[0], random.Random(1))]


# --- SFT rows with turns --------------------------------------------------------------------


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


TURNS = ["<tool>sort 3 1 2</tool>", "<result>1 2 3</result>", "1 2 3. hope this helps."]


def test_turns_rows_parse(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [
        {"prompt": "sort 3 1 2.", "turns": TURNS},
        {"prompt": "sort 3 1 2.", "response": "1 2 3."},
        {"prompt": "sort 3 1 2.", "turns": ["1 2 3."]},
        {"messages": [{"role": "user", "content": "sort 3 1 2."}], "turns": TURNS},
    ])
    a, b, c, d = load_sft(path)
    assert a == SFTExample("sort 3 1 2.", " ".join(TURNS), tuple(TURNS))
    assert b == SFTExample("sort 3 1 2.", "1 2 3.") and b.turns is None
    assert c.turns == ("1 2 3.",) and c.response == "1 2 3."
    assert d.prompt == [{"role": "user", "content": "sort 3 1 2."}] and d.turns == tuple(TURNS)
    assert load_lm_data(path)[0] == a
    # an environment turn may be empty; a policy turn may not
    write_jsonl(path, [{"prompt": "p", "turns": ["<tool>x</tool>", "", "done."]}])
    assert load_sft(path)[0].turns == ("<tool>x</tool>", "", "done.")


@pytest.mark.parametrize("turns, message", [
    ("a b", "sft.jsonl:2: field 'turns': expected a non-empty list of strings (policy, environment, ..., policy), "
            "got str"),
    ([], "sft.jsonl:2: field 'turns': expected a non-empty list of strings (policy, environment, ..., policy), "
         "got an empty list"),
    (["a", "b"], "sft.jsonl:2: field 'turns': 2 turns; expected an odd number"),
    (["a", 3, "c"], "sft.jsonl:2: field 'turns': turn 1 is int, expected a string"),
    (["a", "b", " "], "sft.jsonl:2: field 'turns': turn 2 (policy) is empty"),
    (None, "sft.jsonl:2: field 'turns': expected a non-empty list of strings"),
])
def test_bad_turns_rows_are_one_line_errors(tmp_path, turns, message):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "p", "response": "r"}, {"prompt": "p", "turns": turns}])
    with pytest.raises(DataError) as err:
        load_sft(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_turns_row_without_prompt(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"turns": ["a"]}])
    with pytest.raises(DataError, match=r"sft.jsonl:1: missing field 'prompt'"):
        load_sft(path)


def test_turns_in_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "sft.parquet"
    pq.write_table(pa.table({"prompt": ["p", "q"], "turns": [TURNS, ["ok."]]}), path)
    assert [e.turns for e in load_sft(path)] == [tuple(TURNS), ("ok.",)]


# --- token layout and loss mask -------------------------------------------------------------


@pytest.fixture(scope="module")
def tok():
    """A byte-level BPE trained on a few hundred texts of the task, some with tool traffic."""
    from rlhf_dist.models import train_bpe_tokenizer

    rng = random.Random(4)
    texts = [demonstrator.pretrain_text(rng) for _ in range(300)]
    texts += [p + "\n" + " ".join(demonstrator.respond_turns(p, rng, 1.0)) for p in prompts(200, seed=4)]
    return train_bpe_tokenizer(texts, vocab_size=400)


def test_tokenized_layout_and_mask(tok):
    rng = random.Random(6)
    examples = []
    for p in prompts(200, seed=6):
        turns = demonstrator.respond_turns(p, rng, 0.5)
        examples.append(SFTExample(p, " ".join(turns), tuple(turns)) if len(turns) > 1 else SFTExample(p, turns[0]))
    items, stats = tokenize_sft(examples, tok, max_len=512)
    assert stats["kept"] == len(examples) == len(items)
    multi = 0
    for e, item in zip(examples, items):
        assert item[0] == format_prompt(tok, e.prompt)
        if e.turns is None:  # single turn: the pair of before
            assert item == (format_prompt(tok, e.prompt), encode_response(tok, e.response))
            continue
        multi += 1
        prompt_ids, response_ids, mask = item
        segments = [encode_policy_turn(tok, t, i == len(e.turns) - 1) if i % 2 == 0 else encode_observation(tok, t)
                    for i, t in enumerate(e.turns)]
        assert response_ids == [x for s in segments for x in s]
        assert mask == [i % 2 == 0 for i, s in enumerate(segments) for _ in s]
        assert response_ids[-1] == tok.eos_token_id and response_ids.count(tok.eos_token_id) == 1
        assert any(mask) and not all(mask)
        # the observation's tokens decode to the observation (what the rollout appends)
        start = len(segments[0])
        assert tok.decode(response_ids[start:start + len(segments[1])]) == e.turns[1]
    assert 60 < multi < 140
    # the LM view (ptx) is the same ids
    seqs, _ = tokenize_demonstrations(examples, tok, max_len=512)
    assert seqs == [it[0] + it[1] for it in items]


def test_collate_masks_environment_tokens_and_keeps_pairs_as_before(tok):
    pair = ([1, 5, 6], [7, 8, 2])
    triple = ([1, 9], [10, 11, 12, 13, 2], [True, False, False, True, True])
    only_pairs = collate_sft([pair, ([1], [4, 2])], pad_id=0)
    plain = pad_prompt_response([[1, 5, 6], [1]], [[7, 8, 2], [4, 2]], 0)
    for name in ("input_ids", "attention_mask", "position_ids", "response_mask"):
        assert torch.equal(getattr(only_pairs, name), getattr(plain, name))
    batch = collate_sft([pair, triple], pad_id=0)
    assert batch.response_mask.tolist() == [[True, True, True, False, False], [True, False, False, True, True]]
    assert batch.attention_mask[1].tolist() == [0, 1, 1, 1, 1, 1, 1, 1]  # environment tokens are attended to
    assert sft_token_count([pair, triple]) == int(batch.response_mask.sum()) == 6
    with pytest.raises(ValueError, match="loss mask"):
        collate_sft([([1], [2, 3], [True])], pad_id=0)


def test_sft_loss_counts_policy_tokens_only():
    from rlhf_dist.engines.objectives import OBJECTIVES

    torch.manual_seed(0)
    table = torch.randn(20, 20)

    class Lookup:  # logits that depend on the input token only
        def __call__(self, input_ids, **kwargs):
            return type("Out", (), {"logits": table[input_ids]})()

    triple = ([1, 9], [10, 11, 12, 13, 2], [True, False, False, True, True])
    sft = OBJECTIVES["sft"]
    loss, sums = sft.loss(Lookup(), sft.collate([triple], 0), 1.0)
    # token t is predicted from the token before it; targets are tokens 0, 3, 4 of the response
    sequence = [1, 9, 10, 11, 12, 13, 2]
    logp = torch.log_softmax(table, -1)
    expected = -sum(float(logp[sequence[1 + t], sequence[2 + t]]) for t in (0, 3, 4))
    assert sums["tokens"] == 3.0 == sft.count([triple])
    assert sums["nll_sum"] == pytest.approx(expected, rel=1e-5)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


# --- task-data ------------------------------------------------------------------------------

SMALL = ["n_pretrain=200", "n_pretrain_heldout=20", "n_sft=400", "n_rl_prompts=20", "n_eval_prompts=20",
         "n_comparisons=20", "n_comparisons_heldout=10", "n_agreement_pairs=50", "probe=0"]


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_task_data_tool_share(tmp_path):
    assert task_data_main(["--out", str(tmp_path / "plain"), *SMALL]) == 0
    assert task_data_main(["--out", str(tmp_path / "tools"), *SMALL, "tool_share=0.5"]) == 0
    plain, tools = rows(tmp_path / "plain" / "sft.jsonl"), rows(tmp_path / "tools" / "sft.jsonl")
    assert all(set(r) == {"prompt", "response"} for r in plain)
    multi = [r for r in tools if "turns" in r]
    assert 0.4 < len(multi) / len(tools) < 0.6
    assert all(set(r) == {"prompt", "turns"} and len(r["turns"]) == 3 for r in multi)
    # same prompts; the demonstrations without the tool are those of tool_share=0
    assert [r["prompt"] for r in plain] == [r["prompt"] for r in tools]
    assert all(t == p for t, p in zip(tools, plain) if "turns" not in t)
    for name in ("pretrain.jsonl", "comparisons.jsonl", "eval_prompts.jsonl"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "tools" / name).read_bytes()
    manifest = json.loads((tmp_path / "tools" / "manifest.json").read_text())
    assert manifest["config"]["tool_share"] == 0.5
    assert manifest["stats"]["demonstrations_with_tool"] == pytest.approx(len(multi) / len(tools))
    examples = load_sft(tmp_path / "tools" / "sft.jsonl")  # the SFT stage reads them
    assert sum(e.turns is not None for e in examples) == len(multi)


def test_tool_share_needs_a_task_with_turns(tmp_path, capsys):
    out = tmp_path / "echo"
    assert task_data_main(["--out", str(out), *SMALL, f"task={REPO / 'examples' / 'echo_task.py'}:task",
                           "tool_share=0.3"]) == 2
    assert "demonstrate_turns" in capsys.readouterr().err and not out.exists()
    assert task_data_main(["--out", str(out), *SMALL, "tool_share=1.5"]) == 2
