"""GGUF files assembled byte by byte, independent of llamaherd's reader, so a test can
corrupt exactly one field (tests of hostile files) or build a minimal valid file."""

from __future__ import annotations

import struct


def gguf_string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def kv_u32(key: str, value: int) -> bytes:
    return gguf_string(key) + struct.pack("<II", 4, value)


def tensor_info(name: str, ne: list[int], ggml_type: int = 0, offset: int = 0) -> bytes:
    """One tensor entry; ne is GGUF's dimension order (row length first)."""
    return (gguf_string(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
            + struct.pack("<IQ", ggml_type, offset))


def assemble(kvs: list[bytes], tensors: list[bytes], data: bytes = b"", *, magic: bytes = b"GGUF", version: int = 3,
             n_kv: int | None = None, n_tensors: int | None = None, alignment: int = 32) -> bytes:
    """Header, encoded key/value and tensor entries, padding to `alignment`, then data. The
    counts default to the entries given; pass others to lie about them."""
    out = bytearray(magic + struct.pack("<I", version))
    out += struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv)
    out += b"".join(kvs) + b"".join(tensors)
    out += b"\0" * (-len(out) % alignment)
    return bytes(out + data)


def build_gguf(*, kvs=None, tensors=None, data: bytes = b"", **header) -> bytes:
    """kvs: (key, value type id, packed value) tuples, default general.architecture = llama;
    tensors: (name, ne, type, offset) tuples. Other keywords as assemble()'s."""
    kvs = kvs if kvs is not None else [("general.architecture", 8, gguf_string("llama"))]
    return assemble([gguf_string(k) + struct.pack("<I", t) + v for k, t, v in kvs],
                    [tensor_info(*t) for t in tensors or []], data, **header)
