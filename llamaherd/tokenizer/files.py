"""Tokenizers from files beside a checkpoint: tokenizer.json, or a tokenizer.model that is
either a SentencePiece model (LLaMA-1/2) or tiktoken ranks (Llama-3)."""

from __future__ import annotations

from pathlib import Path

from ..errors import FormatError
from .base import Tokenizer


def tokenizer_from_file(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such tokenizer file")
    if path.suffix == ".json":
        from .tokenizer_json import TokenizerJson

        return TokenizerJson(path)
    from .tiktoken_model import looks_like_tiktoken, tiktoken_tokenizer

    if looks_like_tiktoken(path):
        return tiktoken_tokenizer(path)
    from .sentencepiece_model import SentencePieceTokenizer

    return SentencePieceTokenizer(path)


def tokenizer_from_dir(directory: str | Path) -> Tokenizer:
    """tokenizer.json when present (it is what HF checkpoints are tested with), else tokenizer.model."""
    directory = Path(directory)
    for name in ("tokenizer.json", "tokenizer.model"):
        if (directory / name).is_file():
            return tokenizer_from_file(directory / name)
    raise FormatError(f"{directory}: no tokenizer.json or tokenizer.model")
