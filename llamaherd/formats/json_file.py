"""JSON side files of checkpoints (params.json, config.json, indexes, tokenizer configs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import FormatError


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in path; a FormatError naming the file when it is unreadable or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise FormatError(f"{path}: cannot read: {e.strerror or e}") from None
    except ValueError as e:  # invalid JSON or UTF-8
        raise FormatError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(value, dict):
        raise FormatError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value
