"""Exceptions that llamaherd raises for bad input.

Each one is a ValueError so that callers who only know "the input was bad" can catch
that; messages always name the file and the problem.
"""


class FormatError(ValueError):
    """A model or tokenizer file is malformed, truncated or of an unsupported kind."""


class UnsafeCheckpointError(FormatError):
    """A pickle-based checkpoint asks for a global outside the allowlist."""


class ChecksumError(ValueError):
    """A file's checksum does not match its manifest."""
