"""Sampling and the generation loop: prompt ids in, token ids out, one at a time.

The sampler follows llama.cpp's order (penalties, top-k, top-p, min-p, then temperature)
so that the same settings mean the same thing in both tools. The penalties look at the
last `repeat_last_n` ids (prompt included), as llama.cpp's do: the repetition penalty
divides a seen token's positive logit (multiplies a negative one), the frequency penalty
subtracts per occurrence and the presence penalty once (OpenAI's two parameters).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch

from .cache import KVCache
from .model import Transformer


@dataclass
class SamplingParams:
    temperature: float = 0.8  # 0 means greedy
    top_k: int = 40  # 0 disables
    top_p: float = 0.95  # 1.0 disables
    min_p: float = 0.05  # 0 disables
    repeat_penalty: float = 1.0  # 1.0 disables
    frequency_penalty: float = 0.0  # 0 disables
    presence_penalty: float = 0.0  # 0 disables
    repeat_last_n: int = 64  # the window all three penalties look at
    seed: int | None = None  # None: a fresh random seed

    def __post_init__(self) -> None:
        checks = {
            "temperature": self.temperature >= 0,
            "top_k": self.top_k >= 0,
            "top_p": 0 < self.top_p <= 1,
            "min_p": 0 <= self.min_p <= 1,
            "repeat_penalty": self.repeat_penalty > 0,
            "frequency_penalty": math.isfinite(self.frequency_penalty),
            "presence_penalty": math.isfinite(self.presence_penalty),
            "repeat_last_n": self.repeat_last_n >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid {name}: {getattr(self, name)!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


class Sampler:
    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.generator = torch.Generator()
        seed = params.seed if params.seed is not None else random.SystemRandom().randrange(2**63)
        self.generator.manual_seed(seed)

    def __call__(self, logits: torch.Tensor, history: list[int]) -> int:
        """Pick the next token from 1-D float logits, given the ids seen so far."""
        p = self.params
        logits = logits.float()
        penalised = p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0
        if penalised and p.repeat_last_n and history:
            logits = apply_penalties(logits, history[-p.repeat_last_n :], p.repeat_penalty,
                                     p.frequency_penalty, p.presence_penalty)
        if p.greedy:
            return int(torch.argmax(logits))
        values, ids = torch.sort(logits, descending=True)
        if p.top_k > 0:
            values, ids = values[: p.top_k], ids[: p.top_k]
        probs = torch.softmax(values, dim=-1)
        keep = len(values)
        if p.top_p < 1.0:  # smallest prefix whose mass reaches top_p
            cumulative = torch.cumsum(probs, dim=-1)
            keep = min(keep, int(torch.searchsorted(cumulative, torch.tensor(p.top_p))) + 1)
        if p.min_p > 0:  # drop tokens less likely than min_p x the best one
            keep = min(keep, max(1, int((probs >= p.min_p * probs[0]).sum())))
        values, ids = values[:keep], ids[:keep]
        probs = torch.softmax(values / p.temperature, dim=-1)
        return int(ids[torch.multinomial(probs, 1, generator=self.generator)])


def apply_penalties(logits: torch.Tensor, recent: Iterable[int], repeat: float = 1.0, frequency: float = 0.0,
                    presence: float = 0.0) -> torch.Tensor:
    """Make the tokens of `recent` less likely (module docstring): a seen token's logit is
    divided by `repeat` when positive (multiplied when negative), then lowered by `frequency`
    times its count and by `presence` once."""
    counts = Counter(recent)
    ids = torch.tensor(sorted(counts), dtype=torch.long)
    n = torch.tensor([counts[i] for i in sorted(counts)], dtype=logits.dtype)
    logits = logits.clone()
    seen = logits[ids]
    seen = torch.where(seen > 0, seen / repeat, seen * repeat)
    logits[ids] = seen - n * frequency - presence
    return logits


@torch.inference_mode()
def generate_tokens(
    model: Transformer,
    prompt_ids: list[int],
    max_tokens: int,
    params: SamplingParams,
    stop_ids: Iterable[int] = (),
) -> Iterator[int]:
    """Yield up to max_tokens new ids after prompt_ids, stopping after (and without yielding) a stop id."""
    if not prompt_ids:
        raise ValueError("the prompt is empty: give at least one token (e.g. BOS)")
    max_len = model.config.max_seq_len
    if len(prompt_ids) >= max_len:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the model's context is {max_len}")
    max_tokens = min(max_tokens, max_len - len(prompt_ids))
    if max_tokens <= 0:
        return
    stop = set(stop_ids)
    sampler = Sampler(params)
    device = model.tok_embeddings.weight.device
    cache = KVCache(model.config, 1, len(prompt_ids) + max_tokens, dtype=model.tok_embeddings.weight.dtype, device=device)
    history = list(prompt_ids)
    tokens = torch.tensor([prompt_ids], device=device)
    positions = torch.arange(len(prompt_ids), device=device).unsqueeze(0)
    for _ in range(max_tokens):
        logits = model(tokens, positions, cache, last_only=True)[0, -1]
        next_id = sampler(logits, history)
        if next_id in stop:
            return
        yield next_id
        history.append(next_id)
        tokens = torch.tensor([[next_id]], device=device)
        positions = torch.tensor([[len(history) - 1]], device=device)


@dataclass
class StopStrings:
    """Holds back streamed text that might be the start of a stop string."""

    stops: list[str] = field(default_factory=list)
    pending: str = ""
    stopped: bool = False

    def push(self, text: str) -> str:
        """Text that is safe to emit now; sets `stopped` when a stop string appears."""
        if self.stopped:
            return ""
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stops if s) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending, self.stopped = self.pending[:cut], "", True
            return out
        hold = max((_overlap(self.pending, s) for s in self.stops if s), default=0)
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out) :]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of stop."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
