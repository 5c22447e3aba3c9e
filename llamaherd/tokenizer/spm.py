"""SentencePiece-BPE tokenizer (GGUF `tokenizer.ggml.model` = "llama"), as llama.cpp runs it.

Encoding: spaces become "▁" (with one more in front when add_space_prefix), the text is
split into characters, and the adjacent pair whose concatenation is a vocabulary piece
with the highest score is merged, leftmost first on ties, until no pair is a piece.
Characters left over that are not pieces become their UTF-8 bytes as <0xXX> tokens.
"""

from __future__ import annotations

import heapq

from ..errors import FormatError
from .base import Tokenizer, TokenType, Vocab

SPACE = "\u2581"  # "▁", SentencePiece's visible space

# Only these pieces take part in merges. Like sentencepiece itself (and unlike llama.cpp),
# control and byte pieces are not, so a literal "</s>" or "<0x41>" in user text stays text.
_MERGEABLE = (TokenType.NORMAL, TokenType.USER_DEFINED)
_WORD_CACHE_SIZE = 100_000


class SpmTokenizer(Tokenizer):
    kind = "spm"

    def __init__(self, vocab: Vocab) -> None:
        super().__init__(vocab)
        self._add_space_prefix = vocab.add_space_prefix
        self._scores = vocab.scores
        self._pieces = {t: i for i, (t, k) in enumerate(zip(self._tokens, self._types)) if k in _MERGEABLE}
        self._byte_ids = [self._byte_fallback_id(b) for b in range(256)]
        # Character pairs that occur inside some piece. Where a pair of the text is not one of
        # these, no merge can ever cross between its two characters, so the text can be cut
        # there and the parts merged separately (and cached) with exactly the same result.
        self._joinable = {p[i:i + 2] for p in self._pieces if len(p) > 1 for i in range(len(p) - 1)}
        self._word_cache: dict[str, list[int]] = {}

    def _byte_fallback_id(self, byte: int) -> int | None:
        token_id = self.token_to_id(f"<0x{byte:02X}>")
        if token_id is None and byte < 0x80:
            token_id = self.token_to_id(chr(byte))
        return token_id if token_id is not None else self.unk_id

    def _encode_text(self, text: str) -> list[int]:
        # Every plain fragment starts the sequence or follows a special token, and llama.cpp
        # (like the original tokenizer) puts the dummy space in front of each.
        if self._add_space_prefix:
            text = " " + text
        text = text.replace(" ", SPACE)
        ids: list[int] = []
        start = 0
        joinable = self._joinable
        for cut in range(1, len(text)):
            if text[cut - 1:cut + 1] not in joinable:
                ids += self._cached_merge(text[start:cut])
                start = cut
        ids += self._cached_merge(text[start:])
        return ids

    def _cached_merge(self, word: str) -> list[int]:
        ids = self._word_cache.get(word)
        if ids is None:
            if len(self._word_cache) >= _WORD_CACHE_SIZE:
                self._word_cache.clear()
            ids = self._word_cache[word] = self._merge(word)
        return ids

    def _merge(self, text: str) -> list[int]:
        n = len(text)
        pieces, scores = self._pieces, self._scores
        # Symbol i covers text[i : i + size[i]]; merged-away symbols have size 0.
        size = [1] * n
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1

        # Heap entries: (-score, left, right, combined length); ties pop leftmost first.
        heap = []
        for i in range(n - 1):
            piece_id = pieces.get(text[i:i + 2])
            if piece_id is not None:
                heap.append((-scores[piece_id], i, i + 1, 2))
        heapq.heapify(heap)

        def push_pair(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            length = size[left] + size[right]
            piece_id = pieces.get(text[left:left + length])
            if piece_id is not None:
                heapq.heappush(heap, (-scores[piece_id], left, right, length))

        while heap:
            _, left, right, length = heapq.heappop(heap)
            # Stale entry: one side has since been merged into something else.
            if size[left] == 0 or size[right] == 0 or size[left] + size[right] != length:
                continue
            size[left] = length
            size[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            push_pair(prev[left], left)
            push_pair(left, nxt[left])

        ids: list[int] = []
        i = 0
        while i >= 0:
            symbol = text[i:i + size[i]]
            piece_id = pieces.get(symbol)
            if piece_id is not None:
                ids.append(piece_id)
            else:  # only single characters can be left unmatched: merges always make pieces
                ids.extend(self._bytes_to_ids(symbol))
            i = nxt[i]
        return ids

    def _bytes_to_ids(self, symbol: str) -> list[int]:
        ids = []
        for byte in symbol.encode("utf-8", errors="surrogatepass"):
            token_id = self._byte_ids[byte]
            if token_id is None:
                raise FormatError(f"{self.source}: vocabulary has neither a <0x{byte:02X}> byte token "
                                  "nor an unknown token to encode it with")
            ids.append(token_id)
        return ids

    def _normal_token_bytes(self, token_id: int, at_start: bool) -> bytes:
        text = self._tokens[token_id].replace(SPACE, " ")
        # sentencepiece removes the dummy space it added in front of the first word.
        if at_start and self._add_space_prefix and text.startswith(" "):
            text = text[1:]
        return text.encode("utf-8")
