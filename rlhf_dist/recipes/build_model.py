"""Build the tiny base model's starting point: a BPE tokenizer trained on a task's pretraining
corpus and a random-init Llama of a named size, saved as one Hugging Face folder.

    rlhf-dist build-model --out runs/base_init data=runs/demo/data size=small
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from rlhf_dist.config import parse_cli
from rlhf_dist.config.pipeline import BuildModelConfig


def build_model(cfg: BuildModelConfig) -> Path:
    from rlhf_dist.data import load_texts
    from rlhf_dist.models import TINY_SIZES, save_tiny_model

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
