"""Every role of a PPO run, started as Ray actors from the config: the rollout workers (vLLM), the
reward and reference actors (frozen RM and SFT policy), and the learner group (policy + critic in
DeepSpeed). The driver (rlhf_dist/recipes/ppo.py) calls the coarse methods here; nothing here
holds algorithm state.

When a batch is sampled is decided here (`next_batch`, `push_weights`): without overlap, batch
it + 1 starts as soon as the rollout workers hold weights version it + 1; with
`rollout.overlap`, it starts when the driver takes batch it, sampled with version it weights
while the learner trains."""

from __future__ import annotations

import random
import time
from concurrent.futures import Future, ThreadPoolExecutor

import ray

from rlhf_dist.actors.learner_group import ModelSpec
from rlhf_dist.actors.ppo_learner import PPOLearnerGroup
from rlhf_dist.actors.resources import Role, check_resources
from rlhf_dist.actors.rollout import RolloutGroup
from rlhf_dist.actors.scorers import ReferenceActor, RewardActor, ScorerPool
from rlhf_dist.buffer import add_columns
from rlhf_dist.config.ppo import PPOConfig
from rlhf_dist.data import PromptSampler, prompt_text
from rlhf_dist.data.ppo_data import PPOData, load_ppo_data
from rlhf_dist.engines.episodes import EnvSettings
from rlhf_dist.engines.ppo import PPOLossConfig
from rlhf_dist.engines.vllm_rollout import check_engine_can_run
from rlhf_dist.engines.reward_fn import load_reward_fn
from rlhf_dist.models import check_model_dir, load_tokenizer
from rlhf_dist.runtime import ensure_ray, shared_cores_env
from rlhf_dist.tasks.base import absolute_spec


def ppo_roles(cfg: PPOConfig) -> list[Role]:
    """The Ray resources every role of a PPO run asks for."""
    r, lr = cfg.rollout, cfg.learner
    # With tensor parallelism vLLM starts its own GPU workers; the actor itself holds none.
    rollout_gpus = r.gpus_per_worker if r.tensor_parallel_size == 1 else float(r.tensor_parallel_size)
    return [Role("rollout worker", r.num_workers, r.cpus_per_worker, rollout_gpus), *scorer_roles(cfg),
            Role("learner rank", lr.num_ranks, lr.cpus_per_rank, lr.gpus_per_rank)]


def scorer_roles(cfg: PPOConfig) -> list[Role]:
    """The reward and reference actors, or with `reference.colocate_with_reward` one actor per pair
    holding both: both roles' CPUs (they score at the same time) and the larger GPU share (one device)."""
    rw, ref = cfg.reward, cfg.reference
    if ref.colocate_with_reward:
        return [Role("reward + reference actor", rw.num_actors, rw.cpus_per_actor + ref.cpus_per_actor,
                     max(rw.gpus_per_actor, ref.gpus_per_actor))]
    return [Role("reward actor", rw.num_actors, rw.cpus_per_actor, rw.gpus_per_actor),
            Role("reference actor", ref.num_actors, ref.cpus_per_actor, ref.gpus_per_actor)]


class NonFiniteScoreError(ValueError):
    """A reward that is NaN or infinite; the message names the prompt and the sample."""


class EnvFailuresError(ValueError):
    """More of an iteration's episodes failed in the environment than `rollout.env_max_failed_share`;
    the message names the environment, a prompt and its error."""


def check_env_failures(table, prompts: list, env: str, max_share: float) -> None:
    """Raise EnvFailuresError when the share of rows whose environment failed (end_reason one of
    FAILURES) exceeds `max_share`, naming the first such row's prompt and error."""
    from rlhf_dist.envs import FAILURES

    reasons = table.column("end_reason").to_pylist()
    failed = [i for i, r in enumerate(reasons) if r in FAILURES]
    if len(failed) > max_share * len(reasons):
        i = failed[0]
        pid = table.column("prompt_id")[i].as_py()
        raise EnvFailuresError(
            f"env={env}: {len(failed)} of {len(reasons)} episodes failed (rollout.env_max_failed_share={max_share:g}); "
            f"first: prompt {pid} ({prompt_text(prompts[pid])[:60]!r}): {reasons[i]}: {table.column('env_error')[i].as_py()}")


