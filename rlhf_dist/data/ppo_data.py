"""What a PPO run reads: the RL and held-out prompts (formatted and tokenised within the prompt
budget) and the ptx sequences, checked before any actor starts. Which models a run loads is the
config's decision (rlhf_dist/config/ppo.py), checked where the actors start them.

Every file is read by rlhf_dist/data/readers.py, so it may be JSONL, Parquet, Arrow or a dataset
folder (`FOLDER#SPLIT`), in any prompt schema there; `columns.prompt` / `columns.messages` map the
prompt files' columns, `columns.text` the ptx files' (`PPOConfig.columns`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhf_dist.data.encode import format_prompts, tokenize_demonstrations, tokenize_prompts, tokenize_texts
from rlhf_dist.data.readers import load_lm_data, load_prompts, source_exists


@dataclass
class PPOData:
    pad_id: int
    prompts: list  # prompt objects (str or messages), index = prompt_id
    prompt_ids: list  # formatted token ids, same order
    eval_prompts: list
    eval_prompt_ids: list
    ptx: list  # tokenised ptx sequences (empty without ptx)
    tokenizer: object  # the SFT model's (the RM and the critic share it)


def load_ppo_data(cfg, tok) -> PPOData:
    """Read and check the prompts and ptx data of a `PPOConfig` run, tokenised with `tok` (the SFT
    model's tokenizer); raise with the key at fault (file or folder)."""
    files = {key: getattr(cfg, key) or (str(Path(cfg.data) / name) if cfg.data else "")
             for key, name in (("prompts_file", "rl_prompts.jsonl"), ("eval_prompts_file", "eval_prompts.jsonl"),
                               ("ptx_file", "pretrain.jsonl"))}
    if not files["prompts_file"]:
        raise ValueError("give data=DIR (a task-data folder) or prompts_file=FILE")
    prompt_columns = {"prompt": cfg.columns.prompt, "messages": cfg.columns.messages}

    def prompts_and_ids(path: str, limit: int | None):
        prompts = load_prompts(path, prompt_columns)[:limit]
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
        if not files["eval_prompts_file"]:
            raise FileNotFoundError("no held-out prompts: give eval_prompts_file=FILE (or data=DIR), or set "
                                    "eval_prompts=0 to skip evaluation")
        if not source_exists(files["eval_prompts_file"]):
            raise FileNotFoundError(f"{files['eval_prompts_file']}: no held-out prompts (set eval_prompts=0 to skip evaluation)")
        eval_prompts, eval_ids = prompts_and_ids(files["eval_prompts_file"], cfg.eval_prompts)
    ptx = (ptx_sequences(files["ptx_file"], tok, cfg.ppo.ptx_max_len, cfg.ppo.ptx_coef, {"text": cfg.columns.text})
           if cfg.ppo.ptx_coef else [])
    return PPOData(tok.pad_token_id, prompts, prompt_ids, eval_prompts, eval_ids, ptx, tok)


def ptx_sequences(spec: str, tok, max_len: int, ptx_coef: float, columns=None) -> list[list[int]]:
    """Token sequences of the ptx mix, from every file or dataset folder of `spec`
    (comma-separated), in order.

    A file holds pretraining texts `{text}` (InstructGPT's ptx: the pretraining distribution) or
    demonstrations `{prompt, response}` / `{messages}`, which enter as the very token ids SFT
    trained on (prompt + response + EOS; the LM loss covers every token). Demonstrations protect
    the task skill SFT taught, which PPO erodes when the RM cannot check it (docs/results.md).
    `columns`: the readers' column mapping, applied to every file (PPO passes `columns.text`).
    """
    paths = [p.strip() for p in spec.split(",") if p.strip()]
    if not paths:
        raise FileNotFoundError(f"ppo.ptx_coef={ptx_coef} needs ptx data: set ptx_file=FILE (or data=DIR with pretrain.jsonl)")
    out: list[list[int]] = []
    for path in paths:
        if not source_exists(path):
            raise FileNotFoundError(f"ppo.ptx_coef={ptx_coef} needs ptx data: ptx_file={path!r} not found")
        rows = load_lm_data(path, columns)
        encode = tokenize_texts if isinstance(rows[0], str) else tokenize_demonstrations
        out += encode(rows, tok, max_len)[0]
    return out
