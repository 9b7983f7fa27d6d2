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
    vocab_size: int = field(default=512, metadata={"help": "BPE vocabulary size (incl. 256 bytes + specials)"})
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


def main(argv: list[str]) -> int:
    cfg = parse_cli(BuildModelConfig, argv, "rlhf-dist build-model", __doc__)
    out = build_model(cfg)
    print(f"saved tokenizer + random-init {cfg.size} Llama to {out}")
    return 0