def episode_scores(table, score):
    """(B,) float32: the reward actors' `score` plus each episode's environment rewards; 0 for an
    episode whose environment failed."""
    import numpy as np

    from rlhf_dist.envs import FAILURES

    env_total = np.asarray([sum(r) for r in table.column("env_rewards").to_pylist()], dtype=np.float64)
    failed = np.asarray([r in FAILURES for r in table.column("end_reason").to_pylist()], dtype=bool)
    return np.where(failed, 0.0, np.asarray(score, dtype=np.float64) + env_total).astype(np.float32)


def check_models(cfg: PPOConfig):
    """Check the model folders the run loads, as the config decides: the SFT model (policy and
    reference), the reward model where it is the reward or the critic's start, `critic=` where
    there is a critic. Returns the SFT tokenizer, which the RM and the critic read ids of."""
    if cfg.reward_uses_rm and not cfg.reward_model:
        raise ValueError(f"reward_source={cfg.reward_source} needs reward_model=DIR (a reward model folder)")
    if cfg.has_critic and not cfg.critic_start:
        raise ValueError("ppo.advantage=gae trains a critic: give its start with critic=DIR or reward_model=DIR")
    rm = cfg.reward_model if cfg.reads_reward_model else ""
    for key, path in (("sft", cfg.sft), ("reward_model", rm), ("critic", cfg.critic if cfg.has_critic else "")):
        if path:
            check_model_dir(path, key)
    tok = load_tokenizer(cfg.sft)
    if rm and load_tokenizer(rm).get_vocab() != tok.get_vocab():
        raise ValueError(f"reward_model={rm}: its tokenizer differs from the SFT model's ({cfg.sft}); "
                         "the RM (or the critic started from it) reads the policy's token ids, so both must share one tokenizer")
    return tok


def check_finite_scores(table, prompts: list, source: str) -> None:
    """Raise NonFiniteScoreError naming the first row whose `score` is NaN or infinite (its prompt,
    from `prompts` by prompt_id, and its sample): a non-finite reward would turn every loss and
    gradient into NaN."""
    import numpy as np

    score = np.asarray(table.column("score").to_numpy(zero_copy_only=False), dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(score))
    if bad.size:
        i = int(bad[0])
        pid, sample = table.column("prompt_id")[i].as_py(), table.column("sample_index")[i].as_py()
        raise NonFiniteScoreError(
            f"reward_source={source}: score {score[i]} for prompt {pid} ({prompt_text(prompts[pid])[:60]!r}), "
            f"sample {sample}; {bad.size} of {len(score)} rows of this batch are not finite")


