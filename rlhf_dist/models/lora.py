"""LoRA adapters on a trained model (Hu et al. 2021, arXiv 2106.09685), with `peft`.

`add_lora` injects adapters in place (`peft.inject_adapter_in_model`): the model keeps its own class
and attributes (`ScalarHeadModel.hf.base_model` still is the backbone), every base weight is frozen,
and only the adapters get gradients and AdamW states. A scalar model's head (`score`) gets no
adapter and trains in full: a new reward model's head starts random (InstructGPT 3.5).

The learner streams its weights merged (`merged_named_tensors`): W + (alpha / r) * B @ A under the
base layer's own name, so the vLLM rollout workers, the weight-sync parity check and the saved model
folder see a plain model of the original architecture. `adapter_state` keeps the adapters alone,
under peft's names, for the adapter folder that `peft.PeftModel.from_pretrained` loads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

ADAPTER = "default"  # peft's adapter name; we train one adapter per model
ALL_LINEAR = "all-linear"
SCALAR_HEAD = "score"  # the head of *ForSequenceClassification (ScalarHeadModel)
LORA_PARAM = ".lora_"  # peft's parameter names: <module>.lora_A.default.weight, <module>.lora_B.default.weight
BASE = ".base_layer."  # and <module>.base_layer.weight / .bias for the frozen layer


def target_modules(targets: str | list[str]) -> str | list[str]:
    """peft's `target_modules` of `learner.lora_targets`: "all-linear", a list of module names, or
    one string of comma-separated names."""
    if isinstance(targets, str):
        return ALL_LINEAR if targets == ALL_LINEAR else [t.strip() for t in targets.split(",") if t.strip()]
    return list(targets)


def lora_config(rank: int, alpha: float, dropout: float, targets: str | list[str], scalar: bool):
    """The `peft.LoraConfig` of a learner's LoRA keys; a scalar model's head is excluded (trained in full)."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules(targets),
                      exclude_modules=[SCALAR_HEAD] if scalar else None, bias="none")


def add_lora(model: torch.nn.Module, rank: int, alpha: float, dropout: float, targets: str | list[str]) -> torch.nn.Module:
    """Inject LoRA adapters into `model` (a causal LM or a ScalarHeadModel) in place and freeze the
    rest, except a scalar model's head. Returns the model."""
    from peft import inject_adapter_in_model

    hf = getattr(model, "hf", model)  # ScalarHeadModel keeps the HF model under .hf
    scalar = hf is not model
    inject_adapter_in_model(lora_config(rank, alpha, dropout, targets, scalar), hf, adapter_name=ADAPTER)
    for name, param in model.named_parameters():
        param.requires_grad = LORA_PARAM in name or (scalar and name.startswith(f"hf.{SCALAR_HEAD}."))
    return model


def lora_layers(model: torch.nn.Module) -> dict[str, tuple[float, bool]]:
    """{module name: (scaling alpha / r, fan_in_fan_out)} of every LoRA layer in `model`; {} without LoRA.
    fan_in_fan_out: the base weight is stored (in, out), as GPT-2's Conv1D."""
    from peft.tuners.lora import LoraLayer

    return {name: (float(m.scaling[ADAPTER]), bool(getattr(m, "fan_in_fan_out", False)))
            for name, m in model.named_modules() if isinstance(m, LoraLayer) and ADAPTER in m.lora_A}


