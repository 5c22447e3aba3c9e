"""Llama-3's `tokenizer.model`: tiktoken's format, one "base64(token bytes) rank" per line.

The ranks are BPE merge priorities (lower merges first) and also the token ids. We turn
them into the byte-level vocabulary and merge list that Hugging Face's converter derives,
and run them on the shared byte-level BPE tokenizer with Llama-3's pre-tokenizer, adding
Meta's 256 special tokens after the ranked ones.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from ..errors import FormatError
from .base import Tokenizer, TokenType, Vocab
from .bpe import BYTE_DECODER, BpeTokenizer

BYTE_ENCODER = {b: c for c, b in BYTE_DECODER.items()}
NUM_RESERVED_SPECIAL_TOKENS = 256

# Meta's llama3/tokenizer.py (Llama 3.1 names; 3.0 called ids 4, 5, 8, 10 reserved tokens).
NAMED_SPECIAL_TOKENS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
]

LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def looks_like_tiktoken(path: Path) -> bool:
    with open(path, "rb") as f:
        first = f.readline(512).split()
    if len(first) != 2 or not first[1].isdigit():
        return False
    try:
        base64.b64decode(first[0], validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def read_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
                if len(parts) != 2:
                    raise ValueError
            except (binascii.Error, ValueError, IndexError):
                raise FormatError(f"{path}: line {number} is not 'base64-token rank'") from None
            if token in ranks:
                raise FormatError(f"{path}: line {number}: token {token!r} appears twice")
            ranks[token] = rank
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise FormatError(f"{path}: ranks must be 0 to {len(ranks) - 1}, each once")
    return ranks


def byte_level(token: bytes) -> str:
    return "".join(BYTE_ENCODER[b] for b in token)


def merges_from_ranks(ranks: dict[bytes, int]) -> list[str]:
    """The merge list equivalent to rank-ordered BPE (as transformers' TikTokenConverter
    derives it): every split of a token into two ranked tokens, ordered by the token's rank."""
    merges = []
    for token, rank in ranks.items():
        pairs = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        pairs.sort(key=lambda p: (ranks[p[0]], ranks[p[1]]))
        merges.extend((rank, left, right) for left, right in pairs)
    merges.sort(key=lambda m: m[0])
    return [f"{byte_level(left)} {byte_level(right)}" for _, left, right in merges]


def tiktoken_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    ranks = read_ranks(path)
    n = len(ranks)
    by_id = sorted(ranks, key=ranks.__getitem__)
    specials = NAMED_SPECIAL_TOKENS + [
        f"<|reserved_special_token_{i}|>" for i in range(2, NUM_RESERVED_SPECIAL_TOKENS - len(NAMED_SPECIAL_TOKENS) + 2)
    ]
    tokens = [byte_level(t) for t in by_id] + specials
    ids = {t: n + i for i, t in enumerate(specials)}
    vocab = Vocab(
        source=str(path), model="gpt2", pre="llama-bpe", tokens=tokens,
        types=[TokenType.NORMAL] * n + [TokenType.CONTROL] * len(specials),
        scores=None, merges=merges_from_ranks(ranks),
        bos_id=ids["<|begin_of_text|>"], eos_id=ids["<|end_of_text|>"], eot_id=ids["<|eot_id|>"],
        eom_id=ids["<|eom_id|>"], unk_id=None, pad_id=None,
        add_bos=True, add_space_prefix=False, chat_template=LLAMA3_CHAT_TEMPLATE,
    )
    tokenizer = BpeTokenizer(vocab)
    return tokenizer
