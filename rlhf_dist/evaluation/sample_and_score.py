"""The one evaluation path: sample a model on prompts, then score its samples.

    scores = sample_and_score(sample, prompts, prompt_ids, task, tokenizer, reward=..., reference=...)
    scores.summary()   # {"gold", "proxy", "kl", "response_len", "eos_rate", "prompts"}

Every measurement of samples goes through `sample_and_score`: PPO's periodic evaluation (its
rollout workers with the current weights, its reward and reference actors), `rlhf-dist eval`
(the model folders sampled in a child process; the RM and the baseline as in-process engines),
best-of-n in the over-optimisation study, and SFT's gold report. What differs between them is
only where the samples and the scores come from, which the caller passes as functions:

    sample(prompt_ids) -> pa.Table                   rollout rows (rlhf_dist.buffer schema), one per prompt, in order
    reward(table) -> (B,) scores                     e.g. RewardEngine.score, or a Ray actor pool's submit
                                                     (PPO's reward actors: the RM and/or its reward function)
    reference(table) -> list<float32> per row        log pi_ref_T of each response token (ReferenceEngine.logprobs)

`reward` and `reference` may return a handle with `.result()` instead of the value; both are
started before either is waited on, so actors score in parallel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass
class SampleScores:
    """Per-sample results, in the order of the prompts (B samples)."""

    table: object  # pa.Table of the rollout rows: prompt_ids, response_ids, rollout_logprobs, finished_with_eos, ...
    responses: list[str]  # decoded responses (special tokens skipped; an episode: all its turns)
    answers: list[str]  # what the gold scorer and the labeler read: the response (an episode: its last policy turn)
    gold: list[float]  # the task's hidden gold score of each sample (an episode: of its last policy turn)
    proxy: list[float] | None  # the reward's score: the RM's, or the run's reward function's (None without `reward`)
    kl: list[float] | None  # sum_t log pi_T(y_t) - log pi_ref_T(y_t): the sample's KL estimate (None without `reference`)
    lengths: list[int]  # response tokens
    eos: list[bool]  # finished with EOS (not cut at the budget)

    def summary(self) -> dict:
        """Means over the samples: gold, proxy, kl (None where not scored), response_len, eos_rate, prompts."""
        n = len(self.gold)
        mean = lambda xs: None if xs is None else sum(xs) / n  # noqa: E731
        return {"gold": mean(self.gold), "proxy": mean(self.proxy), "kl": mean(self.kl),
                "response_len": sum(self.lengths) / n, "eos_rate": sum(self.eos) / n, "prompts": n}


def _value(x):
    return x.result() if hasattr(x, "result") else x


def sample_and_score(sample: Callable, prompts: Sequence, prompt_ids: Sequence[Sequence[int]], task, tokenizer,
                     reward: Callable | None = None, reference: Callable | None = None) -> SampleScores:
    """Sample one response per entry of `prompt_ids` and score it.

    prompts: the prompt objects (str or messages) of the rows, aligned with `prompt_ids` (repeat
        a prompt to draw several samples of it); the gold scorer reads their text.
    tokenizer: decodes responses for the gold scorer (the policy's).
    """
    import pyarrow as pa

    from rlhf_dist.data import prompt_text

    if len(prompts) != len(prompt_ids):
        raise ValueError(f"sample_and_score: {len(prompts)} prompts but {len(prompt_ids)} prompt id lists")
    table = sample(prompt_ids)
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    pending_reward = reward(table) if reward is not None else None
    pending_reference = reference(table) if reference is not None else None
    response_ids = table.column("response_ids").to_pylist()
    responses = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    masks = table.column("policy_mask").to_pylist() if "policy_mask" in table.column_names else None
    answers = responses
    if masks is not None:  # an episode: gold grades its last policy turn, KL and length count the policy's tokens
        from rlhf_dist.engines.episodes import final_turn

        answers = tokenizer.batch_decode([final_turn(y, m) for y, m in zip(response_ids, masks)], skip_special_tokens=True)
    gold = [float(task.gold_score(prompt_text(p), y)) for p, y in zip(prompts, answers)]
    proxy = [float(s) for s in _value(pending_reward)] if reward is not None else None
    kl = None
    if reference is not None:
        ref = _value(pending_reference).to_pylist()
        policy = table.column("rollout_logprobs").to_pylist()
        kl = [sum(_policy_tokens(p, m)) - sum(_policy_tokens(r, m)) for p, r, m in zip(policy, ref, masks or [None] * len(ref))]
    lengths = [len(r) for r in response_ids] if masks is None else [sum(m) for m in masks]
    return SampleScores(table, responses, answers, gold, proxy, kl, lengths,
                        [bool(e) for e in table.column("finished_with_eos").to_pylist()])


def _policy_tokens(values: list, mask: list | None) -> list:
    return values if mask is None else [v for v, keep in zip(values, mask) if keep]


def sample_models(models: dict[str, str], prompt_ids: Sequence[Sequence[int]], temperature: float, max_new_tokens: int,
                  seed: int, env=None, prompts: Sequence[str] = ()) -> dict[str, object]:
    """{name: pa.Table of rollout rows} for each model folder in `models`: one sample per prompt,
    request i seeded seed + i (the same seed for every model gives every model the same random
    streams). Sampled in a child process; folders of one model share one engine
    (`rlhf_dist.engines.vllm_rollout.sample_jobs_in_subprocess`). Prints a line per model. With
    `env` (`EnvSettings`), one episode per prompt, the environment reset with `prompts` (texts)."""
    from rlhf_dist.buffer import rollouts_to_batch
    from rlhf_dist.engines.vllm_rollout import SampleJob, check_engine_can_run, sample_jobs_in_subprocess

    for name, path in models.items():  # before the sampling child starts
        check_engine_can_run(str(path), f"models.{name}" if name else "model")
    prompt_ids = [list(p) for p in prompt_ids]
    jobs = [SampleJob(str(path), prompt_ids, temperature, max_new_tokens, seed, name, env, tuple(prompts))
            for name, path in models.items()]
    return {name: rollouts_to_batch(rollouts, list(range(len(rollouts))), 0, 0)
            for name, rollouts in zip(models, sample_jobs_in_subprocess(jobs))}


def subprocess_sampler(model_dir: str, temperature: float, max_new_tokens: int, seed: int) -> Callable:
    """`sample` for a model folder: `sample_models` of that folder alone, per call."""

    def sample(prompt_ids):
        return sample_models({"": model_dir}, prompt_ids, temperature, max_new_tokens, seed)[""]

    return sample


def gold_of_samples(models: dict[str, str], prompts: Sequence, task, temperature: float, max_new_tokens: int,
                    seed: int) -> dict[str, dict]:
    """Per model folder of `models` (one tokenizer): mean gold score, EOS rate and mean length of
    one sample per prompt, plus the samples (SFT's before/after report)."""
    from rlhf_dist.data import format_prompts
    from rlhf_dist.models import load_tokenizer

    tok = load_tokenizer(next(iter(models.values())))
    prompt_ids = format_prompts(tok, prompts)
    tables = sample_models(models, prompt_ids, temperature, max_new_tokens, seed)
    results = {}
    for name, table in tables.items():
        s = sample_and_score(lambda ids, table=table: table, prompts, prompt_ids, task, tok)
        summary = s.summary()
        results[name] = {"gold_mean": summary["gold"], "eos_rate": summary["eos_rate"], "response_len": summary["response_len"],
                         "samples": [{"prompt": p, "response": y, "gold": g} for p, y, g in zip(prompts, s.responses, s.gold)]}
    return results
