"""Prompt formatting, tokenisation and length budgets (ppo-details items 2, 3 and 5).

The one text format of a pair is `prompt + "\\n" + response` (RESPONSE_SEPARATOR), the format the
base model is pretrained on. Token ids are built so that, for a tokenizer without a chat template,

    format_prompt(tok, prompt) + encode_response(tok, response)[:-1] == tok(prompt + "\\n" + response).input_ids

(BOS from the tokenizer's post-processor, EOS appended to every target). With a byte-level BPE
this holds whenever the prompt does not end in whitespace (pre-tokens never cross the "\\n"
boundary otherwise); tests check it on the built-in task's data.

Length rules (no silent corruption of targets):
- a response (with its EOS) is never truncated: an example whose response does not fit is
  dropped and counted;
- a prompt is never cut from the end (its suffix is what the model answers): "middle" removes
  tokens from its middle, keeping the start (BOS, first tokens) and the end; "skip" drops the
  example; "error" raises DataError.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rlhf_dist.algo.ranking import ranks_from_ordering
from rlhf_dist.data.readers import Comparison, DataError, Prompt, SFTExample
from rlhf_dist.tasks.base import RESPONSE_SEPARATOR

TRUNCATION_MODES = ("middle", "skip", "error")


@dataclass(frozen=True)
class TokenizedComparison:
    """One ranked prompt as token ids.

    prompt_ids: the formatted prompt; response_ids: K lists, each ending in EOS;
    ranks: (K,) rank of each response, 0 = best (`ranks_from_ordering` of the ranking).
    """

    prompt_ids: list
    response_ids: list
    ranks: list


# ---------------------------------------------------------------------------------------------
# Formatting


def has_chat_template(tokenizer) -> bool:
    """True when the tokenizer carries a chat template (then prompts are rendered with it)."""
    return bool(getattr(tokenizer, "chat_template", None))


def _messages(prompt: Prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def prompt_text(prompt: Prompt) -> str:
    """The plain-text prompt of the pretraining format: the string, or the contents of the
    messages joined by the separator (one line per turn, as pairs are written in pretraining)."""
    if isinstance(prompt, str):
        return prompt
    return RESPONSE_SEPARATOR.join(m["content"] for m in prompt)


def format_prompts(tokenizer, prompts: Sequence[Prompt]) -> list[list[int]]:
    """Batch version of `format_prompt`: one id list per prompt."""
    if not prompts:
        return []
    if has_chat_template(tokenizer):
        texts = [
            tokenizer.apply_chat_template(_messages(p), add_generation_prompt=True, tokenize=False) for p in prompts
        ]
        # The template writes its own special tokens (BOS...): do not add them a second time.
        return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    texts = [prompt_text(p) + RESPONSE_SEPARATOR for p in prompts]
    return [list(ids) for ids in tokenizer(texts)["input_ids"]]


def format_prompt(tokenizer, prompt: Prompt) -> list[int]:
    """Token ids of a prompt, ready for the response to follow. -> list[int] of length P >= 1.

    With a chat template: the messages (a string becomes one user message) rendered with
    `add_generation_prompt=True`, tokenized without adding special tokens again. Without one:
    `prompt + "\\n"` tokenized with the tokenizer's special tokens (our BPE prepends BOS); a list
    of messages is written as its contents joined by "\\n".
    """
    return format_prompts(tokenizer, [prompt])[0]


def _eos_id(tokenizer) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token: every target must end in EOS")
    return int(eos)


def encode_responses(tokenizer, responses: Sequence[str]) -> list[list[int]]:
    """Batch version of `encode_response`."""
    if not responses:
        return []
    eos = _eos_id(tokenizer)
    return [list(ids) + [eos] for ids in tokenizer(list(responses), add_special_tokens=False)["input_ids"]]


def encode_response(tokenizer, response: str) -> list[int]:
    """Target ids of a response: its tokens (no special tokens) + [eos_id] (ppo-details item 2).
    -> list[int] of length >= 1, always ending in EOS."""
    return encode_responses(tokenizer, [response])[0]


def encode_observation(tokenizer, text: str) -> list[int]:
    """Token ids of an environment's observation in a multi-turn episode: what follows the
    policy's turn in context, never a training target. Without a chat template: `text` tokenized
    on its own, no special tokens (a byte-level BPE with a prefix space reads it as if after a
    space). With one: the tokens the template adds for a user message holding `text` and the
    next assistant header, i.e. render([u, a, user(text)], generation prompt) minus render([u, a])
    (the template's own way of opening a turn; cf. verl's multi-turn tokenization). SFT on
    multi-turn demonstrations tokenizes its environment turns with this same function, so the
    policy trains on the layout the rollout workers build."""
    if not has_chat_template(tokenizer):
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    base = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    before = tokenizer.apply_chat_template(base, tokenize=True)
    after = tokenizer.apply_chat_template(base + [{"role": "user", "content": text}], add_generation_prompt=True,
                                          tokenize=True)
    if hasattr(before, "input_ids"):  # some tokenizers return a BatchEncoding
        before, after = before["input_ids"], after["input_ids"]
    if list(after[: len(before)]) != list(before):
        raise ValueError("the chat template renders earlier turns differently once a turn follows: "
                         "observations cannot be appended token-exactly")
    return list(after[len(before):])


def encode_policy_turn(tokenizer, text: str, last: bool) -> list[int]:
    """Token ids of a policy turn of a multi-turn demonstration: `text` on its own, no special
    tokens, EOS appended to the last turn (as to every single-turn target)."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids + [_eos_id(tokenizer)] if last else ids


