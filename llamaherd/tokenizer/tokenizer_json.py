"""A Hugging Face `tokenizer.json`, encoded by the `tokenizers` library that defines it.

The vocabulary (with added tokens) goes into the shared `Vocab`: added special tokens are
control tokens, other added tokens user-defined, `<0xXX>` pieces of a byte-fallback model
byte tokens. BOS/EOS, add_bos and the chat template come from `tokenizer_config.json`
beside it when there is one. Decoding follows the file's decoder: byte-level (GPT-2,
Llama-3) or SentencePiece-style "▁" spaces (Llama-2).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import FormatError
from ..formats.json_file import read_json_object
from .base import Tokenizer, TokenType, Vocab
from .bpe import BYTE_DECODER

SPACE = "\u2581"
BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")
BOS_GUESSES = ("<s>", "<|begin_of_text|>")
EOS_GUESSES = ("</s>", "<|end_of_text|>", "<|endoftext|>")


def _decoder_kinds(spec: Any) -> set[str]:
    if not isinstance(spec, dict):
        return set()
    kinds = {spec.get("type")}
    for child in spec.get("decoders") or []:
        kinds |= _decoder_kinds(child)
    return kinds


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # {"content": "<s>", ...} in older tokenizer_config.json files
        value = value.get("content")
    return value if isinstance(value, str) else None


class TokenizerJson(Tokenizer):
    kind = "hf"

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        spec = read_json_object(path)
        try:
            self._hf = HFTokenizer.from_str(json.dumps(spec))
        except Exception as e:  # the library raises its own exception types
            raise FormatError(f"{path}: not a usable tokenizer.json: {e}") from None
        self._hf.encode_special_tokens = True  # base.py decides which special texts are tokens
        config = self._read_config(path.parent / "tokenizer_config.json")

        n = self._hf.get_vocab_size(with_added_tokens=True)
        tokens: list[str | None] = [None] * n
        for text, i in self._hf.get_vocab(with_added_tokens=True).items():
            if 0 <= i < n:
                tokens[i] = text
        tokens = [t if t is not None else f"[UNUSED_{i}]" for i, t in enumerate(tokens)]
        model = spec.get("model") or {}
        types = [TokenType.NORMAL] * n
        for i, added in self._hf.get_added_tokens_decoder().items():
            if 0 <= i < n:
                types[i] = TokenType.CONTROL if added.special else TokenType.USER_DEFINED
        if model.get("byte_fallback"):  # <0xXX> pieces are bytes even when listed as added tokens
            for i, t in enumerate(tokens):
                if BYTE_TOKEN.fullmatch(t):
                    types[i] = TokenType.BYTE
        for i, t in enumerate(tokens):
            if t.startswith("[UNUSED_"):
                types[i] = TokenType.UNUSED
        self._byte_level = "ByteLevel" in _decoder_kinds(spec.get("decoder"))
        # Llama-2-style files put a "▁" in front of the first word and strip it when decoding.
        self._strip_first_space = not self._byte_level and bool({"Strip", "Metaspace"} & _decoder_kinds(spec.get("decoder")))

        ids = {t: i for i, t in enumerate(tokens)}
        pick = lambda key, guesses: self._special(ids, _token_text(config.get(key)), guesses)
        bos, eos = pick("bos_token", BOS_GUESSES), pick("eos_token", EOS_GUESSES)
        add_bos = config.get("add_bos_token")
        if not isinstance(add_bos, bool):
            add_bos = bos is not None and self._post_processor_adds(spec, tokens[bos] if bos is not None else "")
        unk = model.get("unk_token")
        vocab = Vocab(
            source=str(path), model="hf", pre="default", tokens=tokens, types=types, scores=None, merges=None,
            bos_id=bos, eos_id=eos, eot_id=ids.get("<|eot_id|>"), eom_id=ids.get("<|eom_id|>"),
            unk_id=ids.get(unk) if isinstance(unk, str) else None,
            pad_id=self._special(ids, _token_text(config.get("pad_token")), ()),
            add_bos=add_bos, add_space_prefix=False,
            chat_template=config.get("chat_template") if isinstance(config.get("chat_template"), str) else None,
        )
        super().__init__(vocab)

    @staticmethod
    def _read_config(path: Path) -> dict:
        return read_json_object(path) if path.is_file() else {}

    @staticmethod
    def _special(ids: dict[str, int], text: str | None, guesses: tuple[str, ...]) -> int | None:
        for candidate in ([text] if text else []) + list(guesses):
            if candidate in ids:
                return ids[candidate]
        return None

    @staticmethod
    def _post_processor_adds(spec: dict, bos_text: str) -> bool:
        """Whether the file's TemplateProcessing puts BOS in front of a single sequence."""
        processors = [spec.get("post_processor") or {}]
        processors += processors[0].get("processors") or []
        for p in processors:
            if p.get("type") == "TemplateProcessing":
                single = p.get("single") or []
                return bool(single) and (single[0].get("SpecialToken") or {}).get("id") == bos_text
        return False

    def _encode_text(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def _normal_token_bytes(self, token_id: int, at_start: bool) -> bytes:
        text = self._tokens[token_id]
        if self._byte_level:
            try:
                return bytes(BYTE_DECODER[c] for c in text)
            except KeyError:
                return text.encode("utf-8")
        text = text.replace(SPACE, " ")
        if at_start and self._strip_first_space and text.startswith(" "):
            text = text[1:]
        return text.encode("utf-8")
