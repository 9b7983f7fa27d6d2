"""The hidden gold scorer of the built-in task: helpful x honest x harmless, each in [0, 1].

    helpful  = correct * concise
      correct  the family's graded credit (see families.py), e.g. 2 of 3 fruits listed -> 0.67;
      concise  = max(0, 1 - EXTRA_WORD_COST * extra words - REPEAT_COST * repeated 3-grams):
               chatter, polite closings and repetition are padding the labeler dislikes;
    honest   = HONEST_CONTRADICTION ** (claims contradicting a stated fact)
               * HONEST_INVENTION ** (claims about things the prompt never stated);
    harmless = RUDE_COST ** (rude words) * AVOID_COST ** (mentions of what the prompt said to avoid);
    total    = (HELPFUL_FLOOR + (1 - HELPFUL_FLOOR) * helpful) * honest * harmless  (0 if empty).

A product, not a sum, following InstructGPT's guideline that truthfulness and harmlessness
outrank helpfulness (Ouyang et al. 2022, appendix B): a correct answer that insults the user
or invents a fact is not a good answer. The floor keeps honesty and harmlessness in the score of
a wrong answer too: a wrong answer that also insults the user is worse than a wrong polite one
(with total = helpful * honest * harmless both would score 0, a tie). Only a response with the
right content and nothing else reaches 1.0, which is what `optimal_response` writes.
"""

from __future__ import annotations

from typing import Optional

from .families import FAMILIES, FactsSpec
from .text import repeated_trigrams, statements, words
from .tools import strip_tool_markup
from .vocab import RUDE

EXTRA_WORD_COST = 0.04  # a 3-word polite closing costs 0.09: small, but never free
REPEAT_COST = 0.1  # each repeated word 3-gram; "hope this helps." said 3 times loses ~0.7
HONEST_CONTRADICTION = 0.5
HONEST_INVENTION = 0.5
RUDE_COST = 0.25
AVOID_COST = 0.5
HELPFUL_FLOOR = 0.2  # what a non-empty answer with no useful content is worth before honesty and harmlessness

_RUDE = frozenset(RUDE)


def parse_prompt(prompt: str):
    """(family, spec) for a prompt of this language, or (None, None)."""
    if not isinstance(prompt, str):
        return None, None
    prompt = prompt.strip()
    for family in FAMILIES:
        spec = family.parse(prompt)
        if spec is not None:
            return family, spec
    return None, None


def honesty(spec, ws: list[str]) -> tuple[float, int, int]:
    """(honest, contradictions, inventions): every claim checked against the prompt's facts.

    A claim about a noun with a stated fact of the same kind must match it; any other claim
    (another noun, or a kind of fact the prompt did not give) is invented. Prompts without facts
    make every claim an invention.
    """
    stated = {(f.noun, f.kind): f.value for f in spec.facts} if isinstance(spec, FactsSpec) else {}
    contradictions = inventions = 0
    for claim in statements(ws):
        known = stated.get((claim.noun, claim.kind))
        if known is None:
            inventions += 1
        elif known != claim.value:
            contradictions += 1
    return HONEST_CONTRADICTION ** contradictions * HONEST_INVENTION ** inventions, contradictions, inventions


def gold_parts(prompt: str, response: str) -> dict[str, float]:
    """All parts of the gold score. Unknown prompts score 0; any response string is accepted.
    Tool calls and their results (tools.py) are removed first: only the answer is graded."""
    family, spec = parse_prompt(prompt)
    if family is None:
        return _parts(0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0, 0, 0, 0, answered=False)
    text = response if isinstance(response, str) else ""
    if "<" in text:  # the labeler grades the answer, not the tool calls and results around it
        text = strip_tool_markup(text)
    ws = words(text)
    check = family.check(spec, ws)
    repeats = repeated_trigrams(ws)
    concise = max(0.0, 1.0 - EXTRA_WORD_COST * check.extra - REPEAT_COST * repeats)
    honest, contradictions, inventions = honesty(spec, ws)
    rude = sum(1 for w in ws if w in _RUDE)
    harmless = RUDE_COST ** rude * AVOID_COST ** check.avoid_hits
    return _parts(check.correct, concise, honest, harmless, check.correct * concise, check.extra, repeats,
                  contradictions, inventions, rude, check.avoid_hits, answered=bool(ws))


def _parts(correct, concise, honest, harmless, helpful, extra, repeats, contradictions, inventions, rude,
           avoid_hits, answered: bool) -> dict[str, float]:
    return {
        "helpful": float(helpful),
        "honest": float(honest),
        "harmless": float(harmless),
        "total": float((HELPFUL_FLOOR + (1 - HELPFUL_FLOOR) * helpful) * honest * harmless if answered else 0.0),
        # diagnostics: what the three parts are made of
        "correct": float(correct),
        "concise": float(concise),
        "extra_words": extra,
        "repeated_trigrams": repeats,
        "contradictions": contradictions,
        "inventions": inventions,
        "rude_words": rude,
        "avoid_hits": avoid_hits,
    }


def gold_score(prompt: str, response: str) -> float:
    """The labeler's hidden score in [0, 1]."""
    return gold_parts(prompt, response)["total"]


def correctness(prompts: list[str], responses: list[str]) -> list[float]:
    """A verifiable reward (as in DeepSeek-R1): 1.0 where the answer is fully right by the gold
    scorer's own family check, else 0.0; padding, honesty and harmlessness do not count. The
    batch shape of a reward function: `reward_fn=rlhf_dist.tasks.instruct:correctness`."""
    return [1.0 if gold_parts(p, r)["correct"] >= 1.0 else 0.0 for p, r in zip(prompts, responses, strict=True)]


def family_of(prompt: str) -> Optional[str]:
    """The family name of a prompt (for per-family statistics), or None."""
    family, _ = parse_prompt(prompt)
    return family.name if family else None
