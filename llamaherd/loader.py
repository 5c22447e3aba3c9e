"""Build a Transformer from a checkpoint, one tensor at a time.

The model is created on the meta device (no memory), then each weight is decoded and
assigned in place, so a float model is never held twice.
"""

from __future__ import annotations

import torch

from .errors import FormatError
from .model import Transformer, rope_frequencies


def build_model(checkpoint, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Transformer:
    config = checkpoint.config
    with torch.device("meta"):
        model = Transformer(config)
    available = set(checkpoint.tensor_names())
    state: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if name not in available:
            raise FormatError(f"{checkpoint.path}: missing tensor {name}")
        tensor = checkpoint.load(name)
        if tuple(tensor.shape) != tuple(param.shape):
            raise FormatError(
                f"{checkpoint.path}: tensor {name} has shape {list(tensor.shape)}, the config needs {list(param.shape)}"
            )
        state[name] = tensor.to(device=device, dtype=dtype)
    model.load_state_dict(state, assign=True, strict=True)
    model.rope_freqs = rope_frequencies(config, checkpoint.freq_factors).to(device)
    return model.eval()
