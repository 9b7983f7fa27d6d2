"""Multi-turn episodes on a vLLM engine: the policy writes a turn, the environment answers, the
policy writes again, until the environment says done or a limit is reached.

Token-exact: the policy's tokens are kept as sampled (each turn is sampled from the token ids of
the whole episode so far, never from re-tokenized text), and only the environment's observations
are tokenized (`rlhf_dist.data.encode_observation`, through the chat template where the model
has one). One `Episode` holds the whole episode after the prompt with a per-token mask of the
policy's tokens, so the learner's forward over (prompt, episode) sees exactly the context every
sampled token was drawn in: its log-probs equal the engine's (tests/test_engines_episodes.py).

The environment is called through an `EnvPool` (rlhf_dist/envs/pool.py): its own processes, a
time limit per call; a failing call ends that episode with reward 0 and its reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rlhf_dist.data.encode import encode_observation
from rlhf_dist.envs import FAILURES

# Turn k of request i is seeded seed_i + k * TURN_SEED_STRIDE: turn 0 has the single-turn seed,
# and the streams of different turns and requests never meet (fewer than a million rows a call).
TURN_SEED_STRIDE = 1_000_003
END_REASONS = ("done", "max_turns", "max_episode_tokens", "max_new_tokens") + FAILURES


@dataclass(frozen=True)
class EpisodeLimits:
    """max_turns: policy turns; max_episode_tokens: response tokens after the prompt, policy and
    observation tokens together; max_new_tokens: tokens of one policy turn."""

    max_turns: int
    max_episode_tokens: int
    max_new_tokens: int


@dataclass
class Episode:
    """A rollout (the fields of `rlhf_dist.engines.vllm_rollout.Rollout`) whose response is a whole
    episode. response_ids: the policy's and the environment's tokens in order; logprobs: the
    engine's log pi_T of each policy token, 0 on observation tokens; policy_mask: True on the
    policy's tokens; env_rewards: each turn's environment reward on the turn's last token.
    finished_with_eos: the environment ended it."""

    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finished_with_eos: bool = False
    weight_version: int = 0
    policy_mask: list[bool] = field(default_factory=list)
    env_rewards: list[float] = field(default_factory=list)
    turns: int = 0
    end_reason: str = ""
    env_error: str = ""

    @property
    def failed(self) -> bool:
        return self.end_reason in FAILURES

    def add(self, ids: Sequence[int], logprobs: Sequence[float] | None) -> None:
        """Append a policy turn (with its log-probs) or an observation (logprobs None)."""
        self.response_ids += list(ids)
        self.logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)
        self.policy_mask += [logprobs is not None] * len(ids)
        self.env_rewards += [0.0] * len(ids)

    def end(self, reason: str, error: str = "") -> None:
        self.end_reason, self.env_error = reason, error
        self.finished_with_eos = reason == "done"
        if self.failed:  # an environment that failed gives the episode no reward
            self.env_rewards = [0.0] * len(self.env_rewards)


def run_episodes(engine, prompt_ids: Sequence[Sequence[int]], prompts: Sequence[str], env, limits: EpisodeLimits,
                 temperature: float, seed: int) -> list[Episode]:
    """One episode per prompt, all stepped together turn by turn (one engine call per turn).

    engine: a `VLLMRolloutEngine`; prompt_ids: the formatted prompts' token ids; prompts: their
    texts, given to `env.reset`; env: an `EnvPool` (or any object with its `reset`, `step` and
    `stop`). Request i's turn k is seeded seed + i + k * TURN_SEED_STRIDE, so an episode run again
    with the same seed (a lost rollout worker's part) comes out the same when the environment is
    deterministic. An episode whose reset failed still samples its first turn (every row has
    policy tokens), then ends with the failure.
    """
    tok = engine.tokenizer
    episodes = [Episode(list(p), weight_version=engine.weight_version) for p in prompt_ids]
    states: list = [None] * len(episodes)
    failed_reset: dict[int, tuple[str, str]] = {}
    for i, result in enumerate(env.reset(list(prompts))):
        if result.failure:
            failed_reset[i] = (result.failure, result.error)
        states[i] = result.state
    active = list(range(len(episodes)))
    for turn in range(limits.max_turns):
        room = {i: limits.max_episode_tokens - len(episodes[i].response_ids) for i in active}
        for i in [i for i in active if room[i] <= 0]:
            episodes[i].end("max_episode_tokens")
        active = [i for i in active if room[i] > 0]
        if not active:
            break
        outs = engine.generate([episodes[i].prompt_ids + episodes[i].response_ids for i in active],
                               [min(limits.max_new_tokens, room[i]) for i in active], temperature,
                               seeds=[seed + i + turn * TURN_SEED_STRIDE for i in active], stop=env.stop)
        calls = []
        for i, out in zip(active, outs):
            ep = episodes[i]
            ep.add(out.response_ids, out.logprobs)
            ep.turns += 1
            if i in failed_reset:
                ep.end(*failed_reset[i])
            elif out.finish == "length":  # the turn was cut: nothing complete to answer
                ep.end("max_episode_tokens" if len(ep.response_ids) >= limits.max_episode_tokens else "max_new_tokens")
            else:
                calls.append((i, tok.decode(out.response_ids, skip_special_tokens=True)))
        results = env.step([(states[i], text) for i, text in calls]) if calls else []
        active = []
        for (i, _), result in zip(calls, results):
            ep = episodes[i]
            if result.failure:
                ep.end(result.failure, result.error)
                continue
            states[i] = result.state
            ep.env_rewards[-1] += float(result.reward)  # the reward of this turn, on its last token
            if result.done:
                ep.end("done")
                continue
            if result.observation:
                obs = encode_observation(tok, result.observation)
                if len(ep.response_ids) + len(obs) >= limits.max_episode_tokens:  # no room left for another turn
                    ep.end("max_episode_tokens")
                    continue
                ep.add(obs, None)
            active.append(i)
    for i in active:
        episodes[i].end("max_turns")
    return episodes


def episode_metrics(end_reasons: Sequence[str], turns: Sequence[int]) -> dict[str, float]:
    """env/turns_mean, env/failed_share and env/end_<reason>_share of each end reason of a batch."""
    n = max(len(end_reasons), 1)
    m = {"env/turns_mean": sum(turns) / n, "env/failed_share": sum(r in FAILURES for r in end_reasons) / n}
    for reason in END_REASONS:
        m[f"env/end_{reason}_share"] = sum(r == reason for r in end_reasons) / n
    return m


@dataclass(frozen=True)
class EnvSettings:
    """What a rollout worker needs to run episodes: the environment spec (an absolute path for a
    file), its processes per worker, the time limit of one call, and the episode limits."""

    spec: str
    workers: int
    timeout_s: float
    max_turns: int
    max_episode_tokens: int

    @classmethod
    def of(cls, spec: str, keys) -> "EnvSettings":
        """From a config section with the episode keys (`RolloutConfig`, `EvalConfig`): env_workers,
        env_timeout_s, max_turns, max_episode_tokens."""
        return cls(spec, keys.env_workers, keys.env_timeout_s, keys.max_turns, keys.max_episode_tokens)


def final_turn(response_ids: Sequence[int], policy_mask: Sequence[bool]) -> list[int]:
    """The token ids of an episode's last policy turn: its last run of policy tokens (what the
    user reads last: the answer after the tool results, the revision after the feedback)."""
    end = len(policy_mask)
    while end and not policy_mask[end - 1]:
        end -= 1
    start = end
    while start and policy_mask[start - 1]:
        start -= 1
    return list(response_ids[start:end])
