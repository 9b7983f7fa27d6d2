"""A second, minimal task: echo or reverse a few letters. Shows the plug-in protocol end to end.

    rlhf-dist task-data --out runs/echo task=examples/echo_task.py:task
    rlhf-dist task-data --out runs/echo task=examples.echo_task:task   # from the repo root

    echo c a f    -> c a f
    reverse c a f -> f a c

It imports nothing from rlhf_dist: any object with these six members is a task (see
rlhf_dist/tasks/base.py). Gold = longest-common-subsequence credit, minus a little per extra
letter; the demonstrator is right half the time, else drops, swaps or repeats a letter.
"""

from __future__ import annotations

import random

LETTERS = "abcdefgh"


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


class EchoTask:
    name = "echo"

    def sample_prompt(self, rng: random.Random) -> str:
        letters = [rng.choice(LETTERS) for _ in range(rng.randint(2, 5))]
        return f"{rng.choice(('echo', 'reverse'))} {' '.join(letters)}"

    def _target(self, prompt: str) -> list[str]:
        verb, *letters = prompt.split()
        return letters[::-1] if verb == "reverse" else letters

    def optimal_response(self, prompt: str) -> str:
        return " ".join(self._target(prompt))

    def gold_score(self, prompt: str, response: str) -> float:
        """LCS / max(len) against the target, minus 0.05 per character that is not a letter token."""
        if not isinstance(prompt, str) or not prompt.startswith(("echo ", "reverse ")):
            return 0.0
        target = self._target(prompt)
        tokens = str(response).split()
        got = [t for t in tokens if t in LETTERS and len(t) == 1]
        credit = _lcs(target, got) / max(len(target), len(got), 1)
        return max(0.0, credit - 0.05 * (len(tokens) - len(got)))

    def demonstrate(self, prompt: str, rng: random.Random) -> str:
        out = self._target(prompt)
        if rng.random() < 0.5 and len(out) >= 2:
            i = rng.randrange(len(out) - 1)
            mistake = rng.randrange(3)
            if mistake == 0:
                out = out[:i] + out[i + 1:]  # drops a letter
            elif mistake == 1:
                out = out[:i] + [out[i + 1], out[i]] + out[i + 2:]  # swaps two
            else:
                out = out[:i + 1] + out[i:]  # repeats one
        return " ".join(out)

    def pretrain_text(self, rng: random.Random) -> str:
        prompt = self.sample_prompt(rng)
        return prompt + "\n" + self.demonstrate(prompt, rng)


task = EchoTask()
