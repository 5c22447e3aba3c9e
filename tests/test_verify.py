"""`llamaherd verify` and load's checksum check: checklist.chk (md5), SHA256SUMS, the shipped
LLaMA-1 manifest, and the digest cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import llamaherd
from llamaherd.cli import main
from llamaherd.errors import ChecksumError
from llamaherd.formats import checksums
from tests.checkpoints import tiny_params, write_meta_checkpoint


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMAHERD_HOME", str(tmp_path / "cache"))


def write_checklist(directory: Path, algo: str = "md5", name: str = "checklist.chk") -> Path:
    lines = [f"{hashlib.new(algo, p.read_bytes()).hexdigest()}  {p.name}\n"
             for p in sorted(directory.iterdir()) if p.is_file() and p.name != name]
    (directory / name).write_text("".join(lines))
    return directory / name


@pytest.fixture()
def model_dir(tmp_path):
    return write_meta_checkpoint(tmp_path / "7B", tiny_params(vocab_size=1000))


@pytest.mark.parametrize("algo,name", [("md5", "checklist.chk"), ("sha256", "SHA256SUMS")])
def test_verify_passes_then_names_every_bad_file(model_dir, capsys, algo, name):
    write_checklist(model_dir, algo, name)
    assert main(["verify", str(model_dir), "-q"]) == 0
    with open(model_dir / "consolidated.00.pth", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    (model_dir / "params.json").unlink()
    assert main(["verify", str(model_dir), "-q"]) == 1
    out = capsys.readouterr()
    assert "MISMATCH" in out.out and "consolidated.00.pth" in out.out
    assert "MISSING" in out.out and "params.json" in out.out


def test_load_verifies_and_can_skip(model_dir):
    write_checklist(model_dir)
    llamaherd.load(model_dir)
    with open(model_dir / "params.json", "a") as f:
        f.write(" ")
    with pytest.raises(ChecksumError, match="params.json"):
        llamaherd.load(model_dir)
    llamaherd.load(model_dir, verify=False)
    assert main(["generate", "hi", "-m", str(model_dir), "-n", "1"]) == 2
    assert main(["generate", "hi", "-m", str(model_dir), "-n", "1", "--no-verify"]) == 0


def test_html_checklist_is_a_format_error(model_dir):
    (model_dir / "checklist.chk").write_text("<html><body>Not found</body></html>")
    with pytest.raises(llamaherd.FormatError, match="checklist.chk"):
        llamaherd.load(model_dir)


def test_digests_are_cached_by_path_size_and_mtime(model_dir, monkeypatch):
    write_checklist(model_dir)
    llamaherd.load(model_dir)
    calls = []
    real_md5 = hashlib.md5
    monkeypatch.setattr(checksums.hashlib, "md5", lambda *a: calls.append(1) or real_md5(*a))
    llamaherd.load(model_dir)
    assert calls == []  # nothing hashed again
    (model_dir / "params.json").touch()
    import os
    st = (model_dir / "params.json").stat()
    os.utime(model_dir / "params.json", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    llamaherd.load(model_dir)
    assert len(calls) == 1  # only the touched file


def test_known_release_files_are_recognised(tmp_path, monkeypatch):
    folder = tmp_path / "13B"
    folder.mkdir()
    shard = folder / "consolidated.01.pth"
    shard.write_bytes(b"x")
    genuine = "d5ccbcc465c71c0de439a5aeffebe8344c68a519bce70bc7f9f92654ee567085"
    assert checksums.identify(shard, genuine) == "genuine LLaMA-1 13B, shard 2 of 2"
    assert checksums.identify(shard, "0" * 64).startswith("modified")
    assert checksums.identify(tmp_path / "other.bin", "0" * 64) == "unknown"
    # and through the command, with the file's real digest faked as the genuine one
    monkeypatch.setitem(checksums.known_files(), hashlib.sha256(b"x").hexdigest(),
                        checksums.KnownFile("LLaMA-1", "13B/consolidated.01.pth"))
    assert main(["verify", str(folder), "-q"]) == 0
