"""Hostile and malformed GGUF files give FormatError (API) or a one-line error (CLI).

Files are assembled byte by byte here, independent of llamaherd's reader, so each test
corrupts exactly one field.
"""

import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

import llamaherd
from llamaherd.formats.gguf import GGUFFile


def gguf_string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def build_gguf(
    *, magic=b"GGUF", version=3, kvs=None, tensors=None, data=b"", n_kv=None, n_tensors=None, alignment=32
) -> bytes:
    """kvs: list of (key, type_id, packed value bytes); tensors: list of (name, ne list, type, offset)."""
    kvs = kvs if kvs is not None else [("general.architecture", 8, gguf_string("llama"))]
    tensors = tensors or []
    out = bytearray(magic + struct.pack("<I", version))
    out += struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv)
    for key, type_id, value in kvs:
        out += gguf_string(key) + struct.pack("<I", type_id) + value
    for name, ne, ttype, offset in tensors:
        out += gguf_string(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        out += struct.pack("<IQ", ttype, offset)
    out += b"\0" * (-len(out) % alignment)
    return bytes(out + data)


F32_TENSOR = [("token_embd.weight", [4, 2], 0, 0)]
F32_DATA = struct.pack("<8f", *range(8))

BAD_FILES = {
    "truncated": build_gguf(tensors=F32_TENSOR, data=F32_DATA)[:-9],
    "wrong magic": b"GGML" + build_gguf()[4:],
    "unknown version": build_gguf(version=99),
    "unknown tensor type": build_gguf(tensors=[("token_embd.weight", [4, 2], 77, 0)], data=F32_DATA),
    "offset beyond end": build_gguf(tensors=[("token_embd.weight", [4, 2], 0, 1 << 40)], data=F32_DATA),
    "string length beyond end": build_gguf(kvs=[("general.architecture", 8, struct.pack("<Q", 1 << 60) + b"llama")]),
    "key length beyond end": b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 62) + b"abc",
    "array count beyond end": build_gguf(kvs=[("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 1 << 61))]),
    "numeric array beyond end": build_gguf(kvs=[("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 1 << 59))]),
    "huge kv count": build_gguf(n_kv=1 << 63),
    "huge tensor count": build_gguf(n_tensors=1 << 63),
    "duplicate key": build_gguf(kvs=[("a", 4, struct.pack("<I", 1)), ("a", 4, struct.pack("<I", 2))]),
    "duplicate tensor": build_gguf(tensors=F32_TENSOR * 2, data=F32_DATA),
    "overflowing element count": build_gguf(tensors=[("token_embd.weight", [1 << 32, 1 << 32], 0, 0)], data=F32_DATA),
    "misaligned offset": build_gguf(tensors=[("token_embd.weight", [4, 2], 0, 3)], data=F32_DATA * 2),
    "bad alignment": build_gguf(kvs=[("general.alignment", 4, struct.pack("<I", 3))]),
    "unknown value type": build_gguf(kvs=[("x", 42, b"")]),
    "too many dimensions": build_gguf(tensors=[("token_embd.weight", [1, 1, 1, 1, 1], 0, 0)], data=F32_DATA),
    "not gguf at all": b"This is a plain text file, not a model.\n" * 3,
    "empty": b"",
}


@pytest.fixture(params=list(BAD_FILES))
def bad_file(request, tmp_path) -> Path:
    path = tmp_path / (request.param.replace(" ", "-") + ".gguf")
    path.write_bytes(BAD_FILES[request.param])
    return path


def test_api_raises_format_error_naming_the_file(bad_file):
    import llamaherd.api  # noqa: F401  (modules load once per process: not the parser's allocation)

    tracemalloc.start()
    try:
        with pytest.raises(llamaherd.FormatError) as info:
            llamaherd.load(bad_file)
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
    path.write_bytes(BAD_FILES["truncated"])
    args = [str(path)] if command == "inspect" else ["hello", "-m", str(path)]
    result = subprocess.run([sys.executable, "-m", "llamaherd", command, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], result.stderr


def test_valid_handmade_file_parses(tmp_path):
    """The builder above makes real GGUF: without corruption the reader accepts it."""
    path = tmp_path / "ok.gguf"
    path.write_bytes(build_gguf(tensors=F32_TENSOR, data=F32_DATA))
    with GGUFFile(path) as g:
        assert g.metadata["general.architecture"] == "llama"
        assert g.tensors["token_embd.weight"].shape == (2, 4)
        assert g.raw("token_embd.weight").numel() == 32


def test_metadata_matches_gguf_package(smollm2_path):
    """Our reader and the gguf package's reader agree on every key and tensor of a real file."""
    import gguf
    import numpy as np

    theirs = gguf.GGUFReader(smollm2_path)
    with GGUFFile(smollm2_path) as ours:
        assert set(ours.metadata) == {f.name for f in theirs.fields.values() if not f.name.startswith("GGUF.")}
        for field in theirs.fields.values():
            if field.name.startswith("GGUF."):
                continue
            value = ours.metadata[field.name]
            expected = field.contents()
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(value, np.asarray(expected))
            else:
                assert value == expected, field.name
        for t in theirs.tensors:
            info = ours.tensors[t.name]
            assert info.shape == tuple(reversed([int(d) for d in t.shape]))
            assert info.ggml_type == int(t.tensor_type)
            assert info.offset == t.data_offset
            assert info.nbytes == t.n_bytes
