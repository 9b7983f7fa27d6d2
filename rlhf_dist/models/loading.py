"""Load tokenizers and models from local folders only (no hub at run time)."""

from __future__ import annotations

from pathlib import Path


def quiet_transformers() -> None:
    """Hide transformers' per-call progress bars (loading/writing a 5M model takes milliseconds)."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging

        logging.disable_progress_bar()
    except ImportError:  # transformers absent: nothing to quiet
        pass


def _local_dir(path) -> Path:
    quiet_transformers()
    p = Path(path)
    if not (p / "config.json").is_file() and not (p / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{p}: not a local model folder (no config.json / tokenizer.json); models load from local paths only")
    return p


def load_tokenizer(path):
    """The tokenizer saved in `path` (PAD must exist and differ from EOS)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_local_dir(path), local_files_only=True)
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        raise ValueError(f"{path}: tokenizer needs a PAD token distinct from EOS (pad={tok.pad_token_id}, eos={tok.eos_token_id})")
    return tok


def load_causal_lm(path, dtype=None):
    """An HF causal LM from a local folder, in eval mode, with dropout off."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        _local_dir(path), local_files_only=True, dtype=dtype or torch.float32
    )
    return disable_dropout(model).eval()


def load_scalar_model(path, dtype=None):
    """A reward/value model (ScalarHeadModel) from a local folder saved by this package."""
    import torch

    from rlhf_dist.models.scalar import ScalarHeadModel

    model = ScalarHeadModel.from_pretrained(_local_dir(path), local_files_only=True, dtype=dtype or torch.float32)
    return disable_dropout(model).eval()


def disable_dropout(model):
    """Set every dropout probability to 0 (N+ detail 7: log-probs must be reproducible in train mode)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model
