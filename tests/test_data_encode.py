"""Prompt formatting, EOS on every target, length budgets and their statistics, text chunking.

Exact expectations use a word tokenizer whose ids can be written by hand ("7" -> 17, "\\n" -> 3,
BOS 1, EOS 2); the BPE checks run on the built-in task's data with a tokenizer trained on its
pretraining corpus, and on the tiny model folder's saved tokenizer.
"""

from __future__ import annotations

import re

import pytest

from rlhf_dist.data import (
    Comparison,
    DataError,
    SFTExample,
    encode_response,
    format_prompt,
    load_comparisons,
    load_prompts,
    load_sft,
    load_texts,
    tokenize_comparisons,
    tokenize_demonstrations,
    tokenize_prompts,
    tokenize_sft,
    tokenize_texts,
    truncate_middle,
)
from rlhf_dist.tasks.base import join_prompt_response

BOS, EOS, NL = 1, 2, 3


class WordTokenizer:
    """Numbers separated by spaces; "n" -> n + 10, "\\n" -> 3; BOS prepended with special tokens."""

    chat_template = None
    pad_token_id, bos_token_id, eos_token_id = 0, BOS, EOS

    def _encode(self, text: str, add_special_tokens: bool) -> list[int]:
        ids = [NL if t == "\n" else int(t) + 10 for t in re.findall(r"\n|[^ \n]+", text)]
        return ([BOS] if add_special_tokens else []) + ids

    def __call__(self, texts, add_special_tokens: bool = True):
        if isinstance(texts, str):
            return {"input_ids": self._encode(texts, add_special_tokens)}
        return {"input_ids": [self._encode(t, add_special_tokens) for t in texts]}


def words(*ns: int) -> str:
    return " ".join(str(n) for n in ns)


# --- the word tokenizer: exact token lists ----------------------------------------------------


def test_format_and_response_ids_by_hand():
    tok = WordTokenizer()
    assert format_prompt(tok, "4 5") == [BOS, 14, 15, NL]
    assert format_prompt(tok, [{"role": "user", "content": "4"}, {"role": "assistant", "content": "5"}, {"role": "user", "content": "6"}]) == [BOS, 14, NL, 15, NL, 16, NL]
    assert encode_response(tok, "7 8") == [17, 18, EOS]
    assert encode_response(tok, "") == [EOS]


def test_truncate_middle_by_hand():
    ids = [BOS, 11, 12, 13, 14, 15, NL]
    assert truncate_middle(ids, 4) == [BOS, 11, 15, NL]
    assert truncate_middle(ids, 5) == [BOS, 11, 14, 15, NL]  # odd budgets favour the end
    assert truncate_middle(ids, 2) == [BOS, NL]
    assert truncate_middle(ids, 7) == ids
    with pytest.raises(ValueError):
        truncate_middle(ids, 1)


def crafted_set():
    """max_len = 8. Ids: prompt "1 2" -> [BOS, 11, 12, NL] (4), response "5" -> [15, EOS] (2)."""
    return [
        SFTExample(words(1, 2), words(5)),  # 4 + 2: fits
        SFTExample(words(1, 2, 3, 4, 5, 6), words(7)),  # 8 + 2: prompt cut to 6 in middle mode
        SFTExample(words(1), words(1, 2, 3, 4, 5, 6, 7)),  # 3 + 8: the response alone fills max_len
        SFTExample(words(1, 2, 3, 4, 5, 6, 7, 8), words(1, 2, 3, 4, 5, 6)),  # 10 + 7: budget 1 < 2
    ]


def test_middle_truncation_and_stats_on_a_crafted_set():
    pairs, stats = tokenize_sft(crafted_set(), WordTokenizer(), max_len=8, truncation="middle")
    assert pairs == [
        ([BOS, 11, 12, NL], [15, EOS]),
        ([BOS, 11, 12, 15, 16, NL], [17, EOS]),  # first and last tokens kept, the response intact
    ]
    assert stats == {
        "total": 4,
        "kept": 2,
        "prompt_truncated": 1,
        "dropped_too_long": 2,
        "dropped_response_too_long": 1,
        "prompt_len_max_before": 10,
        "prompt_len_mean_before": (4 + 8 + 3 + 10) / 4,
        "response_len_max_before": 8,
        "response_len_mean_before": (2 + 2 + 8 + 7) / 4,
        "prompt_len_max_after": 6,
        "prompt_len_mean_after": 5.0,
        "response_len_max_after": 2,
        "response_len_mean_after": 2.0,
        "seq_len_max_after": 8,
    }


def test_skip_and_error_modes():
    pairs, stats = tokenize_sft(crafted_set(), WordTokenizer(), max_len=8, truncation="skip")
    assert pairs == [([BOS, 11, 12, NL], [15, EOS])]
    assert (stats["kept"], stats["prompt_truncated"], stats["dropped_too_long"], stats["dropped_response_too_long"]) == (1, 0, 3, 1)
    with pytest.raises(DataError, match=r"^example 1: prompt of 8 tokens \+ response of 2 tokens does not fit max_len=8"):
        tokenize_sft(crafted_set(), WordTokenizer(), max_len=8, truncation="error")
    # everything fits: the error mode passes the data through unchanged
    pairs, stats = tokenize_sft(crafted_set()[:1], WordTokenizer(), max_len=8, truncation="error")
    assert pairs == [([BOS, 11, 12, NL], [15, EOS])] and stats["kept"] == 1
    with pytest.raises(ValueError, match="unknown truncation"):
        tokenize_sft(crafted_set(), WordTokenizer(), max_len=8, truncation="left")


