"""The Python API: `load()` a model, then `logits`, `generate`, `stream` and `chat` on it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .config import ModelConfig
from .download import default_model_path
from .formats import open_checkpoint
from .generate import SamplingParams, StopStrings, generate_tokens
from .loader import build_model
from .model import Transformer

DEFAULT_MAX_TOKENS = 256


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "length"  # "stop" when an end token or stop string ended it
    seconds: float = 0.0


class LLM:
    def __init__(self, model: Transformer, tokenizer, source: Path, load_seconds: float = 0.0) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.load_seconds = load_seconds
        self.last_stats = GenerationStats()

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @torch.inference_mode()
    def logits(self, ids: Sequence[int]) -> torch.Tensor:
        """float32 [len(ids), vocab]: one forward pass over ids, no cache, no sampling."""
        if not len(ids):
            raise ValueError("logits() needs at least one token id")
        self._check_ids(ids)
        tokens = torch.tensor([list(ids)], device=self.model.tok_embeddings.weight.device)
        return self.model(tokens)[0].float()

    def generate(self, prompt: str, max_tokens: int = DEFAULT_MAX_TOKENS, stop: Sequence[str] = (), **sampling) -> str:
        """The continuation of prompt as one string."""
        return "".join(self.stream(prompt, max_tokens=max_tokens, stop=stop, **sampling))

    def stream(self, prompt: str, max_tokens: int = DEFAULT_MAX_TOKENS, stop: Sequence[str] = (), **sampling) -> Iterator[str]:
        """Pieces of the continuation of prompt, as they are generated."""
        return self.stream_ids(self.encode_prompt(prompt), max_tokens=max_tokens, stop=stop, **sampling)

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids for a plain-text prompt, with BOS when the model wants one (the server uses this too)."""
        return self.tokenizer.encode(prompt, add_bos=self.tokenizer.add_bos_token)

    def chat(self, messages: list[dict], max_tokens: int = DEFAULT_MAX_TOKENS, stop: Sequence[str] = (), **sampling) -> Iterator[str]:
        """Pieces of the assistant's reply to messages, rendered with the model's chat template."""
        ids = self.tokenizer.encode_chat(messages, add_generation_prompt=True)
        return self.stream_ids(ids, max_tokens=max_tokens, stop=stop, **sampling)

    def stream_ids(
        self, prompt_ids: list[int], max_tokens: int = DEFAULT_MAX_TOKENS, stop: Sequence[str] = (), **sampling
    ) -> Iterator[str]:
        params = SamplingParams(**sampling)
        self._check_ids(prompt_ids)
        stats = self.last_stats = GenerationStats(prompt_tokens=len(prompt_ids))
        decoder = self.tokenizer.stream_decoder(prompt_ids)
        stops = StopStrings(list(stop))
        start = time.perf_counter()
        tokens = generate_tokens(self.model, prompt_ids, max_tokens, params, stop_ids=self.tokenizer.eog_ids)
        room = min(max_tokens, self.config.max_seq_len - len(prompt_ids))  # generate_tokens' own limit
        try:
            for token in tokens:
                stats.completion_tokens += 1
                text = stops.push(decoder.push(token))
                if text:
                    yield text
                if stops.stopped:
                    break
            tail = stops.push(decoder.flush()) + stops.flush()
            if tail:
                yield tail
            # fewer tokens than there was room for: an end token or a stop string ended it
            stats.finish_reason = "stop" if stops.stopped or stats.completion_tokens < room else "length"
        finally:
            tokens.close()
            stats.seconds = time.perf_counter() - start

    def _check_ids(self, ids: Sequence[int]) -> None:
        vocab = self.config.vocab_size
        bad = [i for i in ids if not 0 <= int(i) < vocab]
        if bad:
            raise ValueError(f"token ids out of range for a vocabulary of {vocab}: {bad[:5]}")


def load(
    path: str | Path | None = None, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
    verify: bool = True, quantize: str | None = None, group_size: int = 32, int8_activations: bool = False,
) -> LLM:
    """Load a model file or directory; with no path, the default model (fetched if needed).

    With verify, a folder's checksum manifest (checklist.chk, SHA256SUMS) is checked first
    and a mismatch raises ChecksumError; digests are cached, so this hashes each file once.

    quantize: None keeps a GGUF file's quantized weights as they are, on fast kernels;
    "float" decodes everything to `dtype`; "int8" (per output channel) and "int4" (groups
    of `group_size`) quantize Linear weights while loading. See loader.build_model.

    int8_activations: round activations to int8 blocks before products with quantized GGUF
    weights, as llama.cpp does: 2-3x faster prefill and batched decoding, but answers move
    (logits by ~1 on SmolLM2, greedy text can change). By default activations are carried
    by three int8 terms, which keeps answers those of the float model.
    """
    start = time.perf_counter()
    if path is not None and verify:
        from .formats.checksums import verify_checkpoint

        verify_checkpoint(Path(path))
    checkpoint = open_checkpoint(path if path is not None else default_model_path())
    # The tokenizer (Python, ~0.2 s for a 32k vocabulary) is read while the weights are repacked.
    parts = {}
    model = build_model(checkpoint, dtype=dtype, device=device, quantize=quantize, group_size=group_size,
                        int8_activations=int8_activations,
                        during_repack=lambda: parts.update(tokenizer=checkpoint.tokenizer()))
    return LLM(model, parts["tokenizer"], checkpoint.path, load_seconds=time.perf_counter() - start)
