"""Hostile and malformed GGUF files: each gives a FormatError naming the file (API) or one
error line and exit code 2 (CLI), never a crash, a hang or an allocation larger than the file;
plus bounded hypothesis fuzzing of the header. Files are assembled byte by byte
(tests/gguf_builder.py), so each case corrupts exactly one field."""

from __future__ import annotations

import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamaherd.api import load  # imported before the tracing below: not the parser's allocation
from llamaherd.errors import FormatError
from llamaherd.formats.gguf import GGUFFile
from tests.gguf_builder import assemble, build_gguf, gguf_string, kv_u32, tensor_info

F32_TENSOR = [("token_embd.weight", [4, 2], 0, 0)]
F32_DATA = struct.pack("<8f", *range(8))

BAD_FILES = {
    "truncated data": build_gguf(tensors=F32_TENSOR, data=F32_DATA)[:-9],
    "truncated header": assemble([kv_u32("a", 1)], [])[:30],
    "wrong magic": build_gguf(magic=b"GGML"),
    "unknown version": build_gguf(version=99),
    "unknown tensor type": build_gguf(tensors=[("token_embd.weight", [4, 2], 77, 0)], data=F32_DATA),
    "offset beyond end": build_gguf(tensors=[("token_embd.weight", [4, 2], 0, 1 << 40)], data=F32_DATA),
    "tensor data beyond end": assemble([], [tensor_info("t", [1000])], b"\0" * 64),
    "string length beyond end": build_gguf(kvs=[("general.architecture", 8, struct.pack("<Q", 1 << 60) + b"llama")]),
    "key length beyond end": b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 62) + b"abc",
    "array count beyond end": build_gguf(kvs=[("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 1 << 61))]),
    "numeric array beyond end": build_gguf(kvs=[("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 1 << 59))]),
    "nested arrays too deep": assemble([gguf_string("a") + struct.pack("<IIQ", 9, 9, 1) + struct.pack("<IQ", 9, 1) * 10], []),
    "huge kv count": build_gguf(n_kv=1 << 63),
    "huge tensor count": build_gguf(n_tensors=1 << 63),
    "duplicate key": build_gguf(kvs=[("a", 4, struct.pack("<I", 1)), ("a", 4, struct.pack("<I", 2))]),
    "duplicate tensor": build_gguf(tensors=F32_TENSOR * 2, data=F32_DATA),
    "overlapping tensors": assemble([], [tensor_info("a", [16]), tensor_info("b", [16], offset=32)], b"\0" * 64),
    "overflowing element count": build_gguf(tensors=[("token_embd.weight", [1 << 32, 1 << 32], 0, 0)], data=F32_DATA),
    "zero dimension": assemble([], [tensor_info("t", [0])], b"\0" * 64),
    "too many dimensions": build_gguf(tensors=[("token_embd.weight", [1, 1, 1, 1, 1], 0, 0)], data=F32_DATA),
    "misaligned offset": build_gguf(tensors=[("token_embd.weight", [4, 2], 0, 3)], data=F32_DATA * 2),
    "alignment not a power of two": build_gguf(kvs=[("general.alignment", 4, struct.pack("<I", 3))]),
    "alignment zero": assemble([kv_u32("general.alignment", 0)], []),
    "unknown value type": build_gguf(kvs=[("x", 42, b"")]),
    "invalid utf-8 key": b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2) + b"\xff\xfe" + struct.pack("<II", 4, 0),
    "not gguf at all": b"This is a plain text file, not a model.\n" * 3,
    "empty": b"",
}


@pytest.fixture(params=list(BAD_FILES))
def bad_file(request, tmp_path) -> Path:
    path = tmp_path / (request.param.replace(" ", "-") + ".gguf")
    path.write_bytes(BAD_FILES[request.param])
    return path


def test_api_raises_format_error_naming_the_file(bad_file):
    tracemalloc.start()
    try:
        with pytest.raises(FormatError) as info:
            load(bad_file)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(bad_file) in str(info.value)
    assert isinstance(info.value, ValueError)
    assert peak < max(len(bad_file.read_bytes()), 1) + (1 << 20), f"parser allocated {peak} bytes"


def test_cli_prints_one_line_and_exits_2(bad_file, capsys):
    from llamaherd.cli import main

    assert main(["inspect", str(bad_file)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad_file) in lines[0], lines


@pytest.mark.parametrize("command", ["inspect", "generate"])
def test_cli_process_exits_2_without_traceback(tmp_path, command):
    """The same through a real process, for both a model-reading and a generating command."""
    path = tmp_path / "truncated.gguf"
    path.write_bytes(BAD_FILES["truncated data"])
    args = [str(path)] if command == "inspect" else ["hello", "-m", str(path)]
    result = subprocess.run([sys.executable, "-m", "llamaherd", command, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], result.stderr


def test_valid_handmade_file_parses(tmp_path):
    """The builder makes real GGUF: without corruption the reader accepts it."""
    path = tmp_path / "ok.gguf"
    path.write_bytes(build_gguf(kvs=[("general.architecture", 8, gguf_string("llama")), ("a", 4, struct.pack("<I", 7))],
                                tensors=F32_TENSOR, data=F32_DATA))
    with GGUFFile(path) as g:
        assert g.metadata["general.architecture"] == "llama" and g.metadata["a"] == 7
        assert g.tensors["token_embd.weight"].shape == (2, 4)
        assert g.raw("token_embd.weight").numel() == 32


_u64 = st.one_of(st.integers(0, 64), st.integers(0, 2**64 - 1))
_value = st.one_of(
    st.tuples(st.sampled_from([0, 4, 5, 6, 10, 12]), st.binary(min_size=0, max_size=8)).map(
        lambda t: struct.pack("<I", t[0]) + t[1]),
    st.tuples(st.text(max_size=6), _u64).map(lambda t: struct.pack("<IQ", 8, t[1]) + t[0].encode()),
    st.tuples(st.sampled_from([4, 8, 9, 99]), st.sampled_from([0, 4, 8, 9, 13]), _u64, st.binary(max_size=24)).map(
        lambda t: struct.pack("<IIQ", 9, t[1], t[2]) + t[3]),
)
_kv = st.tuples(st.text(max_size=8), _value).map(lambda t: gguf_string(t[0]) + t[1])
_ti = st.tuples(st.text(max_size=4), st.lists(_u64, max_size=5), st.sampled_from([0, 1, 2, 8, 30, 77]),
                st.one_of(st.integers(0, 128), _u64)).map(lambda t: tensor_info(*t))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kvs=st.lists(_kv, max_size=4), tensors=st.lists(_ti, max_size=3), data=st.binary(max_size=128),
       n_kv=st.one_of(st.none(), _u64), n_tensors=st.one_of(st.none(), _u64), cut=st.integers(0, 8))
def test_fuzzed_gguf_headers_never_crash(tmp_path, kvs, tensors, data, n_kv, n_tensors, cut):
    blob = assemble(kvs, tensors, data, n_kv=n_kv, n_tensors=n_tensors)
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
