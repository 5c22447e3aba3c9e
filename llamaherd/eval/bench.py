"""Throughput of a loaded model: prefill tokens/s, decode tokens/s, batched decode, peak memory.

Used by `llamaherd bench` and by benchmarks/. Token ids are random (the rate does not
depend on them); decoding is greedy argmax on the model's own outputs.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass

import torch

from ..cache import KVCache


@dataclass
class BenchResult:
    prefill_tokens: int
    prefill_tps: float
    decode_tokens: int
    decode_tps: float  # aggregate over the batch
    batch: int
    first_token_seconds: float  # prefill of the prompt plus the first sampled token


def peak_rss_bytes() -> int:
    """This process's peak resident memory. Linux: VmHWM, because getrusage's maxrss survives
    exec and so reports a parent's peak when that was larger (a benchmark driver's, say)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


@torch.inference_mode()
def prefill_rate(model, n_tokens: int = 512, seed: int = 0) -> float:
    """Tokens/s of one forward pass over n_tokens filling a cache (last logits only)."""
    config = model.config
    device = model.tok_embeddings.weight.device
    ids = torch.randint(0, config.vocab_size, (1, n_tokens), generator=torch.Generator().manual_seed(seed)).to(device)
    cache = KVCache(config, 1, n_tokens, device=device)
    start = time.perf_counter()
    model(ids, torch.arange(n_tokens, device=device).unsqueeze(0), cache, last_only=True)
    return n_tokens / (time.perf_counter() - start)


@torch.inference_mode()
def decode_rate(model, n_tokens: int = 128, batch: int = 1, prompt_len: int = 8, seed: int = 0) -> tuple[float, float]:
    """(aggregate tokens/s of greedy decoding, seconds to the first token) for `batch` sequences
    whose prompts have different lengths (prompt_len + row), stepped together."""
    config = model.config
    device = model.tok_embeddings.weight.device
    g = torch.Generator().manual_seed(seed)
    lengths = [prompt_len + r for r in range(batch)]
    cache = KVCache(config, batch, max(lengths) + n_tokens + 1, device=device)
    start = time.perf_counter()
    tokens = torch.randint(0, config.vocab_size, (batch, max(lengths)), generator=g).to(device)
    positions = torch.arange(max(lengths), device=device).expand(batch, -1)
    logits = model(tokens, positions, cache)
    last = torch.tensor(lengths, device=device) - 1
    next_ids = logits[torch.arange(batch), last].argmax(-1, keepdim=True)
    first_token = time.perf_counter() - start
    pos = last.unsqueeze(1) + 1
    start = time.perf_counter()
    for _ in range(n_tokens):
        logits = model(next_ids, pos, cache, last_only=True)
        next_ids = logits[:, -1].argmax(-1, keepdim=True)
        pos = pos + 1
    return batch * n_tokens / (time.perf_counter() - start), first_token


def run_bench(model, prefill_tokens: int = 512, decode_tokens: int = 128, batch: int = 1) -> BenchResult:
    decode_rate(model, 4, batch)  # warm up (first-call allocations, lazy kernel loading)
    prefill = prefill_rate(model, prefill_tokens)
    decode, first = decode_rate(model, decode_tokens, batch)
    return BenchResult(prefill_tokens, prefill, decode_tokens, decode, batch, first)