def encode_turns(tokenizer, turns: Sequence[str]) -> tuple[list[int], list[bool]]:
    """Response ids of a multi-turn demonstration and its loss mask: the concatenation of its
    segments, policy turns (even indices) by `encode_policy_turn` (EOS after the last one) and
    environment turns by `encode_observation`, the layout the rollout workers build. The mask is
    True on policy tokens (the targets) and False on environment tokens (context only)."""
    ids: list[int] = []
    mask: list[bool] = []
    for i, turn in enumerate(turns):
        policy = i % 2 == 0
        if policy:
            seg = encode_policy_turn(tokenizer, turn, last=i == len(turns) - 1)
        else:
            seg = encode_observation(tokenizer, turn)
        ids.extend(seg)
        mask.extend([policy] * len(seg))
    return ids, mask


def _sft_responses(tokenizer, examples: Sequence[SFTExample]) -> list[tuple[list[int], list[bool] | None]]:
    """(response ids, loss mask or None) per demonstration: single-turn ones by `encode_responses`
    (in one batch, mask None: every token is a target), multi-turn ones by `encode_turns`."""
    single = encode_responses(tokenizer, [e.response for e in examples if e.turns is None])
    out, k = [], 0
    for e in examples:
        if e.turns is None:
            out.append((single[k], None))
            k += 1
        else:
            out.append(encode_turns(tokenizer, e.turns))
    return out


# ---------------------------------------------------------------------------------------------
# Length budgets


def truncate_middle(ids: Sequence[int], budget: int) -> list[int]:
    """Keep the first budget // 2 and the last budget - budget // 2 tokens of `ids` (len > budget >= 2).

    The start holds BOS and the beginning of the instruction, the end holds its suffix (the
    question, the chat template's generation prompt), so neither is lost.
    """
    if budget < 2:
        raise ValueError(f"truncate_middle needs a budget of at least 2 tokens, got {budget}")
    if len(ids) <= budget:
        return list(ids)
    head = budget // 2
    tail = budget - head
    return list(ids[:head]) + list(ids[len(ids) - tail :])


def _check_args(max_len: int, max_prompt_len: int | None, truncation: str) -> None:
    if truncation not in TRUNCATION_MODES:
        raise ValueError(f"unknown truncation {truncation!r}; expected one of {', '.join(TRUNCATION_MODES)}")
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2 (one prompt token and EOS), got {max_len}")
    if max_prompt_len is not None and max_prompt_len < 1:
        raise ValueError(f"max_prompt_len must be >= 1, got {max_prompt_len}")


def _fit_prompt(
    index: int,
    prompt: list[int],
    longest_response: int,
    max_len: int,
    max_prompt_len: int | None,
    truncation: str,
) -> tuple[list[int] | None, str]:
    """Fit one prompt to the budget left by its longest response.

    -> (prompt ids or None when dropped, status) with status "ok", "truncated", "dropped" or
    "dropped_response" (the response alone leaves no room for a prompt). Raises DataError in
    "error" mode when the example does not fit as is.
    """
    budget = max_len - longest_response
    if max_prompt_len is not None:
        budget = min(budget, max_prompt_len)
    if len(prompt) <= budget:
        return prompt, "ok"
    if truncation == "error":
        limit = f"max_len={max_len}" + (f", max_prompt_len={max_prompt_len}" if max_prompt_len else "")
        raise DataError(
            f"example {index}: prompt of {len(prompt)} tokens + response of {longest_response} tokens "
            f"does not fit {limit} (truncation='error')"
        )
    if max_len - longest_response < 1:
        return None, "dropped_response"
    if truncation == "skip" or budget < 2:
        return None, "dropped"
    return truncate_middle(prompt, budget), "truncated"


