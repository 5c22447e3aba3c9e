"""Perplexity the way llama.cpp's `perplexity` tool computes it, so numbers are comparable.

The text is tokenized once (with BOS in front when the model adds one) and cut into
non-overlapping windows of `ctx` tokens; a trailing partial window is dropped. Each
window is evaluated from scratch; when the model adds BOS, the window's first token is
replaced by BOS. Only the second half of each window is scored (every token there has at
least ctx/2 tokens of context): the token at window offset j+1 is predicted from the
logits at offset j, for j in [ctx/2, ctx - 1). Perplexity is exp(mean negative log-likelihood).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass
class PerplexityResult:
    perplexity: float
    nll: float  # mean negative log-likelihood per scored token
    n_scored: int
    n_windows: int
    ctx: int
    seconds: float


def _progress(done: int, total: int, ppl: float, start: float) -> None:
    width = 30
    filled = width * done // max(total, 1)
    rate = (time.perf_counter() - start) / max(done, 1)
    eta = rate * (total - done)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} windows, ppl {ppl:.4f}, eta {eta:.0f}s ")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


@torch.inference_mode()
def perplexity_of_tokens(
    model,
    tokens: Sequence[int],
    ctx: int = 512,
    bos_id: int | None = None,
    progress: bool | Callable[[int, int, float, float], None] = False,
    max_windows: int | None = None,
) -> PerplexityResult:
    """Perplexity of `tokens` (already tokenized, BOS included when the model adds it)."""
    if ctx < 4:
        raise ValueError(f"ctx must be at least 4, got {ctx}")
    n_windows = len(tokens) // ctx
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    if n_windows == 0:
        raise ValueError(f"the text has {len(tokens)} tokens: at least {ctx} (one window) are needed")
    report = _progress if progress is True else (progress or None)
    device = model.tok_embeddings.weight.device
    first = ctx // 2
    nll_sum, count, start = 0.0, 0, time.perf_counter()
    for w in range(n_windows):
        window = list(tokens[w * ctx : (w + 1) * ctx])
        if bos_id is not None:
            window[0] = bos_id
        ids = torch.tensor([window], device=device)
        logits = model(ids)[0, first : ctx - 1].float()
        targets = ids[0, first + 1 : ctx]
        logprobs = torch.log_softmax(logits, dim=-1).gather(1, targets.unsqueeze(1))
        nll_sum -= float(logprobs.double().sum())
        count += len(targets)
        if report:
            report(w + 1, n_windows, math.exp(nll_sum / count), start)
    nll = nll_sum / count
    return PerplexityResult(math.exp(nll), nll, count, n_windows, ctx, time.perf_counter() - start)


def perplexity(llm, text: str, ctx: int = 512, progress: bool = False, max_windows: int | None = None) -> PerplexityResult:
    """Perplexity of a loaded model (llamaherd.load) over `text`."""
    tok = llm.tokenizer
    add_bos = bool(tok.add_bos_token and tok.bos_id is not None)
    tokens = tok.encode(text, add_bos=add_bos)
    bos = tok.bos_id if add_bos else None
    return perplexity_of_tokens(llm.model, tokens, ctx=ctx, bos_id=bos, progress=progress, max_windows=max_windows)
