"""llamaherd: run LLaMA-family models simply, safely and fast.

The names that need torch (load, LLM, SamplingParams) are imported on first use, so
that `llamaherd --help` starts fast and the CLI can set up threading before torch loads.
"""

from importlib import import_module

from .config import NAMED_CONFIGS, ModelConfig
from .errors import ChecksumError, FormatError, UnsafeCheckpointError

__all__ = [
    "LLM",
    "load",
    "ModelConfig",
    "NAMED_CONFIGS",
    "SamplingParams",
    "FormatError",
    "ChecksumError",
    "UnsafeCheckpointError",
]
__version__ = "0.1.0"

_LAZY = {"LLM": ".api", "load": ".api", "SamplingParams": ".generate"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'llamaherd' has no attribute {name!r}")
