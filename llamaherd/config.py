"""ModelConfig: the shape of a LLaMA-family transformer, and the named configs we know.

A config is always built from what a checkpoint says about itself (params.json,
config.json or GGUF metadata), never guessed from a file name.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class RopeScaling:
    """Rotary frequency scaling. kind is "linear" (positions / factor) or "llama3"."""

    kind: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    ffn_dim: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    head_dim: int = 0  # 0 means dim // n_heads
    tie_embeddings: bool = False
    rope_scaling: RopeScaling | None = None
    name: str = "llama"

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.dim // max(self.n_heads, 1))
        for key in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "ffn_dim", "head_dim", "max_seq_len"):
            value = getattr(self, key)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"model config: {key} must be a positive integer, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"model config: n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"model config: head_dim must be even for rotary embeddings, got {self.head_dim}")
        if not (self.norm_eps > 0 and math.isfinite(self.norm_eps)):
            raise ValueError(f"model config: norm_eps must be positive, got {self.norm_eps!r}")
        if not (self.rope_theta > 0 and math.isfinite(self.rope_theta)):
            raise ValueError(f"model config: rope_theta must be positive, got {self.rope_theta!r}")

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @property
    def n_params(self) -> int:
        """Parameter count implied by the shapes (norms included)."""
        q = self.n_heads * self.head_dim
        kv = self.n_kv_heads * self.head_dim
        per_layer = self.dim * (q + 2 * kv) + q * self.dim + 3 * self.dim * self.ffn_dim + 2 * self.dim
        embed = self.vocab_size * self.dim
        return self.n_layers * per_layer + embed * (1 if self.tie_embeddings else 2) + self.dim


def meta_ffn_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """The SwiGLU hidden size rule from Meta's llama/model.py."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


LLAMA31_SCALING = RopeScaling("llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position=8192)


def config_from_params_json(params: Mapping[str, Any], vocab_size: int | None = None) -> ModelConfig:
    """Build a config from Meta's params.json. LLaMA-1 writes vocab_size -1: pass the tokenizer's."""
    vocab = int(params.get("vocab_size", -1))
    if vocab <= 0:
        if vocab_size is None:
            raise ValueError("params.json has no vocab_size; the tokenizer's size is needed")
        vocab = vocab_size
    dim = int(params["dim"])
    n_heads = int(params["n_heads"])
    return ModelConfig(
        dim=dim,
        n_layers=int(params["n_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(params.get("n_kv_heads") or n_heads),
        vocab_size=vocab,
        ffn_dim=meta_ffn_dim(dim, int(params.get("multiple_of", 256)), params.get("ffn_dim_multiplier")),
        norm_eps=float(params.get("norm_eps", 1e-5)),
        rope_theta=float(params.get("rope_theta", 10000.0)),
        max_seq_len=int(params.get("max_seq_len", 2048)),
        rope_scaling=LLAMA31_SCALING if params.get("use_scaled_rope") else None,
    )


def rope_scaling_from_hf(rope_scaling: Mapping[str, Any] | None) -> RopeScaling | None:
    if not rope_scaling:
        return None
    kind = rope_scaling.get("rope_type", rope_scaling.get("type"))
    if kind in (None, "default"):
        return None
    if kind == "linear":
        return RopeScaling("linear", factor=float(rope_scaling["factor"]))
    if kind == "llama3":
        return RopeScaling(
            "llama3",
            factor=float(rope_scaling["factor"]),
            low_freq_factor=float(rope_scaling.get("low_freq_factor", 1.0)),
            high_freq_factor=float(rope_scaling.get("high_freq_factor", 4.0)),
            original_max_position=int(rope_scaling.get("original_max_position_embeddings", 8192)),
        )
    raise ValueError(f"unsupported rope_scaling type {kind!r}")


def config_from_hf(cfg: Mapping[str, Any]) -> ModelConfig:
    """Build a config from a Hugging Face LlamaConfig dict (config.json)."""
    n_heads = int(cfg["num_attention_heads"])
    dim = int(cfg["hidden_size"])
    return ModelConfig(
        dim=dim,
        n_layers=int(cfg["num_hidden_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
        vocab_size=int(cfg["vocab_size"]),
        ffn_dim=int(cfg["intermediate_size"]),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(cfg.get("rope_theta", 10000.0) or 10000.0),
        max_seq_len=int(cfg.get("max_position_embeddings", 2048)),
        head_dim=int(cfg.get("head_dim") or dim // n_heads),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        rope_scaling=rope_scaling_from_hf(cfg.get("rope_scaling")),
    )


def _named(name: str, **kw: Any) -> ModelConfig:
    return ModelConfig(name=name, **kw)


# Shapes of the released models, for reference and for random-weight benchmarks.
NAMED_CONFIGS: dict[str, ModelConfig] = {
    "llama-7b": _named("llama-7b", dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, vocab_size=32000, ffn_dim=11008, norm_eps=1e-6),
    "llama-13b": _named("llama-13b", dim=5120, n_layers=40, n_heads=40, n_kv_heads=40, vocab_size=32000, ffn_dim=13824, norm_eps=1e-6),
    "llama-30b": _named("llama-30b", dim=6656, n_layers=60, n_heads=52, n_kv_heads=52, vocab_size=32000, ffn_dim=17920, norm_eps=1e-6),
    "llama-65b": _named("llama-65b", dim=8192, n_layers=80, n_heads=64, n_kv_heads=64, vocab_size=32000, ffn_dim=22016, norm_eps=1e-5),
    "llama2-7b": _named("llama2-7b", dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, vocab_size=32000, ffn_dim=11008, max_seq_len=4096),
    "llama2-70b": _named("llama2-70b", dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=32000, ffn_dim=28672, max_seq_len=4096),
    "llama3-8b": _named("llama3-8b", dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256, ffn_dim=14336, rope_theta=500000.0, max_seq_len=8192),
    "llama3.1-8b": _named("llama3.1-8b", dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256, ffn_dim=14336, rope_theta=500000.0, max_seq_len=131072, rope_scaling=LLAMA31_SCALING),
    "tinyllama-1.1b": _named("tinyllama-1.1b", dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, vocab_size=32000, ffn_dim=5632),
    "smollm2-135m": _named("smollm2-135m", dim=576, n_layers=30, n_heads=9, n_kv_heads=3, vocab_size=49152, ffn_dim=1536, rope_theta=100000.0, max_seq_len=8192, tie_embeddings=True),
}
