"""Read PyTorch `.pth` files (torch.save's zip format) without running code from them.

A pickle is a small program: any global it names can be called. `torch.load` with its
defaults has run arbitrary code from hostile checkpoints, so we never call it. Instead:

- the zip archive's directory is checked first: one `data.pkl`, no two member names that
  differ only in case, storages stored uncompressed and lying inside the file;
- `data.pkl` is unpickled by `SafeUnpickler`, whose `find_class` knows exactly the globals
  a state dict needs (OrderedDict, the tensor rebuild functions, the storage types) and
  returns our own stand-ins for them, never torch's or anything imported by name;
- each storage is a read-only view of a memory map of the file: nothing is read into RAM
  until the tensor is used, so a 120 GB checkpoint opens on a 24 GiB machine.

Anything outside the allowlist raises UnsafeCheckpointError naming the file and the global.
"""

from __future__ import annotations

import collections
import io
import mmap
import pickle
import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import FormatError, UnsafeCheckpointError
from .mapped import release_pages

MAX_PICKLE_BYTES = 256 << 20  # a state dict's pickle is kilobytes; refuse anything absurd

# Storage class names torch.save writes, and the dtype each one holds.
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "HalfStorage": torch.float16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16,
    "ByteStorage": torch.uint8,
    "CharStorage": torch.int8,
    "ShortStorage": torch.int16,
    "IntStorage": torch.int32,
    "LongStorage": torch.int64,
    "BoolStorage": torch.bool,
}


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for a torch storage class named in the pickle."""

    dtype: torch.dtype


@dataclass(frozen=True)
class _Storage:
    """A storage: `numel` values of `dtype` from one zip member (a memory-mapped view)."""

    key: str
    dtype: torch.dtype
    data: torch.Tensor  # 1-D, read-only view of the file


class _Marker:
    """What the allowed rebuild functions turn into while unpickling."""

    def __init__(self, name: str) -> None:
        self.name = name


def _load_build(unpickler: "SafeUnpickler") -> None:
    """BUILD (set an object's state) for the one object a state dict needs it on: an OrderedDict
    getting attributes (torch's `_metadata`). On anything else it would call that object's
    __setstate__ with values from the file (a tensor's runs `set_`), so it is refused."""
    state = unpickler.stack.pop()
    inst = unpickler.stack[-1]
    if type(inst) is not collections.OrderedDict or type(state) is not dict or not all(type(k) is str for k in state):
        raise UnsafeCheckpointError(
            f"{unpickler.archive.path}: refusing to load: the pickle sets the state of a {type(inst).__name__} "
            f"(BUILD with a {type(state).__name__}); a state dict only sets attributes of an OrderedDict"
        )
    vars(inst).update(state)


class SafeUnpickler(pickle._Unpickler):
    """Unpickles a torch state dict, allowing only the globals listed in `find_class` and BUILD
    only on OrderedDicts. Python's own unpickler class, not the C one: only its opcode table
    can be changed (a state dict's pickle is kilobytes, so the speed does not matter)."""

    dispatch = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: _load_build}

    def __init__(self, data: bytes, archive: "TorchArchive") -> None:
        super().__init__(io.BytesIO(data))
        self.archive = archive
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return self._rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        raise UnsafeCheckpointError(
            f"{self.archive.path}: refusing to load: the pickle asks for the global {module}.{name}, "
            "which is not a tensor, storage or ordered dict (a checkpoint that runs code is not a checkpoint)"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        path = self.archive.path
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"{path}: unexpected persistent id {pid!r:.100} in data.pkl")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or type(numel) is not int:
            raise UnsafeCheckpointError(f"{path}: malformed storage reference {pid!r:.100}")
        if key not in self.storages:
            self.storages[key] = self.archive.storage(key, storage_type.dtype, numel)
        storage = self.storages[key]
        if storage.dtype != storage_type.dtype:
            raise FormatError(f"{path}: storage {key} is used as both {storage.dtype} and {storage_type.dtype}")
        return storage

    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> torch.Tensor:
        """Our _rebuild_tensor_v2: a strided view of the storage, checked to lie inside it."""
        path = self.archive.path
        if not isinstance(storage, _Storage):
            raise UnsafeCheckpointError(f"{path}: a tensor is rebuilt from {type(storage).__name__}, not a storage")
        if not (_int_tuple(size) and _int_tuple(stride) and len(size) == len(stride) and type(offset) is int):
            raise FormatError(f"{path}: malformed tensor size {size!r:.80} / stride {stride!r:.80}")
        numel = storage.data.numel()
        if offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
            raise FormatError(f"{path}: negative offset, size or stride in a tensor of storage {storage.key}")
        if all(size):
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if last >= numel:
                raise FormatError(
                    f"{path}: tensor of shape {list(size)} at offset {offset} needs element {last} "
                    f"of storage {storage.key}, which holds {numel}"
                )
        return storage.data.as_strided(tuple(size), tuple(stride), offset)

    def _rebuild_parameter(self, data: Any, requires_grad: Any = False, hooks: Any = None) -> torch.Tensor:
        if not isinstance(data, torch.Tensor):
            raise UnsafeCheckpointError(f"{self.archive.path}: a parameter is rebuilt from {type(data).__name__}")
        return data


def _int_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and all(type(v) is int for v in value)


class TorchArchive:
    """A torch.save zip archive: its members checked, its file memory-mapped."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")
        except OSError as e:
            raise FormatError(f"{self.path}: cannot read: {e.strerror or e}") from None
        try:
            self._open()
        except Exception:
            self.close()
            raise

    def _open(self) -> None:
        self.size = self.path.stat().st_size
        head = self._file.read(4)
        if head[:1] == b"\x80" or not zipfile.is_zipfile(self._file):
            # torch's pre-1.6 format is a bare pickle stream: it cannot be checked before it runs.
            raise UnsafeCheckpointError(
                f"{self.path}: not a zip archive (a legacy pickle-stream checkpoint?); llamaherd only reads "
                "torch.save's zip format, whose contents can be checked before anything is unpickled"
            )
        try:
            self._zip = zipfile.ZipFile(self._file)
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise FormatError(f"{self.path}: damaged zip archive: {e}") from None
        folded: dict[str, str] = {}
        for info in infos:
            other = folded.get(info.filename.lower())
            folded[info.filename.lower()] = info.filename
            if other is not None:  # a repeat, or a twin that differs only in case
                raise UnsafeCheckpointError(
                    f"{self.path}: zip members {other!r} and {info.filename!r} have names that differ only in case "
                    "or repeat: which one a reader picks is ambiguous"
                )
        pickles = [i for i in infos if i.filename == "data.pkl" or i.filename.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise UnsafeCheckpointError(
                f"{self.path}: expected exactly one data.pkl in the archive, found {len(pickles)}: "
                + ", ".join(i.filename for i in pickles)
            )
        self._pickle_info = pickles[0]
        self.prefix = self._pickle_info.filename[: -len("data.pkl")]
        if self.prefix.count("/") > 1:
            raise UnsafeCheckpointError(f"{self.path}: data.pkl is nested at {self._pickle_info.filename!r}")
        self._members = {i.filename: i for i in infos}
        self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)

    def read_pickle(self) -> bytes:
        info = self._pickle_info
        if info.file_size > MAX_PICKLE_BYTES:
            raise FormatError(f"{self.path}: data.pkl is {info.file_size} bytes; refusing more than {MAX_PICKLE_BYTES}")
        try:
            with self._zip.open(info) as f:
                data = f.read(MAX_PICKLE_BYTES + 1)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise FormatError(f"{self.path}: cannot read data.pkl: {e}") from None
        if len(data) > MAX_PICKLE_BYTES:
            raise FormatError(f"{self.path}: data.pkl is larger than {MAX_PICKLE_BYTES} bytes")
        return data

    def storage(self, key: str, dtype: torch.dtype, numel: int) -> _Storage:
        """Storage `key`: a read-only view of its zip member, which must be stored uncompressed
        and hold exactly numel values of dtype."""
        name = f"{self.prefix}data/{key}"
        info = self._members.get(name)
        if info is None or "/" in key or not key:
            raise FormatError(f"{self.path}: storage {key!r} is not in the archive")
        if info.compress_type != zipfile.ZIP_STORED:
            raise FormatError(f"{self.path}: storage {key} is compressed; it must be stored to be memory-mapped")
        itemsize = torch.empty((), dtype=dtype).element_size()
        if numel < 0 or numel * itemsize != info.file_size or info.file_size != info.compress_size:
            raise FormatError(
                f"{self.path}: storage {key} should hold {numel} x {itemsize} bytes but its member has {info.file_size}"
            )
        start = self._data_offset(info)
        if start + info.file_size > self.size:
            raise FormatError(f"{self.path}: storage {key} runs past the end of the file")
        # numpy holds the buffer export, so the map cannot be closed under a live view
        # (torch.frombuffer lets go of it, and a closed map would then crash on access).
        raw = torch.from_numpy(np.frombuffer(self._mmap, dtype=np.uint8, count=info.file_size, offset=start))
        return _Storage(key, dtype, raw.view(dtype))

    def release(self, tensor: torch.Tensor) -> None:
        """Let go of the resident pages of the storage under `tensor`, read from this archive
        and since copied (mapped.release_pages); a tensor from elsewhere is left alone."""
        base = np.frombuffer(self._mmap, dtype=np.uint8).ctypes.data
        storage = tensor.untyped_storage()
        start = storage.data_ptr() - base
        if 0 <= start and start + storage.nbytes() <= len(self._mmap):
            release_pages(self._mmap, start, storage.nbytes())

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        """Where the member's bytes start: after its local header, whose lengths may differ
        from the central directory's."""
        header_end = info.header_offset + 30
        if header_end > self.size:
            raise FormatError(f"{self.path}: zip member {info.filename} lies past the end of the file")
        header = self._mmap[info.header_offset:header_end]
        if header[:4] != b"PK\x03\x04":
            raise FormatError(f"{self.path}: zip member {info.filename} has no local header")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        local_name = self._mmap[header_end:header_end + name_len]
        if local_name.decode("utf-8", "replace") != info.filename:
            raise UnsafeCheckpointError(
                f"{self.path}: zip member {info.filename!r} is named {local_name!r:.80} in its local header"
            )
        return header_end + name_len + extra_len

    def close(self) -> None:
        for closer in (getattr(self, "_mmap", None), getattr(self, "_zip", None), self._file):
            if closer is None:
                continue
            try:
                closer.close()
            except (BufferError, OSError):
                pass  # tensors handed out still view the map; it closes when they go


def load_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], TorchArchive]:
    """The tensors of a torch.save'd dict, as memory-mapped views, and the open archive
    (keep it until the tensors have been copied or used)."""
    archive = TorchArchive(path)
    try:
        unpickler = SafeUnpickler(archive.read_pickle(), archive)
        with warnings.catch_warnings():  # views of a read-only map: nothing writes to them
            warnings.simplefilter("ignore", UserWarning)
            try:
                state = unpickler.load()
            except (UnsafeCheckpointError, FormatError):
                raise
            except Exception as e:  # a malformed pickle: report it as what it is
                raise FormatError(f"{archive.path}: malformed data.pkl: {type(e).__name__}: {e}") from None
        if not isinstance(state, dict):
            raise FormatError(f"{archive.path}: expected a dict of tensors, found {type(state).__name__}")
        bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise FormatError(f"{archive.path}: entries that are not named tensors: {bad[:5]!r:.200}")
        return dict(state), archive
    except Exception:
        archive.close()
        raise