class _Stats:
    """Counts and length statistics of a tokenisation pass."""

    def __init__(self) -> None:
        self.total = self.kept = self.prompt_truncated = self.dropped = self.dropped_response = 0
        self.prompt_before: list[int] = []
        self.response_before: list[int] = []
        self.prompt_after: list[int] = []
        self.response_after: list[int] = []
        self.seq_after: list[int] = []

    def add(self, prompt: list[int], responses: list[list[int]], fitted: list[int] | None, status: str) -> None:
        self.total += 1
        self.prompt_before.append(len(prompt))
        self.response_before.extend(len(r) for r in responses)
        if fitted is None:
            self.dropped += 1
            self.dropped_response += status == "dropped_response"
            return
        self.kept += 1
        self.prompt_truncated += status == "truncated"
        self.prompt_after.append(len(fitted))
        self.response_after.extend(len(r) for r in responses)
        self.seq_after.extend(len(fitted) + len(r) for r in responses)

    def as_dict(self) -> dict:
        def mx(xs):
            return max(xs, default=0)

        def mean(xs):
            return sum(xs) / len(xs) if xs else 0.0

        return {
            "total": self.total,
            "kept": self.kept,
            "prompt_truncated": self.prompt_truncated,
            "dropped_too_long": self.dropped,
            "dropped_response_too_long": self.dropped_response,
            "prompt_len_max_before": mx(self.prompt_before),
            "prompt_len_mean_before": mean(self.prompt_before),
            "response_len_max_before": mx(self.response_before),
            "response_len_mean_before": mean(self.response_before),
            "prompt_len_max_after": mx(self.prompt_after),
            "prompt_len_mean_after": mean(self.prompt_after),
            "response_len_max_after": mx(self.response_after),
            "response_len_mean_after": mean(self.response_after),
            "seq_len_max_after": mx(self.seq_after),
        }


# ---------------------------------------------------------------------------------------------
# Tokenised datasets


# (prompt_ids, response_ids), or for a multi-turn episode (prompt_ids, response_ids, loss_mask)
SFTItem = tuple[list[int], list[int]] | tuple[list[int], list[int], list[bool]]


def tokenize_sft(
    examples: Sequence[SFTExample],
    tokenizer,
    max_len: int,
    max_prompt_len: int | None = None,
    truncation: str = "middle",
) -> tuple[list[SFTItem], dict]:
    """Demonstrations -> (prompt_ids, response_ids) pairs with len(prompt) + len(response) <= max_len.

    A multi-turn demonstration (`turns`) gives a triple (prompt_ids, response_ids, loss_mask):
    response_ids are its segments concatenated (`encode_turns`), loss_mask (one bool per response
    token) is False on environment tokens, which `collate_sft` keeps out of the loss. Single-turn
    demonstrations stay pairs, exactly as before.

    response_ids end in EOS and are never cut; the prompt is cut in the middle ("middle"), or the
    example dropped ("skip") or DataError raised ("error") when it does not fit; an example whose
    response alone leaves no room for a prompt token is dropped in every mode but "error".
    max_prompt_len (optional) caps the prompt on its own.
    -> (kept pairs in input order, stats) with stats: total, kept, prompt_truncated,
    dropped_too_long (all drops), dropped_response_too_long (the part of them due to the
    response), prompt/response length max and mean before (all examples) and after (kept),
    seq_len_max_after.
    """
    _check_args(max_len, max_prompt_len, truncation)
    prompts = format_prompts(tokenizer, [e.prompt for e in examples])
    responses = _sft_responses(tokenizer, examples)
    stats, out = _Stats(), []
    for i, (prompt, (response, mask)) in enumerate(zip(prompts, responses)):
        fitted, status = _fit_prompt(i, prompt, len(response), max_len, max_prompt_len, truncation)
        stats.add(prompt, [response], fitted, status)
        if fitted is not None:
            out.append((fitted, response) if mask is None else (fitted, response, mask))
    return out, stats.as_dict()


