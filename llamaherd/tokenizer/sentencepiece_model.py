"""A SentencePiece `tokenizer.model` (LLaMA-1/2), encoded by the `sentencepiece` library.

The library is the reference for these files, so encoding is delegated to it; the
vocabulary (pieces, scores, piece types) is read from it into the shared `Vocab`, and
decoding, special tokens, chat and streaming come from `Tokenizer`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import FormatError
from .base import Tokenizer, TokenType, Vocab

SPACE = "\u2581"


def _piece_type(sp, i: int) -> int:
    if sp.is_unknown(i):
        return TokenType.UNKNOWN
    if sp.is_control(i):
        return TokenType.CONTROL
    if sp.is_byte(i):
        return TokenType.BYTE
    if sp.is_unused(i):
        return TokenType.UNUSED
    return TokenType.NORMAL


class SentencePieceTokenizer(Tokenizer):
    kind = "spm"

    def __init__(self, path: str | Path) -> None:
        import sentencepiece

        path = Path(path)
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as e:
            raise FormatError(f"{path}: not a SentencePiece model: {e}") from None
        sp = self._sp
        n = sp.get_piece_size()
        special = lambda i: i if 0 <= i < n else None  # the library says -1 for "none"
        vocab = Vocab(
            source=str(path), model="llama", pre="default",
            tokens=[sp.id_to_piece(i) for i in range(n)],
            types=[_piece_type(sp, i) for i in range(n)],
            scores=[sp.get_score(i) for i in range(n)], merges=None,
            bos_id=special(sp.bos_id()), eos_id=special(sp.eos_id()), eot_id=None, eom_id=None,
            unk_id=special(sp.unk_id()), pad_id=special(sp.pad_id()),
            add_bos=True, add_space_prefix=True, chat_template=None,
        )
        super().__init__(vocab)

    def _encode_text(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def _normal_token_bytes(self, token_id: int, at_start: bool) -> bytes:
        text = self._tokens[token_id].replace(SPACE, " ")
        if at_start and text.startswith(" "):  # the dummy prefix space the encoder added
            text = text[1:]
        return text.encode("utf-8")
