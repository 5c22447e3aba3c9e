"""llamaherd: run LLaMA-family models simply, safely and fast."""

from .api import LLM, load
from .config import NAMED_CONFIGS, ModelConfig
from .errors import ChecksumError, FormatError, UnsafeCheckpointError
from .generate import SamplingParams

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
