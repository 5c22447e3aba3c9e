"""Malformed GGUF headers: each gives a FormatError naming the file, never a crash, a hang or
an allocation larger than the file; plus bounded hypothesis fuzzing of the header."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamaherd.errors import FormatError
from llamaherd.formats.gguf import GGUFFile


def s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def kv_u32(key: str, value: int) -> bytes:
    return s(key) + struct.pack("<II", 4, value)


def tensor_info(name: str, dims: list[int], ggml_type: int = 0, offset: int = 0) -> bytes:
    return s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) \
        + struct.pack("<IQ", ggml_type, offset)


def gguf(kvs: list[bytes], tensors: list[bytes], data: bytes = b"", n_kv: int | None = None,
         n_tensors: int | None = None, pad: bool = True) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tensors)
    if pad:
        body += b"\0" * (-len(body) % 32)
    return body + data


MALFORMED = {
    "tensor-count-beyond-file": gguf([], [], n_tensors=2**60),
    "kv-count-beyond-file": gguf([], [], n_kv=2**40),
    "string-length-beyond-file": b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**63) + b"abc",
    "array-count-beyond-file": gguf([s("a") + struct.pack("<IIQ", 9, 4, 2**61)], []),
    "string-array-count-beyond-file": gguf([s("a") + struct.pack("<IIQ", 9, 8, 2**40)], []),
    "nested-arrays-too-deep": gguf([s("a") + struct.pack("<IIQ", 9, 9, 1) + struct.pack("<IQ", 9, 1) * 10], []),
    "unknown-value-type": gguf([s("a") + struct.pack("<I", 99)], []),
    "duplicate-key": gguf([kv_u32("a", 1), kv_u32("a", 2)], []),
    "duplicate-tensor": gguf([], [tensor_info("t", [8]), tensor_info("t", [8], offset=32)], b"\0" * 64),
    "alignment-not-power-of-two": gguf([kv_u32("general.alignment", 48)], [tensor_info("t", [8])], b"\0" * 64),
    "alignment-zero": gguf([kv_u32("general.alignment", 0)], [], b""),
    "misaligned-offset": gguf([], [tensor_info("t", [4], offset=4)], b"\0" * 64),
    "tensor-data-beyond-file": gguf([], [tensor_info("t", [1000])], b"\0" * 64),
    "overflowing-element-count": gguf([], [tensor_info("t", [2**32, 2**32, 2**32, 2**32])], b"\0" * 64),
    "zero-dimension": gguf([], [tensor_info("t", [0])], b"\0" * 64),
    "too-many-dimensions": gguf([], [tensor_info("t", [1] * 9)], b"\0" * 64),
    "unknown-tensor-type": gguf([], [tensor_info("t", [32], ggml_type=77)], b"\0" * 256),
    "overlapping-tensors": gguf([], [tensor_info("a", [16]), tensor_info("b", [16], offset=32)], b"\0" * 64),
    "invalid-utf8-key": b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2) + b"\xff\xfe" + struct.pack("<II", 4, 0),
    "bad-version": b"GGUF" + struct.pack("<IQQ", 99, 0, 0),
    "truncated": gguf([kv_u32("a", 1)], [])[:30],
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_gguf_is_a_format_error(tmp_path, case):
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(MALFORMED[case])
    with pytest.raises(FormatError) as info:
        GGUFFile(path)
    assert str(path) in str(info.value)


def test_well_formed_minimal_file_parses(tmp_path):
    path = tmp_path / "ok.gguf"
    path.write_bytes(gguf([kv_u32("a", 7)], [tensor_info("t", [8])], b"\0" * 32))
    f = GGUFFile(path)
    assert f.metadata["a"] == 7 and f.tensors["t"].shape == (8,)


_u64 = st.one_of(st.integers(0, 64), st.integers(0, 2**64 - 1))
_value = st.one_of(
    st.tuples(st.sampled_from([0, 4, 5, 6, 10, 12]), st.binary(min_size=0, max_size=8)).map(
        lambda t: struct.pack("<I", t[0]) + t[1]),
    st.tuples(st.text(max_size=6), _u64).map(lambda t: struct.pack("<IQ", 8, t[1]) + t[0].encode()),
    st.tuples(st.sampled_from([4, 8, 9, 99]), st.sampled_from([0, 4, 8, 9, 13]), _u64, st.binary(max_size=24)).map(
        lambda t: struct.pack("<IIQ", 9, t[1], t[2]) + t[3]),
)
_kv = st.tuples(st.text(max_size=8), _value).map(lambda t: s(t[0]) + t[1])
_ti = st.tuples(st.text(max_size=4), st.lists(_u64, max_size=5), st.sampled_from([0, 1, 2, 8, 30, 77]),
                st.one_of(st.integers(0, 128), _u64)).map(
    lambda t: s(t[0]) + struct.pack("<I", len(t[1])) + b"".join(struct.pack("<Q", d) for d in t[1])
    + struct.pack("<IQ", t[2], t[3]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kvs=st.lists(_kv, max_size=4), tensors=st.lists(_ti, max_size=3), data=st.binary(max_size=128),
       n_kv=st.one_of(st.none(), _u64), n_tensors=st.one_of(st.none(), _u64), cut=st.integers(0, 8))
def test_fuzzed_gguf_headers_never_crash(tmp_path, kvs, tensors, data, n_kv, n_tensors, cut):
    blob = gguf(kvs, tensors, data, n_kv=n_kv, n_tensors=n_tensors)
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(blob[: len(blob) - cut] if cut else blob)
    try:
        f = GGUFFile(path)
    except FormatError as e:
        assert str(path) in str(e)
        return
    for name, info in f.tensors.items():
        assert info.offset + info.nbytes <= path.stat().st_size
        f.raw(name)
