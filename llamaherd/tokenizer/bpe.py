"""Byte-level BPE tokenizer (GGUF `tokenizer.ggml.model` = "gpt2": GPT-2, Llama-3, SmolLM...).

Encoding runs on Hugging Face's `tokenizers` library, built from the GGUF's vocabulary and
merges: these vocabularies were made with it, so it is the reference behaviour, and its
Rust BPE is far faster than one written in Python. Special tokens are split off here
first (base.py), so the library only ever sees plain text.

Decoding does not need the library: each token's text maps back to bytes through GPT-2's
byte <-> printable-character table.
"""

from __future__ import annotations

from tokenizers import Regex
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from ..errors import FormatError
from .base import LLAMA3_PRE_NAMES, Tokenizer, Vocab

# Llama-3's split pattern, from its tokenizer.json.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _pre_tokenizer(pre: str, source: str) -> tuple[pre_tokenizers.PreTokenizer, bool]:
    """The pre-tokenizer for `tokenizer.ggml.pre`, and whether the BPE model ignores merges
    for words that are already whole tokens (Llama-3 sets `ignore_merges`)."""
    if pre in LLAMA3_PRE_NAMES:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]), True
    if pre in ("smollm", "starcoder"):
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]), False
    if pre in ("default", "gpt2", "gpt-2"):
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), False
    known = sorted(LLAMA3_PRE_NAMES | {"smollm", "starcoder", "default", "gpt2", "gpt-2"})
    raise FormatError(f"{source}: unknown pre-tokenizer tokenizer.ggml.pre={pre!r} (supported: {', '.join(known)})")


def _byte_decoder() -> dict[str, int]:
    """GPT-2's table, inverted: the printable character that stands for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


BYTE_DECODER = _byte_decoder()


class BpeTokenizer(Tokenizer):
    kind = "bpe"

    def __init__(self, vocab: Vocab) -> None:
        super().__init__(vocab)
        pre_tokenizer, ignore_merges = _pre_tokenizer(vocab.pre, vocab.source)
        merges = [self._split_merge(i, m) for i, m in enumerate(vocab.merges)]
        try:
            model = models.BPE(vocab=dict(self._ids), merges=merges, ignore_merges=ignore_merges)
        except Exception as e:  # the library reports bad merges as plain exceptions
            raise FormatError(f"{vocab.source}: tokenizer.ggml.merges do not fit the vocabulary: {e}") from None
        self._hf = HFTokenizer(model)
        self._hf.pre_tokenizer = pre_tokenizer

    def _split_merge(self, index: int, merge: str) -> tuple[str, str]:
        # Byte-level token texts never contain " ", so the first space after the first
        # character separates the pair (llama.cpp splits the same way).
        cut = merge.find(" ", 1)
        if cut < 0:
            raise FormatError(f"{self.source}: tokenizer.ggml.merges[{index}] = {merge!r} is not a pair \"a b\"")
        return merge[:cut], merge[cut + 1:]

    def _encode_text(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def _normal_token_bytes(self, token_id: int, at_start: bool) -> bytes:
        text = self._tokens[token_id]
        try:
            return bytes(BYTE_DECODER[c] for c in text)
        except KeyError:  # not a byte-level token after all: show its text as it is
            return text.encode("utf-8")
