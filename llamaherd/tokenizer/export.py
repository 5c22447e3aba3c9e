"""A tokenizer read from GGUF metadata, written as the files a Hugging Face folder carries,
so that `convert --to safetensors` of a GGUF file gives a folder that llamaherd and
transformers load with the same tokens:

  * byte-level BPE vocabularies (GPT-2, Llama-3, SmolLM): `tokenizer.json`, the `tokenizers`
    library's own serialisation of the encoder llamaherd runs (bpe.py), plus the control
    tokens, a byte-level decoder and BOS as the file's post-processor;
  * SentencePiece vocabularies (LLaMA-1/2): `tokenizer.model`, a SentencePiece model proto
    with the GGUF's pieces, scores and types, as Meta ships it, encoded by the
    `sentencepiece` library. It is written here with a few lines of protobuf wire format:
    the library that reads it ships no writer, and `protobuf` would be a dependency for
    just this.

Both get a `tokenizer_config.json` with BOS/EOS, whether BOS is added, and the chat template.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .base import Tokenizer, TokenType

# SentencePiece's piece types (sentencepiece_model.proto, ModelProto.SentencePiece.Type)
_SP_TYPES = {TokenType.NORMAL: 1, TokenType.UNKNOWN: 2, TokenType.CONTROL: 3, TokenType.USER_DEFINED: 4,
             TokenType.UNUSED: 5, TokenType.BYTE: 6}


def write_tokenizer_files(tokenizer: Tokenizer, directory: str | Path) -> list[Path]:
    """Write `tokenizer`'s files into `directory`; returns their paths."""
    directory = Path(directory)
    if tokenizer.kind == "bpe":
        main = directory / "tokenizer.json"
        _bpe_json(tokenizer).save(str(main))
    elif tokenizer.kind == "spm":
        main = directory / "tokenizer.model"
        main.write_bytes(_sentencepiece_model(tokenizer))
    else:
        raise ValueError(f"{tokenizer.source}: a {tokenizer.kind!r} tokenizer is written by copying its own files")
    config = directory / "tokenizer_config.json"
    config.write_text(json.dumps(_tokenizer_config(tokenizer), indent=2, ensure_ascii=False), encoding="utf-8")
    return [main, config]


def _piece(tokenizer: Tokenizer, token_id: int | None) -> str | None:
    return None if token_id is None else tokenizer.id_to_piece(token_id)


def _tokenizer_config(tokenizer: Tokenizer) -> dict:
    config = {
        "tokenizer_class": "LlamaTokenizer" if tokenizer.kind == "spm" else "PreTrainedTokenizerFast",
        "bos_token": _piece(tokenizer, tokenizer.bos_id),
        "eos_token": _piece(tokenizer, tokenizer.eos_id),
        "unk_token": _piece(tokenizer, tokenizer.unk_id),
        "pad_token": _piece(tokenizer, tokenizer.pad_id),
        "add_bos_token": tokenizer.add_bos_token,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    if tokenizer.kind == "spm":
        config["legacy"] = True  # sentencepiece's own handling of text after special tokens
    if tokenizer.chat_template:
        config["chat_template"] = tokenizer.chat_template
    return {k: v for k, v in config.items() if v is not None}


def _bpe_json(tokenizer: Tokenizer):
    from tokenizers import AddedToken, decoders, processors
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_str(tokenizer._hf.to_str())  # a copy: model and pre-tokenizer as encoded
    hf.decoder = decoders.ByteLevel()
    kinds = tokenizer._types
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, k in zip(tokenizer._tokens, kinds) if k == TokenType.CONTROL])
    hf.add_tokens([AddedToken(t, special=False, normalized=False)
                   for t, k in zip(tokenizer._tokens, kinds) if k == TokenType.USER_DEFINED])
    bos = _piece(tokenizer, tokenizer.bos_id)
    if tokenizer.add_bos_token and bos is not None:
        hf.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.bos_id)])
    return hf


# ---- protobuf wire format: just what a SentencePiece ModelProto needs --------------------

def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32 fields are sign-extended to 64 bits
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _bytes_field(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _float_field(number: int, value: float) -> bytes:
    return _varint(number << 3 | 5) + struct.pack("<f", value)


def _sentencepiece_model(tokenizer: Tokenizer) -> bytes:
    """ModelProto: pieces (1), trainer_spec (2), normalizer_spec (3), with LLaMA's settings:
    a BPE model with byte fallback; no normalisation but spaces as "▁" and, as the GGUF
    says, a space in front of the text."""
    pieces = b"".join(
        _bytes_field(1, _bytes_field(1, text.encode("utf-8")) + _float_field(2, score) + _int_field(3, _SP_TYPES.get(kind, 1)))
        for text, score, kind in zip(tokenizer._tokens, tokenizer._scores, tokenizer._types)
    )
    ids = lambda i: -1 if i is None else i
    trainer = (_int_field(3, 2) + _int_field(4, tokenizer.vocab_size) + _int_field(35, 1)  # model_type BPE, vocab_size, byte_fallback
               + _int_field(40, ids(tokenizer.unk_id)) + _int_field(41, ids(tokenizer.bos_id))
               + _int_field(42, ids(tokenizer.eos_id)) + _int_field(43, ids(tokenizer.pad_id)))
    normalizer = (_bytes_field(1, b"identity") + _int_field(3, int(tokenizer._add_space_prefix))  # name, add_dummy_prefix
                  + _int_field(4, 0) + _int_field(5, 1))  # remove_extra_whitespaces off, escape_whitespaces on
    return pieces + _bytes_field(2, trainer) + _bytes_field(3, normalizer)