def test_max_prompt_len_caps_the_prompt_on_its_own():
    pairs, stats = tokenize_sft([SFTExample(words(1, 2), words(5))], WordTokenizer(), max_len=100, max_prompt_len=3)
    assert pairs == [([BOS, 12, NL], [15, EOS])] and stats["prompt_truncated"] == 1
    prompts, stats = tokenize_prompts([words(1, 2, 3, 4), words(1)], WordTokenizer(), max_prompt_len=4)
    assert prompts == [[BOS, 11, 14, NL], [BOS, 11, NL]] and stats["prompt_truncated"] == 1
    prompts, stats = tokenize_prompts([words(1, 2, 3, 4), words(1)], WordTokenizer(), max_prompt_len=4, truncation="skip")
    assert prompts == [[BOS, 11, NL]] and stats["dropped_too_long"] == 1


def test_comparisons_ranks_and_whole_drop():
    comps = [
        Comparison(words(1), [words(5), words(6, 7), words(8)], [2, 0, 1]),
        Comparison(words(1, 2, 3, 4), [words(5), words(6, 7, 8, 9)], [1, 0]),  # 6 + 5: prompt cut to 3
        Comparison(words(1), [words(5), words(1, 2, 3, 4, 5, 6, 7)], [0, 1]),  # one response fills max_len
    ]
    items, stats = tokenize_comparisons(comps, WordTokenizer(), max_len=8)
    assert [(it.prompt_ids, it.response_ids, it.ranks) for it in items] == [
        ([BOS, 11, NL], [[15, EOS], [16, 17, EOS], [18, EOS]], [1, 2, 0]),  # ranking [2, 0, 1]: response 2 best
        ([BOS, 14, NL], [[15, EOS], [16, 17, 18, 19, EOS]], [1, 0]),
    ]
    assert (stats["total"], stats["kept"], stats["prompt_truncated"], stats["dropped_too_long"]) == (3, 2, 1, 1)
    assert stats["dropped_response_too_long"] == 1 and stats["seq_len_max_after"] == 8
    assert stats["response_len_max_before"] == 8 and stats["response_len_max_after"] == 5


def test_tokenize_texts_windows_predict_every_token_once():
    texts = [words(1, 2, 3, 4, 5, 6), words(1, 2)]
    seqs, stats = tokenize_texts(texts, WordTokenizer(), max_len=3)
    full = [BOS, 11, 12, 13, 14, 15, 16, EOS]
    assert seqs == [[BOS, 11, 12], [12, 13, 14], [14, 15, 16], [16, EOS], [BOS, 11, 12], [12, EOS]]
    # brute force: the (context end, target) pairs of the windows are exactly those of the full text, once each
    targets = [(s[t], s[t + 1]) for s in seqs[:4] for t in range(len(s) - 1)]
    assert targets == [(full[t], full[t + 1]) for t in range(len(full) - 1)]
    assert stats == {"texts": 2, "sequences": 6, "split_texts": 2, "tokens": 8 + 4, "text_len_max": 8, "text_len_mean": 6.0, "loss_tokens": 7 + 3}
    seqs, stats = tokenize_texts(texts, WordTokenizer(), max_len=8)
    assert seqs == [full, [BOS, 11, 12, EOS]] and stats["split_texts"] == 0


def test_tokenize_demonstrations_are_the_sft_ids_windowed():
    """Demonstrations for the ptx mix: BOS + prompt + "\\n" + response + EOS, written out by hand."""
    demos = [SFTExample(words(4, 5), words(6, 7)), SFTExample(words(1), words(2, 3, 4, 5, 6))]
    seqs, stats = tokenize_demonstrations(demos, WordTokenizer(), max_len=6)
    first = [BOS, 14, 15, NL, 16, 17, EOS]  # 7 tokens > 6: two windows overlapping by one token
    second = [BOS, 11, NL, 12, 13, 14, 15, 16, EOS]
    assert seqs == [first[:6], first[5:], second[:6], second[5:]]
    assert (stats["texts"], stats["sequences"], stats["split_texts"], stats["loss_tokens"]) == (2, 4, 2, 6 + 8)
    seqs, _ = tokenize_demonstrations(demos, WordTokenizer(), max_len=16)
    assert seqs == [first, second]


# --- a real BPE tokenizer: the task's data ----------------------------------------------------


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    """The built-in task's files (small counts) and a 512-token BPE trained on its pretraining corpus."""
    from rlhf_dist.models import train_bpe_tokenizer
    from rlhf_dist.recipes.task_data import main

    out = tmp_path_factory.mktemp("task_data") / "data"
    main(["--out", str(out), "n_pretrain=2000", "n_sft=300", "n_rl_prompts=50", "n_eval_prompts=50",
          "n_comparisons=50", "n_comparisons_heldout=20", "probe=0"])  # fmt: skip
    tok = train_bpe_tokenizer(load_texts(out / "pretrain.jsonl"), vocab_size=512)
    return out, tok


