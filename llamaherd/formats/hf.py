"""Hugging Face checkpoint directories: config.json, model.safetensors (or shards listed in
model.safetensors.index.json), tokenizer.json and/or tokenizer.model.

HF names map one to one onto Meta's, and the rows of q_proj and k_proj are permuted
for rotate-half rotary embeddings: `to_interleaved` undoes that (convert_hf_to_gguf's
`permute`), `to_rotate_half` does it again for the writer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig, config_from_hf
from ..errors import FormatError
from .json_file import read_json_object
from .safetensors import SafetensorsFile

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

_LAYER = {
    "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm",
}
_GLOBAL = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
           "lm_head.weight": "output.weight"}
_HF_LAYER_NAMES = {v: k for k, v in _LAYER.items()}
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight")


def canonical_name(hf_name: str) -> str | None:
    if hf_name in _GLOBAL:
        return _GLOBAL[hf_name]
    m = _HF_LAYER.fullmatch(hf_name)
    if m and m.group(2) in _LAYER:
        return f"layers.{int(m.group(1))}.{_LAYER[m.group(2)]}.weight"
    return None


def hf_name(canonical: str) -> str:
    """The HF name for a canonical tensor name (the writer's direction)."""
    for hf, meta in _GLOBAL.items():
        if meta == canonical:
            return hf
    _, layer, rest = canonical.split(".", 2)  # "layers", "N", "attention.wq.weight"
    return f"model.layers.{layer}.{_HF_LAYER_NAMES[rest.removesuffix('.weight')]}.weight"


def to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF rotate-half row order -> Meta/GGUF interleaved pairs, per head."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def to_rotate_half(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta/GGUF interleaved pairs -> HF rotate-half row order (inverse of to_interleaved)."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and ((path / SINGLE_FILE).is_file() or (path / INDEX_FILE).is_file())


def weight_files(path: Path) -> list[Path]:
    index_path = path / INDEX_FILE
    if index_path.is_file():
        index = read_json_object(index_path)
        try:
            weight_map = index["weight_map"]
            files = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise FormatError(f"{index_path}: not a valid index: {e}") from None
        for name in files:
            if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
                raise FormatError(f"{index_path}: weight file {name!r} is not a file name in this directory")
            if not (path / name).is_file():
                raise FormatError(f"{index_path}: lists {name}, which is missing")
        return [path / n for n in files]
    return [path / SINGLE_FILE]


class HFCheckpoint:
    format_name = "hf-safetensors"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.freq_factors = None
        config_path = self.path / "config.json"
        self.hf_config: dict[str, Any] = read_json_object(config_path)
        try:
            arch = self.hf_config.get("model_type", "llama")
            if arch not in ("llama", "mistral"):
                raise FormatError(f"{config_path}: unsupported model_type {arch!r} (llamaherd runs llama)")
            self.config: ModelConfig = config_from_hf(self.hf_config).replace(name=self.path.name)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            if isinstance(e, FormatError):
                raise
            raise FormatError(f"{config_path}: {type(e).__name__}: {e}") from None
        self.files: list[SafetensorsFile] = []
        self._where: dict[str, tuple[SafetensorsFile, str]] = {}
        try:
            for file_path in weight_files(self.path):
                f = SafetensorsFile(file_path)
                self.files.append(f)
                for name in f.tensors:
                    canonical = canonical_name(name)
                    if canonical is None:
                        continue
                    if canonical in self._where:
                        raise FormatError(f"{file_path}: tensor {name} is also in {self._where[canonical][0].path.name}")
                    self._where[canonical] = (f, name)
        except Exception:
            self.close()
            raise
        if self.config.tie_embeddings:
            self._where.pop("output.weight", None)

    def tensor_names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        f, hf = self._where[name]
        return f.tensors[hf].shape

    def load_raw(self, name: str) -> torch.Tensor:
        f, hf = self._where[name]
        t = f.tensor(hf)
        if name.endswith("attention.wq.weight"):
            t = to_interleaved(t, self.config.n_heads)
        elif name.endswith("attention.wk.weight"):
            t = to_interleaved(t, self.config.n_kv_heads)
        return t

    def load(self, name: str) -> torch.Tensor:
        return self.load_raw(name).float()

    def release(self, name: str) -> None:
        """Let go of the resident pages of a tensor the loader copied (SafetensorsFile.release)."""
        f, hf = self._where[name]
        f.release(hf)

    def stored_tensors(self) -> list[tuple[str, str, tuple[int, ...], int]]:
        return [(t.name, t.dtype, t.shape, t.nbytes) for f in self.files for t in f.tensors.values()]

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.hf_config)

    def tokenizer(self):
        from ..tokenizer.files import tokenizer_from_dir

        return tokenizer_from_dir(self.path)

    def close(self) -> None:
        for f in self.files:
            f.close()