def merged_named_tensors(named: Iterable[tuple[str, torch.Tensor]],
                         layers: dict[str, tuple[float, bool]]) -> Iterator[tuple[str, torch.Tensor]]:
    """The (name, tensor) stream of a model with LoRA layers -> the stream of the merged model under
    the original names: `<m>.base_layer.weight` + `<m>.lora_A/B` -> `<m>.weight` = W + s * B @ A
    (transposed for fan_in_fan_out), `<m>.base_layer.bias` -> `<m>.bias`; adapters are not yielded.
    A base weight is held only until its module's two adapters have arrived (they follow it)."""
    held: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in named:
        module, part = _split_lora_name(name)
        if module is None or module not in layers:
            yield name, tensor
            continue
        if part == "bias":
            yield f"{module}.bias", tensor
            continue
        parts = held.setdefault(module, {})
        parts[part] = tensor
        if len(parts) == 3:
            del held[module]
            scaling, fan_in_fan_out = layers[module]
            delta = (parts["B"].float() @ parts["A"].float()) * scaling
            base = parts["weight"]
            yield f"{module}.weight", (base.float() + (delta.T if fan_in_fan_out else delta)).to(base.dtype)
    if held:
        raise RuntimeError(f"LoRA layers without their base weight or adapters in the stream: {sorted(held)[:3]}")


def _split_lora_name(name: str) -> tuple[str | None, str]:
    """'<m>.base_layer.weight' -> (m, 'weight'); '<m>.lora_A.default.weight' -> (m, 'A'); else (None, '')."""
    if BASE in name:
        module, _, rest = name.rpartition(BASE)
        return module, rest
    for part in ("A", "B"):
        suffix = f".lora_{part}.{ADAPTER}.weight"
        if name.endswith(suffix):
            return name[: -len(suffix)], part
    return None, ""


def adapter_state(named: Iterable[tuple[str, torch.Tensor]], prefix: str = "") -> dict[str, torch.Tensor]:
    """The adapters (and a scalar model's head) of a (name, tensor) stream under the names of peft's
    adapter file: `base_model.model.<m>.lora_A.weight` (the adapter name dropped). `prefix` is removed
    from the names first (a ScalarHeadModel's "hf.")."""
    out = {}
    for name, tensor in named:
        name = name.removeprefix(prefix)
        if LORA_PARAM in name:
            out["base_model.model." + name.replace(f".{ADAPTER}.", ".")] = tensor
        elif name.startswith(f"{SCALAR_HEAD}."):
            out["base_model.model." + name] = tensor
    return out


def save_adapter(path: str | Path, state: dict[str, torch.Tensor], rank: int, alpha: float, dropout: float,
                 targets: str | list[str], scalar: bool, base_model: str) -> None:
    """An adapter folder that `peft.PeftModel.from_pretrained(base, path)` loads: adapter_config.json
    (task type CAUSAL_LM, or SEQ_CLS with the head as a module to save) and adapter_model.safetensors."""
    from safetensors.torch import save_file

    cfg = lora_config(rank, alpha, dropout, targets, scalar)
    cfg.task_type = "SEQ_CLS" if scalar else "CAUSAL_LM"
    cfg.base_model_name_or_path = str(base_model)
    if scalar:
        cfg.modules_to_save = [SCALAR_HEAD]
    Path(path).mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(str(path))
    save_file({k: v.contiguous() for k, v in state.items()}, str(Path(path) / "adapter_model.safetensors"))


def check_lora_targets(path: str | Path, targets: str | list[str], key: str, scalar: bool = False) -> None:
    """Raise ValueError naming `key` when a module name in `targets` matches no linear layer of the
    model at `path` (peft would fail inside a learner rank). The model is built on the meta device:
    no weights are read."""
    names = target_modules(targets)
    if names == ALL_LINEAR:
        return
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    if not names:
        raise ValueError(f"{key}: no module names")
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    with torch.device("meta"):
        model = (AutoModelForSequenceClassification.from_config(config, num_labels=1) if scalar
                 else AutoModelForCausalLM.from_config(config))
    linear = {n.rpartition(".")[2] for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"}
    missing = [n for n in names if n.rpartition(".")[2] not in linear]
    if missing:
        raise ValueError(f"{key}={','.join(names)}: no linear layer named {', '.join(missing)} in {path} "
                         f"(its linear layers: {', '.join(sorted(linear))})")