def test_no_bpe_boundary_mismatch_with_the_pretraining_format(task_data):
    """format_prompt(p) + response tokens == tokens of the pretraining text p + "\\n" + r (minus EOS)."""
    out, tok = task_data
    pairs = [(e.prompt, e.response) for e in load_sft(out / "sft.jsonl")]
    pairs += [(c.prompt, r) for c in load_comparisons(out / "comparisons.jsonl") for r in c.responses]
    # pretraining texts that are a prompt/response pair, split at the separator
    pairs += [tuple(t.split("\n", 1)) for t in load_texts(out / "pretrain.jsonl") if "\n" in t]
    assert len(pairs) > 1000
    bad = [
        (p, r) for p, r in pairs
        if format_prompt(tok, p) + encode_response(tok, r)[:-1] != tok(join_prompt_response(p, r))["input_ids"]
    ]  # fmt: skip
    assert bad == []
    # and tokenize_texts gives the very same ids, EOS included
    p, r = pairs[0]
    seqs, _ = tokenize_texts([join_prompt_response(p, r)], tok, max_len=512)
    assert seqs == [format_prompt(tok, p) + encode_response(tok, r)]


def test_eos_ends_every_target_and_budgets_hold(task_data):
    out, tok = task_data
    eos = tok.eos_token_id
    sft = load_sft(out / "sft.jsonl")
    pairs, stats = tokenize_sft(sft, tok, max_len=40)
    assert stats["kept"] + stats["dropped_too_long"] == stats["total"] == len(sft)
    assert stats["prompt_truncated"] > 0 and stats["seq_len_max_after"] <= 40
    for p, r in pairs:
        assert r[-1] == eos and eos not in r[:-1]
        assert p[0] == tok.bos_token_id and len(p) + len(r) <= 40
    # kept responses are the untouched encodings: decoding gives back a demonstration
    responses = {e.response for e in sft}
    assert all(tok.decode(r[:-1]) in responses for _, r in pairs)
    items, stats = tokenize_comparisons(load_comparisons(out / "comparisons.jsonl"), tok, max_len=40)
    assert stats["kept"] > 0
    assert all(r[-1] == eos for it in items for r in it.response_ids)
    assert all(len(it.prompt_ids) + len(r) <= 40 for it in items for r in it.response_ids)
    prompts, _ = tokenize_prompts(load_prompts(out / "rl_prompts.jsonl"), tok, max_prompt_len=64)
    assert len(prompts) == 50 and all(p[0] == tok.bos_token_id for p in prompts)


def test_saved_tokenizer_folder(tiny_model_dir):
    """The tokenizer as the learner loads it (AutoTokenizer from the folder): BOS kept, EOS appended."""
    from rlhf_dist.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    assert not getattr(tok, "chat_template", None)
    ids = format_prompt(tok, "the cat sat")
    assert ids[0] == tok.bos_token_id and tok.bos_token_id not in ids[1:]
    assert tok.decode(ids[1:]) == "the cat sat\n"
    r = encode_response(tok, "on the mat")
    assert r[-1] == tok.eos_token_id and tok.decode(r[:-1]) == "on the mat"
    assert ids + r[:-1] == tok("the cat sat\non the mat")["input_ids"]


# --- chat templates ---------------------------------------------------------------------------

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


def test_chat_template_path(tiny_model_dir):
    from rlhf_dist.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    tok.chat_template = TEMPLATE
    rendered = "<s>[user] the cat sat\n[assistant] "  # written by hand from TEMPLATE
    expected = tok(rendered, add_special_tokens=False)["input_ids"]
    ids = format_prompt(tok, "the cat sat")  # a string is one user message
    assert ids == expected
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1  # no second BOS
    chat = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "a dog"}]
    rendered = "<s>[system] be nice\n[user] a dog\n[assistant] "
    assert format_prompt(tok, chat) == tok(rendered, add_special_tokens=False)["input_ids"]
    pairs, _ = tokenize_sft([SFTExample(chat, "red box")], tok, max_len=64)
    assert pairs == [(tok(rendered, add_special_tokens=False)["input_ids"], tok("red box", add_special_tokens=False)["input_ids"] + [tok.eos_token_id])]


def test_observation_through_the_chat_template(tiny_model_dir):
    """An episode's observation is what the template adds for a user message and the next
    assistant header, written out here by hand; without a template, the text on its own."""
    from rlhf_dist.data import encode_observation
    from rlhf_dist.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    plain = encode_observation(tok, "<result>3 4 5</result>")
    assert plain == tok("<result>3 4 5</result>", add_special_tokens=False)["input_ids"]
    tok.chat_template = TEMPLATE
    want = tok("[user] <result>3 4 5</result>\n[assistant] ", add_special_tokens=False)["input_ids"]
    assert encode_observation(tok, "<result>3 4 5</result>") == want != plain
