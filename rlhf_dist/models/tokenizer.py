"""A byte-level BPE tokenizer trained locally with `tokenizers` (no hub)."""

from __future__ import annotations

from collections.abc import Iterable

# 256 bytes + specials + merges: 1024 leaves room to merge every word of the built-in language
# into one token (~660 are used); with 512 most numbers and many words stayed split.
from rlhf_dist.config.fields import DEFAULT_VOCAB_SIZE  # noqa: E402

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE):
    """Train a byte-level BPE tokenizer on `texts`; returns a transformers PreTrainedTokenizerFast.

    PAD is its own token, distinct from EOS: with PAD == EOS the EOS gets masked out with the
    padding and the model never learns to stop (N+ implementation details, detail 3). Encoding
    prepends BOS (a post-processor, so transformers and vLLM tokenise prompts identically); EOS is
    appended by the data code to every target. Byte-level means no text is ever unknown.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values())
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    # Every word is tokenised with its leading space, wherever it stands: a response's first word
    # (after the prompt's "\n", or encoded on its own) gets the same id as that word in the prompt,
    # so copying and comparing need one embedding per word, not two. Splitting after each "\n"
    # and prefixing each piece with a space does it (cf. SentencePiece's "always" prefix in Llama).
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("\n"), "merged_with_previous"),
        pre_tokenizers.ByteLevel(add_prefix_space=True),
    ])
    # ... and decoding drops those added spaces again (on the whole text, hence Fuse), so
    # decode(encode(text)) == text for any text without a space right after a newline.
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Fuse(), decoders.Replace("\n ", "\n"),
                                     decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
