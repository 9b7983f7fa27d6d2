"""Build the tiny base model's starting point: a BPE tokenizer trained on a task's pretraining
corpus and a random-init Llama of a named size, saved as one Hugging Face folder.

    rlhf-dist build-model --out runs/base_init data=runs/demo/data size=small
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlhf_dist.config import parse_cli


@dataclass
class BuildModelConfig:
    out: str = field(default="runs/base_init", metadata={"help": "output model folder (HF format)"})
    data: str = field(default="", metadata={"help": "task-data folder whose pretrain.jsonl trains the tokenizer"})
    size: str = field(default="small", metadata={"help": "model size: tiny (tests) or small (~5M, the demo)"})
    vocab_size: int | None = field(default=None, metadata={"help": "BPE vocabulary size, at most (incl. 256 bytes + specials; None: the tokenizer default, 1024)"})
    seed: int = field(default=0, metadata={"help": "weight-init seed"})


def build_model(cfg: BuildModelConfig) -> Path:
    from rlhf_dist.data import load_texts
    from rlhf_dist.models import TINY_SIZES, save_tiny_model

    if cfg.size not in TINY_SIZES:
        raise ValueError(f"size={cfg.size!r}: expected one of {sorted(TINY_SIZES)}")
    if not cfg.data:
        raise ValueError("data=: give the task-data folder (write one with `rlhf-dist task-data --out DIR`)")
    texts = load_texts(Path(cfg.data) / "pretrain.jsonl")
    out = save_tiny_model(cfg.out, texts, TINY_SIZES[cfg.size], vocab_size=cfg.vocab_size, seed=cfg.seed)
    (out / "rlhf_dist_build.json").write_text(json.dumps(asdict(cfg), indent=2))
    return out


def placeholder_ppo_models(root: str | Path, sft_dir: str | Path) -> tuple[str, str, str]:
    """What a PPO run needs, built in seconds, for tests and benchmarks: (sft, rm, data).

    `sft_dir` (any causal LM folder with its tokenizer) stands in for the SFT model; the RM is its
    backbone with a fresh scalar head (a random reward model), tokenizer included; the data are
    the built-in task's files at small counts. Quality is irrelevant: these exercise machinery.
    """
    from rlhf_dist.models import init_scalar_from_causal_lm, load_tokenizer
    from rlhf_dist.tasks.generate import main as task_data

    root = Path(root)
    rm_dir = root / "rm"
    init_scalar_from_causal_lm(sft_dir, seed=1).save_pretrained(rm_dir)
    load_tokenizer(sft_dir).save_pretrained(rm_dir)
    data = root / "data"
    if task_data(["--out", str(data), "seed=0", "n_pretrain=400", "n_pretrain_heldout=50", "n_sft=50", "n_rl_prompts=200",
                  "n_eval_prompts=40", "n_comparisons=20", "n_comparisons_heldout=10", "n_agreement_pairs=100", "probe=0"]):
        raise RuntimeError(f"task-data failed for {data}")
    return str(sft_dir), str(rm_dir), str(data)


def main(argv: list[str]) -> int:
    cfg = parse_cli(BuildModelConfig, argv, "rlhf-dist build-model", __doc__)
    out = build_model(cfg)
    print(f"saved tokenizer + random-init {cfg.size} Llama to {out}")
    return 0
