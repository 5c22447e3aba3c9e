"""Readers for on-disk model formats. Each gives a checkpoint: a ModelConfig, tensors
under canonical (Meta-style) names, and the model's tokenizer."""

from __future__ import annotations

from pathlib import Path

from ..errors import FormatError
from .gguf import GGUFCheckpoint


def open_checkpoint(path: str | Path):
    """Open a model file or directory, choosing the reader from what the files are."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file or directory")
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            return GGUFCheckpoint(path)
        raise FormatError(f"{path}: not a model file llamaherd can read (expected GGUF, found magic {magic!r})")
    from .hf import HFCheckpoint, is_hf_dir
    from .meta import MetaCheckpoint, is_meta_dir

    if is_meta_dir(path):
        return MetaCheckpoint(path)
    if is_hf_dir(path):
        return HFCheckpoint(path)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return GGUFCheckpoint(ggufs[0])
    raise FormatError(
        f"{path}: no model files found in this directory (expected params.json + consolidated.NN.pth, "
        "config.json + model*.safetensors, or one .gguf file)"
    )
