"""The built-in task: a small instruction-following language with a hidden gold labeler.

Five families of instructions, each with parameters drawn from a seeded generator:

    list 3 fruits without pear.                              -> apple, plum, fig.
    count down from 9 to 5.                                  -> 9 8 7 6 5.
    sort from big to small: 12 5 33 7.                       -> 33 12 7 5.
    repeat: red cat box. skip cat.                           -> red box.
    facts: the box is red. the key is in the bag. question: where is the key?
                                                             -> the key is in the bag.

Gold (gold.py) = helpful x honest x harmless; the demonstrator (demonstrator.py) is right 85% of
the time but invents facts, insults and rambles (what RLHF should remove), and its closings are
the exploit. Use it as `task=rlhf_dist.tasks.instruct:task`; its answer check alone is a reward
function, `reward_source=fn reward_fn=rlhf_dist.tasks.instruct:correctness`.

Its tool (tools.py) computes any instruction's answer in one call, `<tool>sort 5 2 9</tool>` ->
`<result>2 5 9</result>`; episodes with it run in `env=rlhf_dist.tasks.instruct:ToolEnv`, and
`task-data tool_share=...` writes demonstrations that use it (`demonstrate_turns`). Gold grades
the answer with the tool traffic removed (`strip_tool_markup`).
"""

from __future__ import annotations

from random import Random

from . import demonstrator, gold
from .families import FAMILIES
from .gold import correctness
from .tools import ToolEnv, strip_tool_markup, tool_stats


class InstructTask:
    """The built-in task, in the shape of `rlhf_dist.tasks.base.Task`."""

    name = "instruct"

    def sample_prompt(self, rng: Random) -> str:
        return demonstrator.sample_prompt(rng)

    def demonstrate(self, prompt: str, rng: Random) -> str:
        return demonstrator.respond(prompt, rng)

    def demonstrate_turns(self, prompt: str, rng: Random, p_tool: float) -> list[str]:
        """A demonstration that uses the tool with probability `p_tool` (`ToolEnv`'s episodes)."""
        return demonstrator.respond_turns(prompt, rng, p_tool)

    def optimal_response(self, prompt: str) -> str:
        family, spec = gold.parse_prompt(prompt)
        return family.optimal(spec) if family else ""

    def gold_score(self, prompt: str, response: str) -> float:
        return gold.gold_score(prompt, response)

    def gold_parts(self, prompt: str, response: str) -> dict[str, float]:
        return gold.gold_parts(prompt, response)

    def pretrain_text(self, rng: Random) -> str:
        return demonstrator.pretrain_text(rng)

    def exploit_response(self, prompt: str) -> str:
        return demonstrator.exploit_response(prompt)

    def prompt_key(self, prompt: str) -> str:
        """The instruction behind the wording ("count from 3 to 7." and "count up from 3 to 7." are
        one key), so the eval split holds out instructions, not phrasings."""
        family, spec = gold.parse_prompt(prompt)
        return repr(spec) if family else prompt

    def family(self, prompt: str):
        """The family name of a prompt, for per-family reports (None if not of this language)."""
        return gold.family_of(prompt)


task = InstructTask()
tool_env = ToolEnv

__all__ = ["InstructTask", "task", "FAMILIES", "correctness", "ToolEnv", "tool_env", "tool_stats",
           "strip_tool_markup"]
