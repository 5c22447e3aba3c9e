"""What every tokenizer shares: the vocabulary read from GGUF metadata, special-token
splitting, byte-exact decoding, chat rendering and streaming.

Subclasses (spm.py, bpe.py) supply only two things: how a run of plain text becomes
ids (`_encode_text`) and the bytes a normal token stands for (`_normal_token_bytes`).
"""

from __future__ import annotations

import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import FormatError
from .stream import StreamDecoder

if TYPE_CHECKING:
    from .chat import ChatTemplate

KNOWN_MODELS = ("llama", "gpt2")
# Pre-tokenizer names that mean Llama-3's BPE (they also switch on add_bos by default).
LLAMA3_PRE_NAMES = frozenset({"llama-bpe", "llama3", "llama-v3"})


class TokenType(IntEnum):
    """`tokenizer.ggml.token_type` values."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


# Texts of tokens that end generation whatever the GGUF's eos/eot/eom keys say: many
# converters record only one of them (llama.cpp keeps the same list, by text).
EOG_TOKEN_TEXTS = frozenset({
    "<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
    "<|end_of_text|>", "<EOT>", "_<EOT>", "<end_of_utterance>", "</s>",
})


@dataclass(frozen=True)
class Vocab:
    """Tokenizer metadata of a GGUF file, checked for consistency."""

    source: str
    model: str  # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    pre: str  # pre-tokenizer name (BPE only)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None
    merges: list[str] | None
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    eom_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    add_space_prefix: bool
    chat_template: str | None


def read_vocab(metadata: Mapping[str, Any], source: str) -> Vocab:
    """Check and collect the `tokenizer.*` keys; raise FormatError naming `source` on any problem."""

    def fail(problem: str) -> FormatError:
        return FormatError(f"{source}: {problem}")

    model = metadata.get("tokenizer.ggml.model")
    if model not in KNOWN_MODELS:
        raise fail(f"unknown tokenizer model tokenizer.ggml.model={model!r} (supported: {', '.join(KNOWN_MODELS)})")

    tokens = _string_list(metadata, "tokenizer.ggml.tokens", fail, required=True)
    if not tokens:
        raise fail("tokenizer.ggml.tokens is empty")
    n = len(tokens)
    # As llama.cpp does: an empty token could never be matched and would break lookups.
    tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    if len(set(tokens)) != n:
        seen: dict[str, int] = {}
        for i, t in enumerate(tokens):
            if t in seen:
                raise fail(f"duplicate token {t!r} in tokenizer.ggml.tokens (ids {seen[t]} and {i})")
            seen[t] = i

    types = _number_list(metadata, "tokenizer.ggml.token_type", n, fail, integer=True)
    if types is None:
        types = [TokenType.NORMAL] * n
    scores = _number_list(metadata, "tokenizer.ggml.scores", n, fail, integer=False)
    if model == "llama" and scores is None:
        raise fail("tokenizer.ggml.scores is missing (a SentencePiece vocabulary needs merge scores)")

    merges = None
    if model == "gpt2":
        merges = _string_list(metadata, "tokenizer.ggml.merges", fail, required=True)

    pre = metadata.get("tokenizer.ggml.pre", "default")
    if not isinstance(pre, str):
        raise fail(f"tokenizer.ggml.pre must be a string, got {type(pre).__name__}")

    defaults = {"bos": 1, "eos": 2, "unknown": 0} if model == "llama" else {}
    ids = {name: _special_id(metadata, name, defaults.get(name), n, source, fail)
           for name in ("bos", "eos", "eot", "eom", "unknown", "padding")}

    # llama.cpp's defaults when the GGUF does not say: SentencePiece and Llama-3 BPE add BOS.
    add_bos = _flag(metadata, "tokenizer.ggml.add_bos_token",
                    model == "llama" or pre in LLAMA3_PRE_NAMES, fail)
    add_space_prefix = _flag(metadata, "tokenizer.ggml.add_space_prefix", model == "llama", fail)

    template = metadata.get("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise fail(f"tokenizer.chat_template must be a string, got {type(template).__name__}")

    return Vocab(
        source=source, model=model, pre=pre, tokens=tokens, types=types, scores=scores, merges=merges,
        bos_id=ids["bos"], eos_id=ids["eos"], eot_id=ids["eot"], eom_id=ids["eom"],
        unk_id=ids["unknown"], pad_id=ids["padding"],
        add_bos=add_bos, add_space_prefix=add_space_prefix, chat_template=template or None,
    )


def _string_list(metadata: Mapping[str, Any], key: str, fail, required: bool) -> list[str] | None:
    value = metadata.get(key)
    if value is None:
        if required:
            raise fail(f"{key} is missing")
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence | np.ndarray):
        raise fail(f"{key} must be an array of strings, got {type(value).__name__}")
    values = list(value)
    if not all(isinstance(v, str) for v in values):
        raise fail(f"{key} must be an array of strings")
    return values


def _number_list(metadata: Mapping[str, Any], key: str, n: int, fail, integer: bool) -> list | None:
    value = metadata.get(key)
    if value is None:
        return None
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise fail(f"{key} is not a numeric array: {e}") from None
    allowed = "iu" if integer else "iuf"
    if array.ndim != 1 or array.dtype.kind not in allowed:
        wanted = "integer" if integer else "numeric"
        raise fail(f"{key} must be a 1-D {wanted} array, got {array.dtype} with shape {array.shape}")
    if len(array) != n:
        raise fail(f"{key} has {len(array)} entries but tokenizer.ggml.tokens has {n}")
    # Scores are float32 in GGUF; keeping float32 values makes score ties exactly llama.cpp's.
    return array.astype(np.int64).tolist() if integer else array.astype(np.float32).tolist()


def _special_id(metadata: Mapping[str, Any], name: str, default: int | None, n: int, source: str,
                fail) -> int | None:
    key = f"tokenizer.ggml.{name}_token_id"
    value = metadata.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise fail(f"{key} must be an integer, got {value!r}")
    if not 0 <= value < n:
        # Real files carry stale pad/unk ids now and then; llama.cpp ignores them too.
        warnings.warn(f"{source}: {key}={value} is outside the vocabulary of {n} tokens; ignoring it", stacklevel=3)
        return None
    return int(value)


def _flag(metadata: Mapping[str, Any], key: str, default: bool, fail) -> bool:
    value = metadata.get(key, default)
    if not isinstance(value, (bool, np.bool_)):
        raise fail(f"{key} must be a boolean, got {value!r}")
    return bool(value)


def _literal_alternation(texts: Iterable[str]) -> re.Pattern[str] | None:
    """A regex matching any of `texts`, longest first so that a longer token wins at a position."""
    texts = sorted(set(texts), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, texts))) if texts else None


class Tokenizer(ABC):
    """Text <-> token ids for one GGUF vocabulary, plus chat rendering and streaming decode."""

    kind: str  # "spm" or "bpe"

    def __init__(self, vocab: Vocab) -> None:
        self.source = vocab.source
        self.vocab_size = len(vocab.tokens)
        self.bos_id = vocab.bos_id
        self.eos_id = vocab.eos_id
        self.unk_id = vocab.unk_id
        self.pad_id = vocab.pad_id
        self.add_bos_token = vocab.add_bos  # what the model expects at the start of a prompt
        self.chat_template = vocab.chat_template
        self._tokens = vocab.tokens
        self._ids = {text: i for i, text in enumerate(vocab.tokens)}

        eog_by_text = {self._ids[t] for t in EOG_TOKEN_TEXTS if t in self._ids}
        self.eog_ids = frozenset(eog_by_text | ({vocab.eos_id, vocab.eot_id, vocab.eom_id} - {None}))
        # As in llama.cpp, those are control tokens even where a converter marked them
        # otherwise, so that chat markup written as text parses to them.
        self._types = list(vocab.types)
        for i in eog_by_text:
            self._types[i] = TokenType.CONTROL

        # User-defined tokens are matched in any text; control and unknown ones only on request
        # (llama.cpp and Hugging Face agree on this).
        self._user_token_pattern = _literal_alternation(self._texts_of(TokenType.USER_DEFINED))
        self._all_special_pattern = _literal_alternation(
            self._texts_of(TokenType.USER_DEFINED, TokenType.CONTROL, TokenType.UNKNOWN))

    # ---- vocabulary ---------------------------------------------------------------

    def id_to_piece(self, token_id: int) -> str:
        """The token's text as stored in the vocabulary (e.g. "▁Hello", "ĠHello", "<0x0A>")."""
        return self._tokens[self._check_id(token_id)]

    def token_to_id(self, text: str) -> int | None:
        return self._ids.get(text)

    def _texts_of(self, *kinds: TokenType) -> list[str]:
        return [text for text, kind in zip(self._tokens, self._types) if kind in kinds]

    def _check_id(self, token_id: int) -> int:
        token_id = int(token_id)
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is outside the vocabulary of {self.vocab_size} tokens")
        return token_id

    # ---- encoding -----------------------------------------------------------------

    def encode(self, text: str, add_bos: bool = False, parse_special: bool = False) -> list[int]:
        """Token ids for `text`. With parse_special, control-token texts such as "<|im_start|>"
        become their single ids; without it they are tokenized as plain text."""
        ids: list[int] = []
        if add_bos:
            if self.bos_id is None:
                raise ValueError(f"{self.source}: the vocabulary has no BOS token")
            ids.append(self.bos_id)
        for fragment, special_id in self._split_special(text, parse_special):
            if special_id is None:
                ids.extend(self._encode_text(fragment))
            else:
                ids.append(special_id)
        return ids

    def _split_special(self, text: str, parse_special: bool) -> Iterator[tuple[str, int | None]]:
        """(plain text, None) and (token text, id) pieces of `text`, in order."""
        pattern = self._all_special_pattern if parse_special else self._user_token_pattern
        pos = 0
        if pattern is not None:
            for match in pattern.finditer(text):
                if match.start() > pos:
                    yield text[pos:match.start()], None
                yield match.group(), self._ids[match.group()]
                pos = match.end()
        if pos < len(text):
            yield text[pos:], None

    @abstractmethod
    def _encode_text(self, text: str) -> list[int]:
        """Ids for a non-empty run of text that holds no special tokens (it begins the
        sequence or follows a special token)."""

    # ---- decoding -----------------------------------------------------------------

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text for `ids`. Control tokens show as their text unless skip_special (then, as with
        llama.cpp's token_to_piece(special=False), they and the unknown token render as "")."""
        data, _ = self.render_bytes(ids, skip_special, at_start=True)
        return data.decode("utf-8", errors="replace")

    def stream_decoder(self, prefix_ids: Iterable[int] = (), skip_special: bool = False) -> StreamDecoder:
        """An incremental decoder for tokens that follow `prefix_ids` (usually the prompt)."""
        return StreamDecoder(self, prefix_ids, skip_special)

    def render_bytes(self, ids: Iterable[int], skip_special: bool, at_start: bool) -> tuple[bytes, bool]:
        """The bytes `ids` stand for, and whether the sequence is still at its start afterwards
        (SentencePiece drops the space it added in front of the first word; see spm.py)."""
        pieces = []
        for token_id in ids:
            piece, at_start = self._token_bytes(self._check_id(token_id), skip_special, at_start)
            pieces.append(piece)
        return b"".join(pieces), at_start

    def _token_bytes(self, token_id: int, skip_special: bool, at_start: bool) -> tuple[bytes, bool]:
        kind = self._types[token_id]
        if kind == TokenType.NORMAL:
            return self._normal_token_bytes(token_id, at_start), False
        if kind == TokenType.BYTE:
            piece = self._byte_token_value(token_id)
        elif kind == TokenType.USER_DEFINED or (kind in (TokenType.CONTROL, TokenType.UNKNOWN) and not skip_special):
            piece = self._tokens[token_id].encode("utf-8")
        else:  # hidden control/unknown, unused and undefined tokens render as nothing (llama.cpp)
            piece = b""
        return piece, at_start and not piece

    def _byte_token_value(self, token_id: int) -> bytes:
        text = self._tokens[token_id]  # "<0xAB>"
        try:
            return bytes([int(text[3:5], 16)])
        except ValueError:
            raise FormatError(f"{self.source}: byte token {token_id} has text {text!r}, expected <0xXX>") from None

    @abstractmethod
    def _normal_token_bytes(self, token_id: int, at_start: bool) -> bytes:
        """The bytes of a NORMAL token; `at_start` is true for the first token of a sequence."""

    # ---- chat ---------------------------------------------------------------------

    @cached_property
    def _chat(self) -> ChatTemplate:
        from .chat import CHATML_TEMPLATE, ChatTemplate  # jinja2 costs 0.07 s of every start; only chat needs it

        special = {name: self._tokens[i] for name, i in
                   (("bos_token", self.bos_id), ("eos_token", self.eos_id),
                    ("unk_token", self.unk_id), ("pad_token", self.pad_id)) if i is not None}
        return ChatTemplate(self.chat_template or CHATML_TEMPLATE, self.source, special)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            **variables: Any) -> str:
        """Render `messages` with the GGUF's chat template (ChatML when it has none)."""
        return self._chat.render(messages, add_generation_prompt, **variables)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True, **variables: Any) -> list[int]:
        """Render, then encode with special tokens parsed. BOS is added only when the model
        wants one and the template did not already write it."""
        text = self.apply_chat_template(messages, add_generation_prompt, **variables)
        bos_text = self._tokens[self.bos_id] if self.bos_id is not None else None
        add_bos = self.add_bos_token and bos_text is not None and not text.startswith(bos_text)
        return self.encode(text, add_bos=add_bos, parse_special=True)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} vocab={self.vocab_size} from {self.source}>"
