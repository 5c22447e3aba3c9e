"""safetensors files: our own header parser over a memory map, and a streaming writer.

Why not the `safetensors` library: its Rust parser is sound, but its errors are bare
`SafetensorError`s without the file name, it does not refuse duplicate JSON keys (the
last one silently wins), and `safe_open` gives no way to view bytes zero-copy as
bfloat16 through numpy. The format is 8 bytes of header length, a JSON header and raw
little-endian data, so the checks fit on one page: every length, offset and shape is
checked against the bytes present before anything is allocated, and every problem is a
FormatError naming the file.
"""

from __future__ import annotations

import json
import mmap
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from ..errors import FormatError
from .mapped import release_pages

MAX_HEADER_BYTES = 100 * 1000 * 1000  # the reference implementation's limit
HEADER_ALIGNMENT = 8

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset in the file
    nbytes: int


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


class _Duplicate(Exception):
    pass


class SafetensorsFile:
    """An open .safetensors file: `metadata`, `tensors` (name -> TensorEntry), `tensor(name)`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                self.size = self.path.stat().st_size
                if self.size < 8:
                    raise self.fail(f"only {self.size} bytes; a safetensors file starts with an 8-byte header length")
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise FormatError(f"{self.path}: cannot read: {e.strerror or e}") from None
        try:
            self._parse()
        except Exception:
            self.close()
            raise

    def fail(self, problem: str) -> FormatError:
        return FormatError(f"{self.path}: {problem}")

    def _parse(self) -> None:
        (header_len,) = struct.unpack("<Q", self._mmap[:8])
        if header_len > MAX_HEADER_BYTES:
            raise self.fail(f"header length {header_len} is over the {MAX_HEADER_BYTES}-byte limit")
        if header_len > self.size - 8:
            raise self.fail(f"header length {header_len} runs past the end of the file ({self.size} bytes)")
        raw = self._mmap[8:8 + header_len]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"header is not valid UTF-8 (byte {e.start})") from None
        try:
            header = json.loads(text, object_pairs_hook=_no_duplicates)
        except _Duplicate as e:
            raise self.fail(f"header names {e.args[0]!r} twice") from None
        except (ValueError, RecursionError) as e:
            raise self.fail(f"header is not valid JSON: {str(e)[:200]}") from None
        if not isinstance(header, dict):
            raise self.fail(f"header must be a JSON object, got {type(header).__name__}")
        self.data_start = 8 + header_len
        data_len = self.size - self.data_start
        metadata = header.pop("__metadata__", {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise self.fail("__metadata__ must map names to strings")
        self.metadata: dict[str, str] = metadata
        self.tensors: dict[str, TensorEntry] = {}
        for name, info in header.items():
            self.tensors[name] = self._entry(name, info, data_len)
        spans = sorted((t.start, t.start + t.nbytes, t.name) for t in self.tensors.values() if t.nbytes)
        for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
            if start < end:
                raise self.fail(f"tensors {a!r} and {b!r} overlap")

    def _entry(self, name: str, info: Any, data_len: int) -> TensorEntry:
        where = f"tensor {name!r}"
        if not isinstance(info, dict) or set(info) - {"dtype", "shape", "data_offsets"}:
            raise self.fail(f"{where}: entry must be an object with dtype, shape and data_offsets")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPES:
            raise self.fail(f"{where}: unknown dtype {dtype!r:.40}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape) or len(shape) > 8:
            raise self.fail(f"{where}: shape must be a list of at most 8 non-negative integers, got {shape!r:.80}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise self.fail(f"{where}: data_offsets must be [begin, end], got {offsets!r:.80}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise self.fail(f"{where}: data_offsets [{begin}, {end}] lie outside the {data_len} bytes of data")
        itemsize = torch.empty((), dtype=DTYPES[dtype]).element_size()
        numel = 1
        for d in shape:
            numel *= d
            if numel * itemsize > data_len and 0 not in shape:  # stop before the product grows without bound
                raise self.fail(f"{where}: shape {shape} needs more bytes than the file holds")
        if numel * itemsize != end - begin:
            raise self.fail(f"{where}: {dtype} x {shape} is {numel * itemsize} bytes but data_offsets span {end - begin}")
        return TensorEntry(name, dtype, tuple(shape), self.data_start + begin, end - begin)

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor as a read-only view of the memory map (no copy)."""
        entry = self.tensors[name]
        dtype = DTYPES[entry.dtype]
        if entry.nbytes == 0:
            return torch.empty(entry.shape, dtype=dtype)
        with warnings.catch_warnings():  # read-only view; nothing writes to it
            warnings.simplefilter("ignore", UserWarning)
            # numpy holds the buffer export, so the map cannot be closed under a live view.
            raw = torch.from_numpy(np.frombuffer(self._mmap, dtype=np.uint8, count=entry.nbytes, offset=entry.start))
        return raw.view(dtype).view(entry.shape)

    def release(self, name: str) -> None:
        """Let go of the resident pages of a tensor whose bytes were copied (mapped.release_pages)."""
        entry = self.tensors[name]
        release_pages(self._mmap, entry.start, entry.nbytes)

    def close(self) -> None:
        try:
            self._mmap.close()
        except (BufferError, AttributeError):
            pass  # views still alive keep the map open


def write_safetensors(
    path: str | Path,
    entries: Iterable[tuple[str, torch.dtype, tuple[int, ...]]],
    produce: Callable[[str], torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a safetensors file one tensor at a time: the header is laid out from
    (name, dtype, shape) first, then `produce(name)` is called for each tensor in order."""
    entries = list(entries)
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, dtype, shape in entries:
        nbytes = torch.empty((), dtype=dtype).element_size()
        for d in shape:
            nbytes *= d
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % HEADER_ALIGNMENT)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, dtype, shape in entries:
            tensor = produce(name)
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise ValueError(f"{path}: {name} came out as {tensor.dtype} {list(tensor.shape)}, not {dtype} {list(shape)}")
            data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy() if tensor.numel() else b""
            f.write(memoryview(data))