def tokenize_comparisons(
    comparisons: Sequence[Comparison],
    tokenizer,
    max_len: int,
    max_prompt_len: int | None = None,
    truncation: str = "middle",
) -> tuple[list[TokenizedComparison], dict]:
    """Ranked prompts -> TokenizedComparison with prompt + each response <= max_len tokens.

    The same rules as `tokenize_sft`, applied with the longest of the K responses: no response is
    ever cut, and a comparison that does not fit after prompt truncation is dropped whole (and
    counted), so no ranking loses a member. ranks[i] = position of response i in the ranking
    (0 = best). Stats as in `tokenize_sft` (response lengths over all K responses).
    """
    _check_args(max_len, max_prompt_len, truncation)
    prompts = format_prompts(tokenizer, [c.prompt for c in comparisons])
    flat = encode_responses(tokenizer, [r for c in comparisons for r in c.responses])
    stats, out, start = _Stats(), [], 0
    for i, (c, prompt) in enumerate(zip(comparisons, prompts)):
        responses = flat[start : start + len(c.responses)]
        start += len(c.responses)
        longest = max(len(r) for r in responses)
        fitted, status = _fit_prompt(i, prompt, longest, max_len, max_prompt_len, truncation)
        stats.add(prompt, responses, fitted, status)
        if fitted is not None:
            out.append(TokenizedComparison(fitted, responses, ranks_from_ordering(c.ranking)))
    return out, stats.as_dict()


def tokenize_prompts(
    prompts: Sequence[Prompt],
    tokenizer,
    max_prompt_len: int,
    truncation: str = "middle",
) -> tuple[list[list[int]], dict]:
    """RL / eval prompts -> formatted prompt ids of at most max_prompt_len tokens (same modes).
    -> (kept prompts in input order, stats as in `tokenize_sft`, responses counted as empty)."""
    _check_args(max_prompt_len + 1, max_prompt_len, truncation)
    stats, out = _Stats(), []
    for i, ids in enumerate(format_prompts(tokenizer, prompts)):
        fitted, status = _fit_prompt(i, ids, 0, max_prompt_len, max_prompt_len, truncation)
        stats.add(ids, [], fitted, status)
        if fitted is not None:
            out.append(fitted)
    return out, stats.as_dict()


def tokenize_texts(texts: Sequence[str], tokenizer, max_len: int) -> tuple[list[list[int]], dict]:
    """Pretraining texts -> sequences of at most max_len tokens: [BOS] + text + [EOS], chunked.

    A text longer than max_len is split into windows of max_len tokens that overlap by one token
    (stride max_len - 1), so every token but the first is predicted exactly once and no
    prediction crosses a cut; a final window of a single token (nothing to predict) is not made.
    No packing: a sequence holds one text (packing would need per-document attention masks).
    BOS comes from the tokenizer's special tokens (our BPE prepends it); EOS is appended.
    -> (sequences, stats) with stats: texts, sequences, split_texts, tokens (sum of text lengths
    incl. BOS/EOS), text_len_max, text_len_mean, loss_tokens (sum over sequences of len - 1).
    """
    eos = _eos_id(tokenizer)
    encoded = [list(ids) + [eos] for ids in tokenizer(list(texts))["input_ids"]] if texts else []
    return _windows(encoded, max_len)


def tokenize_demonstrations(examples: Sequence[SFTExample], tokenizer, max_len: int) -> tuple[list[list[int]], dict]:
    """Demonstrations as language-model sequences (for the ptx mix): format_prompt(prompt) +
    encode_response(response), the very ids the SFT stage trains on (EOS included), windowed like
    `tokenize_texts` when longer than max_len. -> (sequences, stats), the stats of `tokenize_texts`.
    A multi-turn demonstration is its episode's ids (`encode_turns`); as in any LM sequence,
    every token of it, environment turns included, is predicted.
    """
    prompts = format_prompts(tokenizer, [e.prompt for e in examples])
    responses = _sft_responses(tokenizer, examples)
    return _windows([p + r for p, (r, _) in zip(prompts, responses)], max_len)


def _windows(encoded: list[list[int]], max_len: int) -> tuple[list[list[int]], dict]:
    """Each id list as one sequence, or as windows of max_len overlapping by one token."""
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {max_len}")
    out, split = [], 0
    stride = max_len - 1
    for ids in encoded:
        if len(ids) <= max_len:
            out.append(ids)
            continue
        split += 1
        for start in range(0, len(ids) - 1, stride):
            out.append(ids[start : start + max_len])
    lengths = [len(ids) for ids in encoded]
    stats = {
        "texts": len(encoded),
        "sequences": len(out),
        "split_texts": split,
        "tokens": sum(lengths),
        "text_len_max": max(lengths, default=0),
        "text_len_mean": sum(lengths) / len(lengths) if lengths else 0.0,
        "loss_tokens": sum(len(s) - 1 for s in out),
    }
    return out, stats
