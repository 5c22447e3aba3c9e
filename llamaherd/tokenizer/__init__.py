"""Tokenizers read from GGUF metadata: SentencePiece ("llama") and byte-level BPE ("gpt2")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Tokenizer, TokenType, read_vocab
from .bpe import BpeTokenizer
from .spm import SpmTokenizer
from .stream import StreamDecoder

__all__ = ["Tokenizer", "TokenType", "StreamDecoder", "tokenizer_from_gguf"]


def tokenizer_from_gguf(metadata: Mapping[str, Any], source: str = "<metadata>") -> Tokenizer:
    """The tokenizer described by a GGUF file's `tokenizer.*` keys.

    Raises FormatError, naming `source`, when the keys are missing or inconsistent.
    """
    vocab = read_vocab(metadata, source)
    return SpmTokenizer(vocab) if vocab.model == "llama" else BpeTokenizer(vocab)
