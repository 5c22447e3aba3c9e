"""Incremental decoding for streaming generation: text appears as soon as it is complete.

A token can end in the middle of a UTF-8 character (byte tokens, byte-level BPE), so bytes
are held back until the character is whole. Python's incremental UTF-8 decoder does exactly
that and replaces invalid bytes just as a one-shot decode would, so the pieces joined equal
decode() of the whole sequence minus the prefix.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Tokenizer


class StreamDecoder:
    """push(id) -> newly completed text; flush() -> whatever is still held back."""

    def __init__(self, tokenizer: Tokenizer, prefix_ids: Iterable[int] = (), skip_special: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        prefix, self._at_start = tokenizer.render_bytes(prefix_ids, skip_special, at_start=True)
        self._utf8.decode(prefix)  # the caller already has the prefix's text; keep only the state

    def push(self, token_id: int) -> str:
        data, self._at_start = self._tokenizer.render_bytes((token_id,), self._skip_special, self._at_start)
        return self._utf8.decode(data)

    def flush(self) -> str:
        """Text for bytes still waiting for the rest of a character (as U+FFFD)."""
        return self._utf8.decode(b"", final=True)
