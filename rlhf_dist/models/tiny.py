"""Random-init Llama-family causal LMs of a chosen size, saved in Hugging Face format."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class TinyModelSpec:
    """Size of a tiny Llama. vLLM's CPU backend needs head_dim = hidden/heads in {32, 64, 80, 96, 112, 128, ...}."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 344
    max_position_embeddings: int = 256

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_size // self.num_heads < 32:
            raise ValueError(
                f"head_dim {self.hidden_size // self.num_heads} < 32: vLLM's CPU attention needs >= 32"
            )


# Named sizes: "tiny" for unit tests (~0.3M params + embeddings), "small" (~5M) for the demo.
TINY_SIZES = {
    "tiny": TinyModelSpec(),
    "small": TinyModelSpec(hidden_size=256, num_layers=6, num_heads=4, intermediate_size=688),
}


TOY_WORDS = (
    "the a cat dog bird sat ran on under mat box cup red blue green one two three four five "
    "list count avoid facts question answer is are and not"
).split()


def toy_corpus(n: int = 2000, seed: int = 0) -> list[str]:
    """Random sentences over a small vocabulary: tokenizer training text for tests and benchmarks."""
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(TOY_WORDS) for _ in range(rng.randint(3, 16))) for _ in range(n)]


def build_tiny_causal_lm(tokenizer, spec: TinyModelSpec = TinyModelSpec(), seed: int = 0):
    """A random-init LlamaForCausalLM sized by `spec`, with the tokenizer's special ids, dropout 0.

    Dropout stays at 0 everywhere: with dropout, log-probs are not reproducible and the first
    PPO ratio is not 1 (N+ detail 7; Ziegler et al. 2019).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny_model(
    out_dir: str | Path,
    texts: Iterable[str],
    spec: TinyModelSpec = TinyModelSpec(),
    vocab_size: int | None = None,
    seed: int = 0,
) -> Path:
    """Train a tokenizer on `texts`, build a random-init model, save both to `out_dir` (HF format).

    The folder loads with transformers' from_pretrained, vllm.LLM(model=out_dir) and our learners.
    Returns the folder.
    """
    from rlhf_dist.models.loading import quiet_transformers
    from rlhf_dist.models.tokenizer import DEFAULT_VOCAB_SIZE, train_bpe_tokenizer

    quiet_transformers()
    out_dir = Path(out_dir)
    tokenizer = train_bpe_tokenizer(texts, vocab_size=vocab_size or DEFAULT_VOCAB_SIZE)
    model = build_tiny_causal_lm(tokenizer, spec, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "rlhf_dist_spec.json").write_text(__import__("json").dumps(asdict(spec), indent=2))
    return out_dir
