"""What a PPO run needs, built in seconds, for the tests and the PPO benchmark (which imports this
module from the repository root): quality is irrelevant, these exercise machinery."""

from __future__ import annotations

from pathlib import Path


def placeholder_ppo_models(root: str | Path, sft_dir: str | Path) -> tuple[str, str, str]:
    """(sft, rm, data): `sft_dir` (any causal LM folder with its tokenizer) stands in for the SFT
    model; the RM is its backbone with a fresh scalar head (a random reward model), tokenizer
    included; the data are the built-in task's files at small counts."""
    from rlhf_dist.config.pipeline import TaskDataConfig
    from rlhf_dist.models import init_scalar_from_causal_lm, load_tokenizer
    from rlhf_dist.recipes.task_data import write_task_data

    root = Path(root)
    rm_dir = root / "rm"
    init_scalar_from_causal_lm(sft_dir, seed=1).save_pretrained(rm_dir)
    load_tokenizer(sft_dir).save_pretrained(rm_dir)
    data = root / "data"
    write_task_data(TaskDataConfig(out=str(data), seed=0, n_pretrain=400, n_pretrain_heldout=50, n_sft=50, n_rl_prompts=200,
                                   n_eval_prompts=40, n_comparisons=20, n_comparisons_heldout=10, n_agreement_pairs=100,
                                   probe=0), quiet=True)
    return str(sft_dir), str(rm_dir), str(data)