class PPOActors:
    """The actors of one PPO run (all started in `__init__`; `shutdown` stops them)."""

    def __init__(self, cfg: PPOConfig) -> None:
        """Start every role. The run's models are checked and its data read (`check_models`,
        `load_ppo_data`) in a thread from the start, while Ray and then the rollout engines start
        (the longest start of all: docs/results.md, "Start-up"), and the other roles, which need
        the tokenizer, start once it is read. Errors keep their order: the reward function, the SFT folder, Ray
        and the resources are reported before the data; if the data fails, the started actors are
        stopped."""
        self.cfg = cfg
        self._batches = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-batch")
        self._prompts: PromptSampler | None = None
        self._pending: Future | None = None
        # Reading the data is Python (the tokenizer's import is most of it); Ray's start is
        # mostly waiting on its processes, so the two overlap on one core.
        if cfg.learner.lora_rank:  # peft would fail inside a learner rank: refuse in one line first (before the
            # data thread starts: it imports transformers too, and two threads importing it at once can fail)
            from rlhf_dist.models.lora import check_lora_targets

            check_model_dir(cfg.sft, "sft")
            check_lora_targets(cfg.sft, cfg.learner.lora_targets, "learner.lora_targets")
        data = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ppo-data").submit(
            lambda: load_ppo_data(cfg, check_models(cfg)))
        r = cfg.rollout
        try:
            # The reward of reward_source: a function spec is loaded here first, so a bad one stops
            # the run in one line before any actor starts.
            fn_spec = absolute_spec(cfg.reward_fn) if cfg.reward_uses_fn else ""
            if fn_spec:
                load_reward_fn(fn_spec)
            self.env_spec = absolute_spec(cfg.env) if cfg.episodes else ""
            if self.env_spec:  # a bad environment spec stops the run in one line, before any actor starts
                from rlhf_dist.envs import load_env

                load_env(self.env_spec)
            check_model_dir(cfg.sft, "sft")  # the rollout engines load it
            check_engine_can_run(cfg.sft, "sft")
            ensure_ray(cfg.ray_address)
            check_resources(ppo_roles(cfg))  # an impossible request fails here, before any actor starts
        except BaseException:
            data.exception()  # the read ends (its result unused) before the error is reported
            raise
        start = time.perf_counter()
        env = shared_cores_env(r.overlap)  # with overlap the roles run at the same time on the same cores
        max_len = cfg.max_prompt_len + (r.max_episode_tokens if cfg.episodes else r.max_new_tokens) + 8
        episodes = EnvSettings.of(self.env_spec, r) if cfg.episodes else None
        self.rollout = RolloutGroup(cfg.sft, r.num_workers, cfg.seed, max(256, max_len), r.cpus_per_worker,
                                    r.gpus_per_worker, r.dtype, r.tensor_parallel_size, r.gpu_memory_utilization,
                                    max_restarts=cfg.max_restarts, wait=False, threads=r.threads, env=env,
                                    episodes=episodes,  # engines start meanwhile
                                    lora_rank=cfg.learner.lora_rank if r.lora_sync == "adapter" else 0)
        try:
            self._start_others(cfg, data.result(), fn_spec, env, start)
        except BaseException:
            self.shutdown()
            raise

    def _start_others(self, cfg: PPOConfig, data: PPOData, fn_spec: str, env: dict, start: float) -> None:
        """The reward and reference actors and the learner group; then wait for every role."""
        self.data = data
        r, p = cfg.rollout, cfg.ppo
        rows = cfg.prompts_per_iteration * r.samples_per_prompt
        self.minibatches_per_epoch = rows // p.minibatch_size
        self.ptx_per_minibatch = round(p.ptx_ratio * p.minibatch_size) if data.ptx else 0
        # What the reward actors load follows reward_source (PPOConfig.reward_uses_rm, reward_uses_fn).
        rm_path = cfg.reward_model if cfg.reward_uses_rm else ""
        gold_task = cfg.task if cfg.reward_source == "gold" else ""
        reward_desc = " + ".join(  # for the start-up line
            (["reward model"] if rm_path else []) + ([f"reward function {cfg.reward_fn}"] if fn_spec else [])
            + ([f"reward function gold scorer of {gold_task}"] if gold_task else [])
            + ([f"environment {cfg.env}"] if cfg.episodes else []))
        rw, ref = cfg.reward, cfg.reference
        reward_args = (rm_path, data.pad_id, rw.micro_batch_size, rw.dtype, fn_spec, gold_task, cfg.sft)
        reference_args = (cfg.sft, data.pad_id, r.temperature, ref.micro_batch_size, ref.dtype)
        if ref.colocate_with_reward:
            (role,) = scorer_roles(cfg)
            self.reward, self.reference = ScorerPool.colocated(role.count, role.cpus, role.gpus, reward_args, reference_args,
                                                               max_restarts=cfg.max_restarts, env=env)
        else:
            self.reward = ScorerPool(RewardActor, rw.num_actors, rw.cpus_per_actor, rw.gpus_per_actor, *reward_args,
                                     max_restarts=cfg.max_restarts, env=env)
            self.reference = ScorerPool(ReferenceActor, ref.num_actors, ref.cpus_per_actor, ref.gpus_per_actor,
                                        *reference_args, max_restarts=cfg.max_restarts, env=env)
        total_steps = cfg.iterations * p.epochs * self.minibatches_per_epoch
        critic = ModelSpec(cfg.critic_start, "scalar", cfg.seed) if cfg.has_critic else None  # critic-free: no engine
        self.learner = PPOLearnerGroup(ModelSpec(cfg.sft, "causal_lm", cfg.seed), critic,
                                       cfg.learner, cfg.optim, cfg.critic_optim, p.minibatch_size, total_steps, data.pad_id,
                                       PPOLossConfig.from_config(p, r.temperature, ptx=bool(data.ptx), learner=cfg.learner),
                                       env=env)
        self.rollout.wait_ready()
        # A replaced rollout worker gets the learner's current weights or adapter (the version is checked on arrival).
        self.version = 0
        self.rollout.load_weights = lambda worker: self.learner.push_weights(
            [worker], self.version, r.weight_transport, r.bucket_mb * 2**20, r.lora_sync)
        info = self.learner.info[0]
        critic_text = f"critic {info['critic_params']:,} parameters" if critic else f"no critic (ppo.advantage={p.advantage})"
        scorers = (f"{cfg.reward.num_actors} reward + reference actor(s) ({reward_desc} + reference)"
                   if cfg.reference.colocate_with_reward else
                   f"{cfg.reward.num_actors} reward actor(s) ({reward_desc}) + {cfg.reference.num_actors} reference actor(s)")
        print(f"   {r.num_workers} rollout worker(s), {scorers}, "
              f"{cfg.learner.num_ranks} learner rank(s) (ZeRO-{cfg.learner.zero_stage}; policy {info['policy_params']:,} parameters "
              f"+ {critic_text}); {rows} responses/iteration in {self.minibatches_per_epoch} minibatch(es) "
              f"of {p.minibatch_size} = {cfg.learner.micro_batch_size} x {self.learner.grad_accum} accum x {cfg.learner.num_ranks} ranks"
              f"{f', + {self.ptx_per_minibatch} ptx sequences each' if self.ptx_per_minibatch else ''}; "
              f"set-up {time.perf_counter() - start:.1f} s", flush=True)

    def sample(self, prompt_indices: list[int], iteration: int):
        """Start sampling `rollout.samples_per_prompt` responses to each prompt; `.result()` gives the
        Arrow table (rows in prompt order, each with the weight version that sampled it)."""
        n = self.cfg.rollout.samples_per_prompt
        index = [i for i in prompt_indices for _ in range(n)]
        sample_index = [s for _ in prompt_indices for s in range(n)]
        seed = random.Random(f"{self.cfg.seed}/sampling/{iteration}").getrandbits(30)
        r = self.cfg.rollout
        texts = [prompt_text(self.data.prompts[i]) for i in index] if self.cfg.episodes else None
        return self.rollout.submit([self.data.prompt_ids[i] for i in index], index, sample_index, r.max_new_tokens,
                                   r.temperature, seed, texts)

    def sample_held_out(self, prompt_ids: list, seed: int):
        """One sample (with env=, one episode) per held-out prompt from the current weights, at the
        training temperature."""
        n, r = len(prompt_ids), self.cfg.rollout
        texts = [prompt_text(p) for p in self.data.eval_prompts] if self.cfg.episodes else None
        return self.rollout.generate(prompt_ids, list(range(n)), [0] * n, r.max_new_tokens, r.temperature, seed=seed,
                                     prompts=texts)

    def score(self, table):
        """`table` with the columns `score` (reward_source's: the RM's, the reward function's, or
        their sum; with env=, plus the episode's environment rewards, 0 where the environment
        failed) and `ref_logprobs`; the reward and reference actors run in parallel. A score
        that is not finite stops the run, naming the prompt and the sample; so do environment
        failures past `rollout.env_max_failed_share`."""
        if self.cfg.episodes:
            check_env_failures(table, self.data.prompts, self.cfg.env, self.cfg.rollout.env_max_failed_share)
        ref = self.reference.submit("logprobs", table)
        score = self.submit_reward(table).result()
        table = add_columns(table, score=score, ref_logprobs=ref.result())
        check_finite_scores(table, self.data.prompts, self.cfg.reward_source)
        return table

    def submit_reward(self, table, prompts: list | None = None) -> "_Then":
        """Start scoring `table` with the run's reward; `.result()` is (B,) float32: reward_source's
        score (a function reads each prompt as written in `prompts`, which the rows' prompt_id index,
        default the RL prompts, not as its possibly truncated token ids), for episodes plus the
        environment's rewards, 0 where the environment failed."""
        if not self.cfg.reward_reads_text:
            pending = self.reward.submit("score", table)
        else:
            prompts = self.data.prompts if prompts is None else prompts
            pending = self.reward.submit("score", table, [prompt_text(prompts[i]) for i in table.column("prompt_id").to_pylist()])
        return _Then(pending, (lambda score: episode_scores(table, score)) if self.cfg.episodes else None)

    def start_batches(self, prompts: PromptSampler, first: int) -> None:
        """Start the batch of iteration `first`; every later batch draws its prompts from `prompts`
        in order, started by `next_batch` (overlap) or `push_weights` (synchronous)."""
        self._prompts = prompts
        self._pending = self.rollout_batch(prompts.next(), iteration=first)

    def next_batch(self, iteration: int):
        """The scored batch of `iteration` (waiting for it): (Arrow table, its sample/score times).
        With `rollout.overlap` the batch of iteration + 1 starts now, with the weights the workers
        hold (version `iteration`), and is sampled and scored while the learner trains; its rows
        are then one version old (corrected by ppo.is_cap, bounded by rollout.max_staleness)."""
        batch, self._pending = self._pending.result(), None
        if self.cfg.rollout.overlap and iteration + 1 < self.cfg.iterations:
            self._pending = self.rollout_batch(self._prompts.next(), iteration=iteration + 1)
        return batch

    def rollout_batch(self, prompt_indices: list[int], iteration: int) -> Future:
        """Sample the prompts and score the samples, in a background thread, so that with
        `rollout.overlap` the next batch goes through both while the learner trains. The future's
        result: (the scored Arrow table, {"time/sample_s": ..., "time/score_s": ...})."""

        def run():
            t0 = time.perf_counter()
            table = self.sample(prompt_indices, iteration).result()
            t1 = time.perf_counter()
            table = self.score(table)
            return table, {"time/sample_s": t1 - t0, "time/score_s": time.perf_counter() - t1}

        return self._batches.submit(run)

    def push_weights(self, version: int) -> dict:
        """The learner's policy weights (rollout.lora_sync=adapter: its LoRA adapters) to every
        rollout worker, stamped `version`; a worker lost on the way is replaced and the push done
        again. Synchronous runs (no overlap) then start the batch of iteration `version` (if the
        run has it), sampled with these weights."""
        r = self.cfg.rollout
        while True:
            try:
                stats = self.learner.push_weights(self.rollout.workers, version, r.weight_transport, r.bucket_mb * 2**20,
                                                  r.lora_sync)
                break
            except ray.exceptions.RayError:
                if not self.rollout.replace_dead("lost during a weight push"):
                    raise
        self.version = version
        if self._prompts is not None and self._pending is None and version < self.cfg.iterations:
            self._pending = self.rollout_batch(self._prompts.next(), iteration=version)
        return stats

    def fault_metrics(self) -> dict:
        """faults/<role>_restarts and faults/<role>_restart_s so far in the run."""
        return {**self.rollout.restarts.metrics(), **self.reward.restarts.metrics(), **self.reference.restarts.metrics()}

    def shutdown(self) -> None:
        self._batches.shutdown(wait=False, cancel_futures=True)
        for part in ("learner", "rollout", "reward", "reference"):
            if hasattr(self, part):
                getattr(self, part).shutdown()


class _Then:
    """A pending result whose `result()` applies `then` (None: as it is) once it arrives."""

    def __init__(self, pending, then=None) -> None:
        self.pending, self.then = pending, then

    def result(self):
        value = self.pending.result()
        return value if self.then is None else self.then(value)
