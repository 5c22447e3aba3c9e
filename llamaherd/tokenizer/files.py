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
    """tokenizer.json when present (it is what HF checkpoints are tested with), else
    tokenizer.model, with the chat template of tokenizer_config.json beside it."""
    directory = Path(directory)
    if (directory / "tokenizer.json").is_file():
        return tokenizer_from_file(directory / "tokenizer.json")  # reads tokenizer_config.json itself
    if (directory / "tokenizer.model").is_file():
        tokenizer = tokenizer_from_file(directory / "tokenizer.model")
        config = directory / "tokenizer_config.json"
        if tokenizer.chat_template is None and config.is_file():
            from ..formats.json_file import read_json_object

            template = read_json_object(config).get("chat_template")
            tokenizer.chat_template = template if isinstance(template, str) else None
        return tokenizer
    raise FormatError(f"{directory}: no tokenizer.json or tokenizer.model")
