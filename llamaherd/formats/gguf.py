"""GGUF reader: metadata, tensor directory and zero-copy tensor bytes from a memory map.

We parse the header ourselves rather than with `gguf.GGUFReader`: that reader trusts
counts and lengths from the file (a hostile header can make it allocate or loop
without bound) and reports problems as numpy errors. Here every count, length and
offset is checked against the bytes actually present before anything is allocated,
and every problem is a FormatError that names the file.
"""

from __future__ import annotations

import mmap
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ModelConfig, RopeScaling
from ..errors import FormatError
from ..quant.ggml_types import BLOCK_GEOMETRY, GGMLType, type_name
from .mapped import release_pages

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 4

# GGUF metadata value types: id -> (struct format, numpy dtype) for fixed-size scalars.
_SCALAR_TYPES: dict[int, tuple[str, str]] = {
    0: ("<B", "<u1"),
    1: ("<b", "<i1"),
    2: ("<H", "<u2"),
    3: ("<h", "<i2"),
    4: ("<I", "<u4"),
    5: ("<i", "<i4"),
    6: ("<f", "<f4"),
    7: ("<?", "<u1"),
    10: ("<Q", "<u8"),
    11: ("<q", "<i8"),
    12: ("<d", "<f8"),
}
_STRING = 8
_ARRAY = 9


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order: the last dimension is contiguous (GGUF's ne[0])
    ggml_type: int
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return type_name(self.ggml_type)

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class _Cursor:
    """Reads little-endian values from a buffer, refusing to read past its end."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path

    def fail(self, problem: str) -> FormatError:
        return FormatError(f"{self.path}: {problem}")

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.remaining():
            raise self.fail(f"truncated file: {what} needs {n} bytes at offset {self.pos}, only {self.remaining()} remain")
        view = self.buf[self.pos : self.pos + n]
        self.pos += n
        return view

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def u32(self, what: str) -> int:
        return self.scalar("<I", what)

    def u64(self, what: str) -> int:
        return self.scalar("<Q", what)

    def string(self, what: str) -> str:
        length = self.u64(f"length of {what}")
        if length > self.remaining():
            raise self.fail(f"{what}: string length {length} runs past the end of the file")
        raw = self.take(length, what)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what}: string is not valid UTF-8") from None

    def strings(self, count: int, what: str) -> list[str]:
        """`count` strings in a row: string() inlined, as vocabularies hold 30k-250k of them."""
        buf, pos, end, out = self.buf, self.pos, len(self.buf), []
        length_at = struct.Struct("<Q").unpack_from
        try:
            for _ in range(count):
                if end - pos < 8:
                    raise self.fail(f"truncated file: length of {what} needs 8 bytes at offset {pos}")
                (length,) = length_at(buf, pos)
                pos += 8
                if length > end - pos:
                    raise self.fail(f"{what}: string length {length} runs past the end of the file")
                out.append(str(buf[pos : pos + length], "utf-8"))
                pos += length
        except UnicodeDecodeError:
            raise self.fail(f"{what}: string is not valid UTF-8") from None
        self.pos = pos
        return out


def _read_value(cur: _Cursor, value_type: int, what: str, depth: int = 0) -> Any:
    if value_type in _SCALAR_TYPES:
        value = cur.scalar(_SCALAR_TYPES[value_type][0], what)
        return bool(value) if value_type == 7 else value
    if value_type == _STRING:
        return cur.string(what)
    if value_type == _ARRAY:
        if depth >= MAX_ARRAY_DEPTH:
            raise cur.fail(f"{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}")
        elem_type = cur.u32(f"element type of {what}")
        count = cur.u64(f"element count of {what}")
        if elem_type in _SCALAR_TYPES:
            dtype = np.dtype(_SCALAR_TYPES[elem_type][1])
            if count > cur.remaining() // dtype.itemsize:
                raise cur.fail(f"{what}: array of {count} elements runs past the end of the file")
            values = np.frombuffer(cur.take(count * dtype.itemsize, what), dtype=dtype).copy()
            return values.astype(bool) if elem_type == 7 else values
        # Every string or array element takes at least 8 bytes: bound the count before looping.
        if elem_type not in (_STRING, _ARRAY):
            raise cur.fail(f"{what}: unknown array element type {elem_type}")
        if count > cur.remaining() // 8:
            raise cur.fail(f"{what}: array of {count} elements runs past the end of the file")
        if elem_type == _STRING:
            return cur.strings(count, what)
        return [_read_value(cur, _ARRAY, what, depth + 1) for _ in range(count)]
    raise cur.fail(f"{what}: unknown metadata value type {value_type}")


class GGUFFile:
    """An open GGUF file. `metadata` maps keys to values; `tensors` maps names to GGUFTensorInfo.

    Tensor bytes stay in the page cache (memory map) until `raw()` views them.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                size = self.path.stat().st_size
                if size < 24:
                    raise FormatError(f"{self.path}: not a GGUF file (only {size} bytes)")
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise FormatError(f"{self.path}: cannot read: {e.strerror or e}") from None
        try:
            self._parse(memoryview(self._mmap))
        except Exception:
            self.close()
            raise

    def _parse(self, buf: memoryview) -> None:
        cur = _Cursor(buf, self.path)
        magic = bytes(cur.take(4, "magic"))
        if magic != GGUF_MAGIC:
            raise cur.fail(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        self.version = cur.u32("version")
        if self.version not in SUPPORTED_VERSIONS:
            raise cur.fail(f"unsupported GGUF version {self.version} (supported: {', '.join(map(str, SUPPORTED_VERSIONS))})")
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        # A key-value pair needs at least 12 bytes and a tensor entry at least 24.
        if n_kv > cur.remaining() // 12:
            raise cur.fail(f"metadata count {n_kv} is larger than the file can hold")
        if n_tensors > cur.remaining() // 24:
            raise cur.fail(f"tensor count {n_tensors} is larger than the file can hold")

        self.metadata: dict[str, Any] = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            if key in self.metadata:
                raise cur.fail(f"duplicate metadata key {key!r}")
            self.metadata[key] = _read_value(cur, cur.u32(f"type of {key!r}"), f"metadata {key!r}")

        self.alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(self.alignment, int) or self.alignment <= 0 or self.alignment & (self.alignment - 1):
            raise cur.fail(f"general.alignment must be a power of two, got {self.alignment!r}")

        entries = [self._read_tensor_entry(cur, i) for i in range(n_tensors)]
        data_start = -(-cur.pos // self.alignment) * self.alignment
        self.tensors: dict[str, GGUFTensorInfo] = {}
        for name, shape, ggml_type, rel_offset in entries:
            if name in self.tensors:
                raise cur.fail(f"duplicate tensor {name!r}")
            self.tensors[name] = self._place_tensor(name, shape, ggml_type, rel_offset, data_start, len(buf))
        self._check_overlaps()

    def _read_tensor_entry(self, cur: _Cursor, i: int) -> tuple[str, tuple[int, ...], int, int]:
        name = cur.string(f"name of tensor #{i}")
        n_dims = cur.u32(f"dimension count of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.fail(f"tensor {name!r}: {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
        ne = [cur.u64(f"dimensions of tensor {name!r}") for _ in range(n_dims)]
        ggml_type = cur.u32(f"type of tensor {name!r}")
        offset = cur.u64(f"offset of tensor {name!r}")
        return name, tuple(reversed(ne)), ggml_type, offset

    def _place_tensor(
        self, name: str, shape: tuple[int, ...], ggml_type: int, rel_offset: int, data_start: int, file_size: int
    ) -> GGUFTensorInfo:
        where = f"{self.path}: tensor {name!r}"
        if ggml_type not in BLOCK_GEOMETRY:
            raise FormatError(f"{where}: unsupported tensor type {type_name(ggml_type)}")
        n = 1
        for d in shape:
            if d <= 0:
                raise FormatError(f"{where}: dimension {d} in shape {list(shape)}")
            n *= d
            if n > file_size * 8:  # no type packs more than 8 values a byte: the element count overflows
                raise FormatError(f"{where}: shape {list(shape)} holds more values than the file can store")
        block_elems, block_bytes = BLOCK_GEOMETRY[GGMLType(ggml_type)]
        if shape[-1] % block_elems:
            raise FormatError(f"{where}: row length {shape[-1]} is not a multiple of the {type_name(ggml_type)} block ({block_elems})")
        nbytes = n // block_elems * block_bytes
        if rel_offset % self.alignment:
            raise FormatError(f"{where}: offset {rel_offset} is not aligned to {self.alignment} bytes")
        start = data_start + rel_offset
        if start + nbytes > file_size:
            raise FormatError(
                f"{where}: data [{start}, {start + nbytes}) lies beyond the end of the file ({file_size} bytes); truncated?"
            )
        return GGUFTensorInfo(name, shape, ggml_type, start, nbytes)

    def _check_overlaps(self) -> None:
        spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in self.tensors.values())
        for (_, end, name), (start, _, next_name) in zip(spans, spans[1:]):
            if start < end:
                raise FormatError(f"{self.path}: tensors {name!r} and {next_name!r} overlap")

    def raw(self, name: str) -> torch.Tensor:
        """The tensor's bytes as a read-only uint8 view of the memory map (no copy)."""
        info = self.tensors[name]
        array = np.frombuffer(self._mmap, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        with warnings.catch_warnings():  # the view is read-only; nothing here writes to it
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(array)

    def release(self, name: str, start: int = 0, nbytes: int | None = None) -> None:
        """Let go of the resident pages of a tensor whose bytes were copied (mapped.release_pages):
        all of them, or bytes [start, start + nbytes) of it."""
        info = self.tensors[name]
        start = min(max(start, 0), info.nbytes)
        nbytes = info.nbytes - start if nbytes is None else min(max(nbytes, 0), info.nbytes - start)
        release_pages(self._mmap, info.offset + start, nbytes)

    def close(self) -> None:
        # Views handed out keep the map alive through their buffer; closing then would fail.
        try:
            self._mmap.close()
        except (BufferError, AttributeError):
            pass

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- from GGUF names and metadata to llamaherd's canonical model ---------------------

_LAYER_TENSORS = {
    "attn_q": "attention.wq",
    "attn_k": "attention.wk",
    "attn_v": "attention.wv",
    "attn_output": "attention.wo",
    "ffn_gate": "feed_forward.w1",
    "ffn_down": "feed_forward.w2",
    "ffn_up": "feed_forward.w3",
    "attn_norm": "attention_norm",
    "ffn_norm": "ffn_norm",
}
_GLOBAL_TENSORS = {"token_embd": "tok_embeddings", "output_norm": "norm", "output": "output"}
ROPE_FREQS_TENSOR = "rope_freqs.weight"


def canonical_name(gguf_name: str) -> str | None:
    """Meta-style name for a GGUF tensor name, or None for tensors the model does not use."""
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_TENSORS:
        return f"layers.{int(parts[1])}.{_LAYER_TENSORS[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[parts[0]]}.{parts[1]}"
    return None


def config_from_gguf(gguf: GGUFFile) -> ModelConfig:
    meta, where = gguf.metadata, gguf.path
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise FormatError(f"{where}: unsupported architecture {arch!r} (llamaherd runs 'llama')")

    def get(key: str, kind: type, default: Any = None) -> Any:
        value = meta.get(f"llama.{key}", default)
        if value is None:
            raise FormatError(f"{where}: missing metadata llama.{key}")
        if isinstance(value, (np.ndarray, list)):
            raise FormatError(f"{where}: llama.{key} varies per layer, which llamaherd does not support")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise FormatError(f"{where}: llama.{key} must be an integer, got {value!r}")
        return kind(value)

    embed = gguf.tensors.get("token_embd.weight")
    if embed is None or len(embed.shape) != 2:
        raise FormatError(f"{where}: missing 2-D tensor token_embd.weight")
    dim = get("embedding_length", int)
    n_heads = get("attention.head_count", int)
    head_dim = get("attention.key_length", int, dim // max(n_heads, 1))
    rope_dims = get("rope.dimension_count", int, head_dim)
    if rope_dims != head_dim:
        raise FormatError(f"{where}: partial rotary embeddings ({rope_dims} of {head_dim} dims) are not supported")
    scaling = None
    scaling_type = meta.get("llama.rope.scaling.type", "none")
    if scaling_type == "linear":
        scaling = RopeScaling("linear", factor=get("rope.scaling.factor", float))
    elif scaling_type != "none":
        raise FormatError(f"{where}: unsupported rope scaling {scaling_type!r}")
    try:
        return ModelConfig(
            dim=dim,
            n_layers=get("block_count", int),
            n_heads=n_heads,
            n_kv_heads=get("attention.head_count_kv", int, n_heads),
            vocab_size=get("vocab_size", int, embed.shape[0]),
            ffn_dim=get("feed_forward_length", int),
            norm_eps=get("attention.layer_norm_rms_epsilon", float, 1e-5),
            rope_theta=get("rope.freq_base", float, 10000.0),
            max_seq_len=get("context_length", int, 2048),
            head_dim=head_dim,
            tie_embeddings="output.weight" not in gguf.tensors,
            rope_scaling=scaling,
            name=str(meta.get("general.name", "llama")),
        )
    except ValueError as e:
        raise FormatError(f"{where}: {e}") from None


class GGUFCheckpoint:
    """A GGUF model file seen as a checkpoint: config, canonical tensors, tokenizer."""

    format_name = "gguf"

    def __init__(self, path: str | Path) -> None:
        self.file = GGUFFile(path)
        self.path = self.file.path
        self.config = config_from_gguf(self.file)
        self._names = {}
        for gguf_name in self.file.tensors:
            name = canonical_name(gguf_name)
            if name is not None:
                self._names[name] = gguf_name
        self.freq_factors = self._float(ROPE_FREQS_TENSOR) if ROPE_FREQS_TENSOR in self.file.tensors else None

    def tensor_names(self) -> list[str]:
        return list(self._names)

    def release(self, name: str) -> None:
        """Let go of the resident pages of a tensor the loader copied (GGUFFile.release)."""
        self.file.release(self.tensor_info(name).name)

    def tensor_info(self, name: str) -> GGUFTensorInfo:
        return self.file.tensors[self._names[name]]

    def stored_tensors(self) -> list[tuple[str, str, tuple[int, ...], int]]:
        """(name in the file, type name, shape, bytes) for every tensor, for `inspect`."""
        return [(t.name, t.type_name, t.shape, t.nbytes) for t in self.file.tensors.values()]

    @property
    def metadata(self) -> dict[str, Any]:
        return self.file.metadata

    def load(self, name: str) -> torch.Tensor:
        """The tensor decoded to float32 (block types are dequantized)."""
        return self._float(self._names[name])

    def _float(self, gguf_name: str) -> torch.Tensor:
        from ..quant.ggml_dequant import dequantize

        info = self.file.tensors[gguf_name]
        return dequantize(self.file.raw(gguf_name), info.ggml_type, info.shape)

    def tokenizer(self):  # -> Tokenizer
        from ..tokenizer import tokenizer_from_gguf

        return tokenizer_from_gguf(self.file.metadata, source=str(self.path))

    def close(self) -> None:
        self.file.close()
