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


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_model_dir(path, key: str) -> None:
    """Raise FileNotFoundError/ValueError naming `key=path` and what is wrong, before a model is
    loaded anywhere (a Ray actor's traceback would bury it): a folder with config.json, a tokenizer,
    and weights that are complete (a safetensors file's header must fit the file's size)."""
    import json

    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{key}={path}: no such model folder (models load from local paths only)")
    missing = [name for name, ok in (("config.json", (p / "config.json").is_file()),
                                    ("a tokenizer (tokenizer.json)", any((p / f).is_file() for f in TOKENIZER_FILES)),
                                    ("weights (model.safetensors)", any((p / f).is_file() for f in WEIGHT_FILES)))
               if not ok]
    if missing:
        raise FileNotFoundError(f"{key}={path}: not a complete model folder, missing {', '.join(missing)}")
    try:
        json.loads((p / "config.json").read_text())
    except ValueError:
        raise ValueError(f"{key}={path}: config.json is not valid JSON") from None
    shards = [p / "model.safetensors"] if (p / "model.safetensors").is_file() else []
    if not shards and (p / "model.safetensors.index.json").is_file():
        index = json.loads((p / "model.safetensors.index.json").read_text())
        shards = [p / name for name in sorted(set(index.get("weight_map", {}).values()))]
    for shard in shards:
        problem = _safetensors_problem(shard)
        if problem:
            raise ValueError(f"{key}={path}: {shard.name} {problem}")


def _safetensors_problem(file: Path) -> str | None:
    """Why a safetensors file cannot be complete (header: 8-byte length + JSON with byte offsets), or None."""
    import json
    import struct

    if not file.is_file():
        return "is missing"
    size = file.stat().st_size
    with file.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"is truncated ({size} bytes)"
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            return f"is truncated or corrupt (its header alone claims {n} bytes, the file has {size})"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return "is corrupt (its header is not JSON)"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        return f"is truncated ({size} bytes, its tensors need {8 + n + end})"
    return None


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
