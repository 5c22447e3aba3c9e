"""Meta's original checkpoint layout: params.json, consolidated.NN.pth shards, tokenizer.model.

The shards are model-parallel slices of one model (LLaMA-1 7B/13B/30B/65B ship 1/2/4/8):
column-parallel weights (wq, wk, wv, w1, w3, output) are split by rows (dim 0), row-
parallel ones (wo, w2) and tok_embeddings by columns (dim 1), norms are replicated. Each
shard is opened with the allowlist unpickler and memory-mapped; a tensor is joined from
its slices only when asked for, so at most one joined tensor is in RAM at a time.

Weight names and the rotary layout are already llamaherd's canonical ones.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig, config_from_params_json
from ..errors import FormatError
from .json_file import read_json_object
from .safe_pickle import TorchArchive, load_state_dict

SHARD_PATTERN = re.compile(r"consolidated\.(\d{2})\.pth")
ROW_SPLIT = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3", "output")
COLUMN_SPLIT = ("attention.wo", "feed_forward.w2", "tok_embeddings")
IGNORED = ("rope.freqs",)  # LLaMA-1 saved its precomputed rotary table; we compute our own


def is_meta_dir(path: Path) -> bool:
    return (path / "params.json").is_file() and any(path.glob("consolidated.*.pth"))


def split_dim(name: str) -> int | None:
    """Dimension along which a tensor is sharded, or None when every shard holds all of it."""
    module = name.rsplit(".", 1)[0]
    if module.endswith(ROW_SPLIT):
        return 0
    if module.endswith(COLUMN_SPLIT):
        return 1
    return None


def find_tokenizer_model(directory: Path) -> Path | None:
    """Meta's download script puts tokenizer.model next to the size folders."""
    for candidate in (directory / "tokenizer.model", directory.parent / "tokenizer.model"):
        if candidate.is_file():
            return candidate
    return None


class MetaCheckpoint:
    format_name = "meta"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.freq_factors = None
        params_path = self.path / "params.json"
        self.params: dict[str, Any] = read_json_object(params_path)
        self.params = self.params.get("model", self.params)  # some releases nest it
        self.shard_paths = self._shard_paths()
        self._archives: list[TorchArchive] = []
        self._shards: list[dict[str, torch.Tensor]] = []
        try:
            for shard in self.shard_paths:
                state, archive = load_state_dict(shard)
                self._archives.append(archive)
                self._shards.append(state)
            self._check_shards()
            self.tokenizer_path = find_tokenizer_model(self.path)
            self.config = self._config(params_path)
        except Exception:
            self.close()
            raise

    def _shard_paths(self) -> list[Path]:
        found = sorted(p for p in self.path.glob("consolidated.*.pth"))
        numbers = []
        for p in found:
            m = SHARD_PATTERN.fullmatch(p.name)
            if not m:
                raise FormatError(f"{p}: unexpected shard name (expected consolidated.NN.pth)")
            numbers.append(int(m.group(1)))
        if not found:
            raise FormatError(f"{self.path}: no consolidated.NN.pth shards")
        if numbers != list(range(len(found))):
            raise FormatError(f"{self.path}: shards must be numbered 00 to {len(found) - 1:02d} without gaps, found {numbers}")
        return found

    def _check_shards(self) -> None:
        names = set(self._shards[0])
        for path, shard in zip(self.shard_paths[1:], self._shards[1:]):
            if set(shard) != names:
                missing = sorted(names ^ set(shard))[:5]
                raise FormatError(f"{path}: holds different tensors from {self.shard_paths[0].name} (e.g. {missing})")
        for name in names:
            dim = split_dim(name)
            shapes = [tuple(s[name].shape) for s in self._shards]
            if dim is None or len(shapes) == 1:
                if len(set(shapes)) != 1:
                    raise FormatError(f"{self.path}: replicated tensor {name} has different shapes in the shards: {shapes}")
                continue
            rest = {s[:dim] + s[dim + 1:] for s in shapes}
            if len(rest) != 1 or any(len(s) <= dim for s in shapes):
                raise FormatError(f"{self.path}: shards of {name} cannot be joined on dim {dim}: {shapes}")

    def _config(self, params_path: Path) -> ModelConfig:
        vocab = None
        if int(self.params.get("vocab_size", -1)) <= 0:
            # LLaMA-1/2 write -1: the embedding table says how many tokens there are.
            vocab = self.shape("tok_embeddings.weight")[0]
        try:
            config = config_from_params_json(self.params, vocab_size=vocab)
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{params_path}: {e}") from None
        embed = self.shape("tok_embeddings.weight")
        if embed != (config.vocab_size, config.dim):
            raise FormatError(f"{self.path}: tok_embeddings is {list(embed)}, params.json implies {[config.vocab_size, config.dim]}")
        return config.replace(name=self.path.name, tie_embeddings="output.weight" not in self._shards[0])

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self._shards[0]:
            raise FormatError(f"{self.shard_paths[0]}: missing tensor {name}")
        shape = list(self._shards[0][name].shape)
        dim = split_dim(name)
        if dim is not None:
            shape[dim] = sum(s[name].shape[dim] for s in self._shards)
        return tuple(shape)

    def tensor_names(self) -> list[str]:
        return [n for n in self._shards[0] if n not in IGNORED]

    def load_raw(self, name: str) -> torch.Tensor:
        """The tensor in its stored dtype, joined from the shards (a view of the file when unsharded)."""
        parts = [s[name] for s in self._shards]
        dim = split_dim(name)
        if dim is None or len(parts) == 1:
            return parts[0]
        return torch.cat(parts, dim=dim)

    def load(self, name: str) -> torch.Tensor:
        return self.load_raw(name).float()

    def release(self, name: str) -> None:
        """Let go of the resident pages of a tensor the loader copied, in every shard."""
        for archive, shard in zip(self._archives, self._shards):
            if name in shard:
                archive.release(shard[name])

    def stored_tensors(self) -> list[tuple[str, str, tuple[int, ...], int]]:
        out = []
        for name in self.tensor_names():
            t = self._shards[0][name]
            shape = self.shape(name)
            n = 1
            for d in shape:
                n *= d
            out.append((name, str(t.dtype).removeprefix("torch."), shape, n * t.element_size()))
        return out

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.params)

    def tokenizer(self):
        from ..tokenizer.files import tokenizer_from_file

        if self.tokenizer_path is None:
            raise FormatError(f"{self.path}: no tokenizer.model here or in {self.path.parent}")
        return tokenizer_from_file(self.tokenizer_path)

    def close(self) -> None:
        self._shards = []
        for archive in self._archives:
            archive.close()
        self._archives = []
