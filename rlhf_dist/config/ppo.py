"""Config of `rlhf-dist ppo`: the roles (rollout workers, frozen scorers, learner group) and the
algorithm. Defaults follow InstructGPT (Ouyang et al. 2022) where it states them, else N+ (Huang
et al. 2024, "The N+ Implementation Details of RLHF with PPO", arXiv 2403.17031); the numbered
items are in docs/ppo-details.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhf_dist.config.data_columns import DataColumnsConfig
from rlhf_dist.config.fields import DEFAULT_TASK, param
from rlhf_dist.config.learner import LearnerConfig, OptimConfig
from rlhf_dist.config.logging import LogConfig

VLLM_MAX_LORA_RANK = 512  # vLLM's LoRAConfig.max_lora_rank: 1, 8, 16, 32, 64, 128, 256, 320 or 512


@dataclass
class RolloutConfig:
    num_workers: int = param(1, "vLLM rollout workers (Ray actors), independent of learner ranks", ge=1)
    cpus_per_worker: float = param(0.25, "Ray CPUs per rollout worker", ge=0)
    gpus_per_worker: float = param(0.0, "Ray GPUs per rollout worker (GPU clusters: 1)", ge=0)
    threads: int | None = param(None, "CPU threads of each rollout engine (null: one per whole Ray CPU, at least 1); "
                                      "more than its CPUs pays off when sampling has the cores to itself", ge=1)
    tensor_parallel_size: int = param(1, "vLLM tensor parallelism per worker (GPU)", ge=1)
    gpu_memory_utilization: float = param(0.85, "vLLM's share of its GPU's memory", gt=0, le=1)
    dtype: Literal["float32", "bfloat16", "float16"] = param("float32", "vLLM dtype: float32 | bfloat16 (GPUs; CPUs with AVX512-BF16 or AMX)")
    temperature: float = param(0.7, "sampling temperature, also applied to every learner/reference log-prob "
                                     "(N+: 0.7; InstructGPT: 1)", gt=0)
    top_p: float = param(1.0, "must be 1: PPO needs samples from the full distribution (docs/ppo-details.md item 13)")
    top_k: int = param(-1, "must be -1 (off), same reason")
    max_new_tokens: int = param(48, "response budget; responses cut here have no EOS", ge=1)
    samples_per_prompt: int = param(1, "responses sampled per prompt", ge=1)
    weight_transport: Literal["auto", "object_store", "broadcast"] = param(
        "auto", "learner -> vLLM weights: object_store (CPU) | broadcast (NCCL on GPU, gloo on CPU) | auto")
    bucket_mb: int = param(256, "weight-sync bucket size (MiB)", ge=1)
    lora_sync: Literal["merged", "adapter"] = param(
        "merged", "with learner.lora_rank > 0, what each weight push sends to the rollout engines: merged (W + s * B @ A "
                  "under the base names: the full model every push) | adapter (the policy's LoRA A and B only, a few MB; "
                  "the engines serve them as a vLLM LoRA adapter; needs learner.lora_rank > 0 and the object store)")
    max_staleness: int = param(1, "most policy versions a row may lag the learner (checked per row; a row "
                                  "sampled with older weights stops the run)", ge=0)
    overlap: bool = param(False, "sample the next batch while the learner trains on this one (rows one version "
                                 "old, corrected by ppo.is_cap): needs max_staleness >= 1")
    # Multi-turn episodes (env=): the limits of one episode, and how failing environments are contained.
    max_turns: int = param(4, "with env=: policy turns per episode (an episode still running after them ends: max_turns)", ge=1)
    max_episode_tokens: int = param(128, "with env=: tokens after the prompt, the policy's and the observations "
                                         "together (max_new_tokens bounds each turn)", ge=1)
    env_timeout_s: float = param(30.0, "with env=: seconds an environment's reset or step may take; past it the "
                                       "episode fails (env_timeout) and the environment process is replaced", gt=0)
    env_max_failed_share: float = param(0.25, "with env=: the share of an iteration's episodes whose environment may "
                                              "fail (raise, time out, return garbage, crash) before the run stops", ge=0, le=1)
    env_workers: int = param(2, "with env=: environment processes per rollout worker (calls run in parallel)", ge=1)

    def __post_init__(self) -> None:
        if self.top_p != 1.0 or self.top_k not in (-1, 0):
            raise ValueError(f"rollout.top_p={self.top_p}, rollout.top_k={self.top_k}: PPO's ratio and KL assume samples "
                             "from the full distribution at the temperature; use top_p=1 and top_k=-1 (docs/ppo-details.md item 13)")
        if self.overlap and self.max_staleness < 1:
            raise ValueError("rollout.overlap=true samples with weights one version old: set rollout.max_staleness >= 1")


@dataclass
class ScorerConfig:
    num_actors: int = param(1, "actors holding a copy of this frozen model", ge=1)
    cpus_per_actor: float = param(0.25, "Ray CPUs per actor", ge=0)
    gpus_per_actor: float = param(0.0, "Ray GPUs per actor (GPU clusters: e.g. 0.5 or 1)", ge=0)
    micro_batch_size: int = param(16, "rows per forward pass", ge=1)
    dtype: Literal["float32", "bfloat16"] = param("float32", "float32 | bfloat16 (GPUs; CPUs with AVX512-BF16 or AMX)")


@dataclass
class ReferenceConfig(ScorerConfig):
    colocate_with_reward: bool = param(False, "the reference model in the reward actors' processes (one process "
                                              "per pair: its start-up and memory once; the two score in parallel "
                                              "threads, on one device on GPU nodes); needs reference.num_actors == "
                                              "reward.num_actors; each actor asks for both roles' CPUs and the larger GPU share")


@dataclass
class PPOAlgoConfig:
    advantage: Literal["gae", "grpo", "grpo_mean", "rloo", "reinforce_pp"] = param(
        "gae", "gae: GAE with a critic (InstructGPT); critic-free, no critic engine: grpo (group mean/std, "
               "DeepSeekMath), grpo_mean (group mean only, Dr. GRPO), rloo (leave-one-out), reinforce_pp (REINFORCE++)")
    kl_penalty: Literal["reward", "loss"] = param(
        "reward", "where KL(pi || SFT) enters: reward (-kl_coef x KL per token, InstructGPT) | loss "
                  "(kl_coef x k3 estimate added to the policy loss, GRPO)")
    kl_coef: float = param(0.02, "beta of the KL penalty (InstructGPT 0.02, N+ 0.05)", ge=0)
    kl_target: float | None = param(None, "adaptive beta: target KL per sequence (null: fixed beta)", gt=0)
    kl_horizon: float = param(10000.0, "adaptive beta horizon in episodes (Ziegler et al. 2019)", gt=0)
    kl_estimator: Literal["k1", "k2", "k3"] = param("k1", "KL estimator in the reward (docs/ppo-details.md item 23)")
    gamma: float = param(1.0, "discount of the returns: GAE's, REINFORCE++'s and the KL's reward-to-go (InstructGPT: none)",
                         ge=0, le=1)
    lam: float = param(0.95, "GAE lambda", ge=0, le=1)
    clip_eps: float = param(0.2, "policy ratio clip", gt=0)
    clip_eps_high: float | None = param(None, "upper ratio clip (null: clip_eps)", gt=0)
    value_clip: float | None = param(0.2, "value clip around the old values (null: unclipped)", gt=0)
    vf_coef: float = param(1.0, "value-loss weight (separate critic: scales its gradient only)", ge=0)
    entropy_coef: float = param(0.0, "entropy bonus (N+: off)", ge=0)
    epochs: int = param(1, "PPO epochs per rollout batch (InstructGPT 1, N+ 4)", ge=1)
    minibatch_size: int = param(32, "trajectories per optimizer step (all ranks)", ge=1)
    whiten_advantages: bool = param(True, "whiten GAE advantages over the batch's valid tokens (GAE only: grpo "
                                          "divides by its group's std, reinforce_pp whitens over the batch, "
                                          "grpo_mean and rloo are left unscaled)")
    whiten_rewards: bool = param(False, "whiten token rewards, mean kept (docs/ppo-details.md item 25: off)")
    score_norm: Literal["none", "running"] = param("none", "running: normalise RM scores by their running mean/std")
    score_clip: float | None = param(None, "clip normalised scores to +-this (with score_norm=running)", gt=0)
    missing_eos_penalty: float | None = param(1.0, "subtracted from the score of responses with no EOS (null: off)", ge=0)
    is_cap: float | None = param(2.0, "rows sampled with older weights (rollout.overlap): each token's loss weighted "
                                      "by min(pi_old / pi_rollout, is_cap) (null: treated as on-policy)", ge=1)
    ptx_coef: float = param(0.0, "gamma of PPO-ptx (InstructGPT 27.8); 0: plain PPO", ge=0)
    ptx_ratio: float = param(8.0, "pretraining sequences per RL episode in each minibatch (InstructGPT 8)", gt=0)
    ptx_max_len: int = param(96, "token budget of a pretraining sequence", ge=2)

    @property
    def has_critic(self) -> bool:
        """GAE trains a critic; the critic-free estimators build no critic engine."""
        return self.advantage == "gae"


@dataclass
class PPOConfig:
    out: str = param("", "run folder (required)")
    task: str = param(DEFAULT_TASK, "task whose gold scorer grades samples (monitoring; the reward function with "
                                     "reward_source=gold)")
    data: str = param("", "task-data folder (rl_prompts.jsonl, eval_prompts.jsonl, pretrain.jsonl)")
    prompts_file: str = param("", "RL prompts {prompt} or {messages} (default: data/rl_prompts.jsonl): JSONL, "
                                  "Parquet, or a folder of Parquet shards or from datasets' save_to_disk "
                                  "(FOLDER#SPLIT picks a split; default train)")
    eval_prompts_file: str = param("", "held-out prompts, as prompts_file (default: data/eval_prompts.jsonl)")
    ptx_file: str = param("", "ptx data (default: data/pretrain.jsonl): pretraining texts {text} and/or "
                              "demonstrations {prompt, response}, files or dataset folders; several: comma-separated")
    columns: DataColumnsConfig = param(DataColumnsConfig(), "the data files' column names, where not the standard "
                                                            "ones: columns.prompt and columns.messages (prompt files), "
                                                            "columns.text (ptx_file)")
    sft: str = param("", "SFT model folder: the policy's start and the frozen reference")
    reward_model: str = param("", "reward model folder (frozen; with reward_source=fn or gold only the critic's start)")
    reward_source: Literal["rm", "fn", "rm+fn", "gold", "env"] = param(
        "rm", "the reward: rm (the reward model) | fn (reward_fn) | rm+fn (their sum) | gold (the task's hidden gold "
              "scorer as a reward function: what RL reaches with a perfect RM) | env (the environment's rewards "
              "only); fn, gold and env load no RM. With env=, the environment's rewards are added to any of them")
    env: str = param("", "environment 'module:attr' or 'path/to/file.py:attr' (reset/step, docs/environments.md): "
                         "each sample is a multi-turn episode; empty: one response per prompt")
    reward_fn: str = param("", "reward function 'module:attr' or 'path/to/file.py:attr', called in the reward actors "
                               "on a batch: (prompts: list[str], responses: list[str]) -> one float per row")
    critic: str = param("", "critic's start (default: the reward model, InstructGPT C.4)")
    models: str = param("runs/tiny_models", "with sft/reward_model empty: find (or build) them here")
    build_size: Literal["tiny", "small"] = param("tiny", "size of the models built in `models`")
    seed: int = param(0, "prompt order, sampling and initialisation seed")
    iterations: int = param(20, "PPO iterations (rollout batch -> update -> weight push)", ge=1)
    prompts_per_iteration: int = param(64, "prompts sampled per iteration (x samples_per_prompt rows)", ge=1)
    max_prompt_len: int = param(64, "prompt token budget (longer prompts: truncation)", ge=1)
    truncation: Literal["middle", "skip", "error"] = param("middle", "over-long prompts: cut in the middle, skip, or error")
    eval_prompts: int = param(128, "held-out prompts for gold/proxy/KL evaluation (0: none)", ge=0)
    eval_every: int = param(0, "iterations between evaluations (0: only before and after)", ge=0)
    save_every: int = param(0, "iterations between checkpoints (policy, critic, optimizers, driver state; 0: none)", ge=0)
    keep_checkpoints: int = param(2, "newest checkpoints kept", ge=1)
    resume: Literal["never", "auto"] = param("never", "auto: continue the run in `out` from its newest complete checkpoint")
    overwrite: bool = param(False, "start over in an `out` that holds a run (its run files are removed)")
    write_trajectories: bool = param(True, "write every iteration's Arrow rows to out/trajectories")
    trajectory_format: Literal["parquet", "arrow"] = param("parquet", "trajectory files: parquet | arrow (IPC)")
    ray_address: str = param("", "Ray cluster address; empty: $RAY_ADDRESS or a local Ray")
    max_restarts: int = param(3, "lost rollout, reward or reference actors replaced in a run (each kind), then a clear stop", ge=0)
    learner: LearnerConfig = param(LearnerConfig(micro_batch_size=8), "learner group (policy + critic)")
    optim: OptimConfig = param(OptimConfig(lr=1e-5, schedule="constant", warmup_steps=10, grad_clip=1.0), "policy optimizer")
    critic_optim: OptimConfig = param(OptimConfig(lr=1e-5, schedule="constant", warmup_steps=10, grad_clip=1.0), "critic optimizer")
    rollout: RolloutConfig = param(RolloutConfig(), "rollout workers")
    reward: ScorerConfig = param(ScorerConfig(), "reward actors")
    reference: ReferenceConfig = param(ReferenceConfig(), "reference actors")
    ppo: PPOAlgoConfig = param(PPOAlgoConfig(), "the algorithm")
    log: LogConfig = param(LogConfig(), "experiment trackers")

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("missing --out DIR")
        unread = [f"columns.{name}" for name in ("response", "chosen", "rejected") if getattr(self.columns, name)]
        if unread:  # a key that maps nothing must not look as if it did
            raise ValueError(f"{', '.join(unread)}: ppo reads prompts (columns.prompt, columns.messages) and ptx "
                             "texts (columns.text), not demonstrations or comparisons")
        self._check_reward()
        p = self.ppo
        if p.advantage in ("grpo", "grpo_mean", "rloo") and self.rollout.samples_per_prompt < 2:
            raise ValueError(f"ppo.advantage={p.advantage} compares the responses to one prompt: set "
                             "rollout.samples_per_prompt >= 2")
        if p.kl_penalty == "loss" and p.kl_target is not None:
            raise ValueError("ppo.kl_target (adaptive KL coefficient) needs ppo.kl_penalty=reward")
        if self.reference.colocate_with_reward and self.reference.num_actors != self.reward.num_actors:
            raise ValueError(f"reference.colocate_with_reward=true puts one reference model in each reward actor: "
                             f"reference.num_actors ({self.reference.num_actors}) must equal reward.num_actors "
                             f"({self.reward.num_actors})")
        self._check_lora_sync()
        rows = self.prompts_per_iteration * self.rollout.samples_per_prompt
        if rows % self.ppo.minibatch_size:
            raise ValueError(f"prompts_per_iteration x rollout.samples_per_prompt = {rows} is not divisible by "
                             f"ppo.minibatch_size {self.ppo.minibatch_size}")

    # ---- Decisions that follow from the settings, made here once and read everywhere.

    @property
    def reward_uses_rm(self) -> bool:
        """The reward model scores the samples (reward_source rm or rm+fn)."""
        return self.reward_source in ("rm", "rm+fn")

    @property
    def reward_uses_fn(self) -> bool:
        """The reward function `reward_fn` scores the samples (reward_source fn or rm+fn)."""
        return self.reward_source in ("fn", "rm+fn")

    @property
    def reward_reads_text(self) -> bool:
        """The reward reads the prompt and response texts (a reward function, or the gold scorer)."""
        return self.reward_source in ("fn", "rm+fn", "gold")

    @property
    def has_critic(self) -> bool:
        """GAE trains a critic (`ppo.has_critic`)."""
        return self.ppo.has_critic

    @property
    def critic_start(self) -> str:
        """Where the critic starts: `critic`, else the reward model (InstructGPT C.4); "" without a critic."""
        return (self.critic or self.reward_model) if self.has_critic else ""

    @property
    def reads_reward_model(self) -> bool:
        """A reward model folder is read: as the reward, or as the critic's start (GAE without critic=)."""
        return self.reward_uses_rm or (self.has_critic and not self.critic)

    @property
    def episodes(self) -> bool:
        """Each sample is a multi-turn episode against the environment `env`."""
        return bool(self.env.strip())

    def _check_lora_sync(self) -> None:
        """rollout.lora_sync=adapter: the policy has adapters, their rank is one vLLM serves, and the
        transport is the object store (the adapters are a few MB)."""
        r = self.rollout
        if r.lora_sync != "adapter":
            return
        if not self.learner.lora_rank:
            raise ValueError("rollout.lora_sync=adapter pushes the policy's LoRA adapters: set learner.lora_rank > 0 "
                             "(or rollout.lora_sync=merged)")
        if self.learner.lora_rank > VLLM_MAX_LORA_RANK:
            raise ValueError(f"rollout.lora_sync=adapter: learner.lora_rank={self.learner.lora_rank} is above the "
                             f"largest LoRA rank vLLM serves ({VLLM_MAX_LORA_RANK}); use rollout.lora_sync=merged")
        if r.weight_transport == "broadcast":
            raise ValueError("rollout.lora_sync=adapter sends the adapters through the Ray object store: set "
                             "rollout.weight_transport=object_store or auto (or rollout.lora_sync=merged)")

    def _check_reward(self) -> None:
        """The reward settings agree: a function where one is used, and only there. A missing RM
        folder is found or built in `models`, so `reward_model` may stay empty here."""
        if self.reward_source == "env" and not self.episodes:
            raise ValueError("reward_source=env needs env='module:attr' or 'path/to/file.py:attr' (an environment)")
        if self.reward_uses_fn and not self.reward_fn.strip():
            raise ValueError(f"reward_source={self.reward_source} needs reward_fn='module:attr' or 'path/to/file.py:attr'")
        if not self.reward_uses_fn and self.reward_fn:
            raise ValueError(f"reward_fn={self.reward_fn!r} is unused with reward_source={self.reward_source}: "
                             "set reward_source=fn or rm+fn")
