"""`download_release` against a real HTTP server on 127.0.0.1 that misbehaves on purpose.
After every case the destination holds only complete files whose md5 matches."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from llamaherd.cli import main
from llamaherd.download import DownloadError, download_file, download_release
from llamaherd.errors import ChecksumError, FormatError

FILES = {
    "tokenizer.model": b"tok" * 1000,
    "7B/params.json": b'{"dim": 64}',
    "7B/consolidated.00.pth": bytes(range(256)) * 4000,  # ~1 MB
}


def checklist(names: list[str], strip: str = "") -> bytes:
    return "".join(f"{hashlib.md5(FILES[n]).hexdigest()}  {n.removeprefix(strip)}\n" for n in names).encode()


SITE = dict(FILES)
SITE["tokenizer_checklist.chk"] = checklist(["tokenizer.model"])
SITE["7B/checklist.chk"] = checklist(["7B/params.json", "7B/consolidated.00.pth"], strip="7B/")


class Faults:
    def __init__(self) -> None:
        self.drop_after: dict[str, int] = {}  # path -> bytes sent before the connection is cut (once)
        self.ignore_range = False
        self.status: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.html: set[str] = set()
        self.ranges: list[str] = []


class Handler(http.server.BaseHTTPRequestHandler):
    faults: Faults

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        f = self.faults
        path = self.path.lstrip("/")
        if path in f.status:
            self.send_error(f.status[path])
            return
        if path in f.html:
            body = b"<!DOCTYPE html><html><body>Please log in</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if path not in SITE:
            self.send_error(404)
            return
        data = SITE[path]
        if path in f.corrupt:
            data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
        start = 0
        header = self.headers.get("Range")
        if header:
            f.ranges.append(f"{path} {header}")
        if header and not f.ignore_range:
            start = int(header.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        cut = f.drop_after.pop(path, None)
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture()
def server():
    faults = Faults()
    handler = type("H", (Handler,), {"faults": faults})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", faults
    httpd.shutdown()
    httpd.server_close()


def fetch(url: str, dest: Path):
    return download_release(url, "7B", dest, retries=3, backoff=0.01, timeout=5, progress=False)


def assert_only_verified_files(dest: Path) -> None:
    """Every file under dest is complete and right; no partial files are left."""
    for p in dest.rglob("*"):
        if p.is_file():
            rel = p.relative_to(dest).as_posix()
            assert rel in SITE, f"unexpected file {rel}"
            assert p.read_bytes() == SITE[rel], f"{rel} is not the served file"


def test_clean_download(server, tmp_path):
    url, _ = server
    assert fetch(url, tmp_path) == tmp_path / "7B"
    assert_only_verified_files(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == sorted(SITE)


def test_dropped_connection_resumes_from_the_partial_size(server, tmp_path):
    url, faults = server
    faults.drop_after["7B/consolidated.00.pth"] = 300_000
    fetch(url, tmp_path)
    assert_only_verified_files(tmp_path)
    assert "7B/consolidated.00.pth bytes=300000-" in faults.ranges


def test_a_run_that_gives_up_leaves_its_bytes_and_the_next_run_resumes(server, tmp_path):
    url, faults = server
    faults.drop_after["7B/consolidated.00.pth"] = 300_000
    with pytest.raises(DownloadError, match="300000 bytes received stay in .*next run resumes"):
        download_release(url, "7B", tmp_path, retries=0, backoff=0.01, timeout=5, progress=False)
    partial = tmp_path / "7B" / ".consolidated.00.pth.partial"
    assert partial.read_bytes() == FILES["7B/consolidated.00.pth"][:300_000]
    assert not (tmp_path / "7B" / "checklist.chk").exists()  # the folder is not complete yet
    fetch(url, tmp_path)
    assert_only_verified_files(tmp_path)
    assert "7B/consolidated.00.pth bytes=300000-" in faults.ranges


def test_server_that_ignores_range_restarts_cleanly(server, tmp_path):
    url, faults = server
    faults.drop_after["7B/consolidated.00.pth"] = 300_000
    faults.ignore_range = True
    fetch(url, tmp_path)
    assert_only_verified_files(tmp_path)
    assert (tmp_path / "7B" / "consolidated.00.pth").read_bytes() == FILES["7B/consolidated.00.pth"]


@pytest.mark.parametrize("status", [403, 404])
def test_http_errors_are_clear_and_leave_nothing(server, tmp_path, status):
    url, faults = server
    faults.status["7B/consolidated.00.pth"] = status
    with pytest.raises(DownloadError, match=f"consolidated.00.pth: HTTP {status}"):
        fetch(url, tmp_path)
    assert_only_verified_files(tmp_path)
    assert not (tmp_path / "7B" / "consolidated.00.pth").exists()
    assert not (tmp_path / "7B" / "checklist.chk").exists()


def test_corrupted_byte_is_an_md5_mismatch_and_not_kept(server, tmp_path):
    url, faults = server
    faults.corrupt.add("7B/consolidated.00.pth")
    with pytest.raises(ChecksumError, match="md5"):
        fetch(url, tmp_path)
    assert_only_verified_files(tmp_path)
    assert not (tmp_path / "7B" / "consolidated.00.pth").exists()


def test_a_file_checked_by_sha256_is_kept_only_when_it_matches(server, tmp_path):
    """download_file with sha256 (PyPI's digest, tests/fetch_assets.py) in place of md5."""
    url, faults = server
    name = "7B/consolidated.00.pth"
    data = FILES[name]
    dest = tmp_path / "shard.pth"
    with pytest.raises(ChecksumError, match="sha256"):
        download_file(f"{url}/{name}", dest, sha256=hashlib.sha256(data + b"x").hexdigest(), retries=1, backoff=0.01,
                      timeout=5, progress=False)
    assert not dest.exists()
    path = download_file(f"{url}/{name}", dest, sha256=hashlib.sha256(data).hexdigest(), retries=1, backoff=0.01,
                         timeout=5, progress=False)
    assert path == dest and dest.read_bytes() == data
    with pytest.raises(ValueError, match="one digest"):
        download_file(f"{url}/{name}", dest, md5="0" * 32, sha256="0" * 64)


@pytest.mark.parametrize("which", ["7B/checklist.chk", "tokenizer_checklist.chk"])
def test_html_page_as_checklist_is_refused(server, tmp_path, which):
    url, faults = server
    faults.html.add(which)
    with pytest.raises(FormatError, match="not 'digest  filename'"):
        fetch(url, tmp_path)
    assert list(tmp_path.rglob("*.*")) == []


def test_html_page_instead_of_a_shard_is_refused(server, tmp_path):
    url, faults = server
    faults.html.add("7B/consolidated.00.pth")
    with pytest.raises(DownloadError, match="HTML"):
        fetch(url, tmp_path)
    assert_only_verified_files(tmp_path)


def test_cli_download_then_verify(server, tmp_path, capsys):
    url, _ = server
    assert main(["download", "--from", url, "--model", "7B", "--to", str(tmp_path), "-q"]) == 0
    assert main(["verify", str(tmp_path / "7B"), "-q"]) == 0
    assert "OK" in capsys.readouterr().out
