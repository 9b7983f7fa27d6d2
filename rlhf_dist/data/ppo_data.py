"""What a PPO run reads: the RL and held-out prompts (formatted and tokenised within the prompt
budget), the ptx sequences, and the shared tokenizer, checked before any actor starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhf_dist.data.encode import format_prompts, prompt_text, tokenize_demonstrations, tokenize_prompts, tokenize_texts
from rlhf_dist.data.readers import load_lm_data, load_prompts


class NonFiniteScoreError(ValueError):
    """A reward that is NaN or infinite; the message names the prompt and the sample."""


@dataclass
class PPOData:
    sft: str  # the policy's start and the frozen reference
    reward_model: str  # the RM folder ("" when reward_source uses none: fn, gold)
    critic: str  # the critic's start: critic=, else reward_model= (also with fn/gold), else "" (the learner decides)
    pad_id: int
    prompts: list  # prompt objects (str or messages), index = prompt_id
    prompt_ids: list  # formatted token ids, same order
    eval_prompts: list
    eval_prompt_ids: list
    ptx: list  # tokenised ptx sequences (empty without ptx)
    tokenizer: object  # the SFT model's (the RM and the critic share it)

    def check_finite_scores(self, table, source: str) -> None:
        """Raise NonFiniteScoreError naming the first row whose `score` is NaN or infinite (its
        prompt and sample): a non-finite reward would turn every loss and gradient into NaN."""
        import numpy as np

        score = np.asarray(table.column("score").to_numpy(zero_copy_only=False), dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(score))
        if bad.size:
            i = int(bad[0])
            pid, sample = table.column("prompt_id")[i].as_py(), table.column("sample_index")[i].as_py()
            raise NonFiniteScoreError(
                f"reward_source={source}: score {score[i]} for prompt {pid} ({prompt_text(self.prompts[pid])[:60]!r}), "
                f"sample {sample}; {bad.size} of {len(score)} rows of this batch are not finite")

    def gold_scores(self, task, table) -> list[float]:
        """The task's hidden gold score of each rollout row of `table` (its prompt_id indexes `prompts`)."""
        texts = self.tokenizer.batch_decode(table.column("response_ids").to_pylist(), skip_special_tokens=True)
        ids = table.column("prompt_id").to_pylist()
        return [float(task.gold_score(prompt_text(self.prompts[i]), t)) for i, t in zip(ids, texts)]


def load_ppo_data(cfg) -> PPOData:
    """Read and check the data of a `PPOConfig` run; raise with the key at fault (file, folder or
    tokenizer).

    The RM is required and checked only when `reward_source` uses it (rm, rm+fn). With fn or gold
    a given `reward_model=` is only the critic's start (when `critic=` is empty); with neither,
    `critic` is "" and the learner side decides (a critic-free estimator needs none)."""
    from rlhf_dist.models import check_model_dir, load_tokenizer

    sft, uses_rm = cfg.sft, cfg.reward_source in ("rm", "rm+fn")
    if uses_rm and not cfg.reward_model:
        raise ValueError(f"reward_source={cfg.reward_source} needs reward_model=DIR (a reward model folder)")
    reward_model = cfg.reward_model if uses_rm else ""
    critic = cfg.critic or cfg.reward_model
    rm_read = cfg.reward_model if uses_rm or not cfg.critic else ""  # the reward, or the critic's start
    for key, path in (("sft", sft), ("reward_model", rm_read), ("critic", cfg.critic)):
        if path:
            check_model_dir(path, key)
    files = {key: getattr(cfg, key) or (str(Path(cfg.data) / name) if cfg.data else "")
             for key, name in (("prompts_file", "rl_prompts.jsonl"), ("eval_prompts_file", "eval_prompts.jsonl"),
                               ("ptx_file", "pretrain.jsonl"))}
    if not files["prompts_file"]:
        raise ValueError("give data=DIR (a task-data folder) or prompts_file=FILE")
    tok = load_tokenizer(sft)
    if rm_read and load_tokenizer(rm_read).get_vocab() != tok.get_vocab():
        raise ValueError(f"reward_model={rm_read}: its tokenizer differs from the SFT model's ({sft}); "
                         "the RM (or the critic started from it) reads the policy's token ids, so both must share one tokenizer")

    def prompts_and_ids(path: str, limit: int | None):
        prompts = load_prompts(path)[:limit]
        total = len(prompts)
        if cfg.truncation == "skip":  # drop here, so prompt objects stay aligned with their ids
            prompts = [p for p, ids in zip(prompts, format_prompts(tok, prompts)) if len(ids) <= cfg.max_prompt_len]
        ids, stats = tokenize_prompts(prompts, tok, cfg.max_prompt_len, cfg.truncation)
        if not ids:
            raise ValueError(f"{path}: no prompt fits max_prompt_len={cfg.max_prompt_len}")
        print(f"   {path}: kept {len(ids)}/{total} prompts, truncated {stats.get('prompt_truncated', 0)} "
              f"(truncation={cfg.truncation}, max_prompt_len={cfg.max_prompt_len}), longest {max(map(len, ids))} tokens",
              flush=True)
        return prompts, ids

    prompts, prompt_ids = prompts_and_ids(files["prompts_file"], None)
    eval_prompts, eval_ids = [], []
    if cfg.eval_prompts:
        if not Path(files["eval_prompts_file"]).exists():
            raise FileNotFoundError(f"{files['eval_prompts_file']}: no held-out prompts (set eval_prompts=0 to skip evaluation)")
        eval_prompts, eval_ids = prompts_and_ids(files["eval_prompts_file"], cfg.eval_prompts)
    ptx = ptx_sequences(files["ptx_file"], tok, cfg.ppo.ptx_max_len, cfg.ppo.ptx_coef) if cfg.ppo.ptx_coef else []
    return PPOData(sft, reward_model, critic, tok.pad_token_id, prompts, prompt_ids,
                   eval_prompts, eval_ids, ptx, tok)


def ptx_sequences(spec: str, tok, max_len: int, ptx_coef: float) -> list[list[int]]:
    """Token sequences of the ptx mix, from every file of `spec` (comma-separated), in order.

    A file holds pretraining texts `{text}` (InstructGPT's ptx: the pretraining distribution) or
    demonstrations `{prompt, response}` / `{messages}`, which enter as the very token ids SFT
    trained on (prompt + response + EOS; the LM loss covers every token). Demonstrations protect
    the task skill SFT taught, which PPO erodes when the RM cannot check it (docs/results.md).
    """
    paths = [p.strip() for p in spec.split(",") if p.strip()]
    if not paths:
        raise FileNotFoundError(f"ppo.ptx_coef={ptx_coef} needs ptx data: set ptx_file=FILE (or data=DIR with pretrain.jsonl)")
    out: list[list[int]] = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"ppo.ptx_coef={ptx_coef} needs ptx data: ptx_file={path!r} not found")
        rows = load_lm_data(path)
        encode = tokenize_texts if isinstance(rows[0], str) else tokenize_demonstrations
        out += encode(rows, tok, max_len)[0]
    return out
