"""Checksum manifests: Meta's checklist.chk (md5), SHA256SUMS, and the known-good hashes
of released models shipped in llamaherd/data/.

Each file is read once for both digests (md5 for Meta's checklists, SHA-256 to recognise
a genuine release), and the digests are remembered per (path, size, mtime) so that
loading a verified 120 GB model does not hash it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tqdm import tqdm

from ..errors import ChecksumError, FormatError

CHUNK = 8 << 20
MANIFEST_NAMES = ("checklist.chk", "SHA256SUMS", "tokenizer_checklist.chk")
_LINE = re.compile(r"([0-9a-fA-F]{32}|[0-9a-fA-F]{64}) [ *](.+)")
KNOWN_MANIFESTS = {"llama1-release.sha256": "LLaMA-1"}


def parse_manifest(text: str, source: str) -> dict[str, str]:
    """{relative file name: hex digest} from md5sum/sha256sum output ("digest  name" lines).
    Anything else (an HTML error page, say) is a FormatError, never an empty manifest."""
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.fullmatch(line.rstrip("\r"))
        if not m:
            raise FormatError(f"{source}: line {number} is not 'digest  filename': {line[:80]!r}")
        name = m.group(2).strip()
        if name.startswith(("/", "\\")) or ".." in Path(name).parts:
            raise FormatError(f"{source}: line {number} names a file outside its folder: {name!r}")
        entries[name.removeprefix("./")] = m.group(1).lower()
    if not entries:
        raise FormatError(f"{source}: no checksums in it")
    return entries


def read_manifest(path: Path) -> dict[str, str]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise FormatError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        return parse_manifest(raw.decode("utf-8"), str(path))
    except UnicodeDecodeError:
        raise FormatError(f"{path}: not a checksum list (not UTF-8 text)") from None


# --- digests, cached ------------------------------------------------------------------

def _digest_cache_path() -> Path:
    from ..download import cache_dir

    return cache_dir() / "digests.json"


def _load_cache() -> dict:
    try:
        data = json.loads(_digest_cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(cache: dict) -> None:
    path = _digest_cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            json.dump(cache, f)
        os.replace(f.name, path)
    except OSError:
        pass  # a read-only cache only costs hashing again next time


def file_digests(path: Path, progress: bool = False, cache: dict | None = None) -> dict[str, str]:
    """{"md5": ..., "sha256": ...} of path, from the cache when size and mtime are unchanged."""
    own_cache = cache is None
    cache = _load_cache() if own_cache else cache
    stat = path.stat()
    key = str(path.resolve())
    hit = cache.get(key)
    if isinstance(hit, dict) and hit.get("size") == stat.st_size and hit.get("mtime_ns") == stat.st_mtime_ns:
        return {"md5": hit["md5"], "sha256": hit["sha256"]}
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=stat.st_size, unit="B", unit_scale=True, desc=f"hashing {path.name}",
                                      disable=not progress, leave=False) as bar:
        while chunk := f.read(CHUNK):
            md5.update(chunk)
            sha.update(chunk)
            bar.update(len(chunk))
    digests = {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}
    cache[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, **digests}
    if own_cache:
        _save_cache(cache)
    return digests


def md5_file(path: Path) -> str:
    return file_digests(path)["md5"]


# --- known releases -------------------------------------------------------------------

@dataclass(frozen=True)
class KnownFile:
    release: str  # "LLaMA-1"
    name: str  # "13B/consolidated.01.pth"

    def describe(self) -> str:
        parts = self.name.split("/")
        if len(parts) == 2 and (m := re.fullmatch(r"consolidated\.(\d+)\.pth", parts[1])):
            siblings = [k for k in known_files().values() if k.release == self.release
                        and k.name.startswith(parts[0] + "/consolidated.")]
            return f"genuine {self.release} {parts[0]}, shard {int(m.group(1)) + 1} of {len(siblings)}"
        if len(parts) == 2:
            return f"genuine {self.release} {parts[0]} {parts[1]}"
        return f"genuine {self.release} {self.name}"


_KNOWN: dict[str, KnownFile] | None = None


def known_files() -> dict[str, KnownFile]:
    """sha256 -> KnownFile for every file of every release manifest shipped in llamaherd/data/."""
    global _KNOWN
    if _KNOWN is None:
        known = {}
        for manifest, release in KNOWN_MANIFESTS.items():
            text = resources.files("llamaherd.data").joinpath(manifest).read_text()
            for name, digest in parse_manifest(text, manifest).items():
                known[digest] = KnownFile(release, name)
        _KNOWN = known
    return _KNOWN


def identify(path: Path, sha256: str) -> str:
    """'genuine LLaMA-1 13B, shard 2 of 2', 'modified' (named like a released file, other
    bytes) or 'unknown'."""
    known = known_files()
    if sha256 in known:
        return known[sha256].describe()
    names = {k.name for k in known.values()}
    relative = f"{path.parent.name}/{path.name}"
    if relative in names or path.name in names:
        return f"modified (not the released {relative if relative in names else path.name})"
    return "unknown"


# --- verifying a folder ---------------------------------------------------------------

@dataclass
class FileCheck:
    path: Path
    manifest: Path | None
    expected: str | None
    status: str  # "ok", "mismatch", "missing", "unlisted"
    identity: str = ""


def manifests_for(directory: Path) -> list[Path]:
    """Manifests that cover a model folder: its own, and the parent's tokenizer checklist
    when the tokenizer lives there (Meta's download layout)."""
    found = [directory / n for n in MANIFEST_NAMES if (directory / n).is_file()]
    parent_tok = directory.parent / "tokenizer_checklist.chk"
    if not (directory / "tokenizer.model").exists() and (directory.parent / "tokenizer.model").exists() and parent_tok.is_file():
        found.append(parent_tok)
    return found


def check_directory(directory: Path, progress: bool = False, include_unlisted: bool = False) -> list[FileCheck]:
    directory = Path(directory)
    cache = _load_cache()
    results: list[FileCheck] = []
    listed: set[Path] = set()
    manifests = manifests_for(directory)
    todo: list[tuple[Path, Path, str]] = []
    for manifest in manifests:
        for name, digest in read_manifest(manifest).items():
            todo.append((manifest.parent / name, manifest, digest))
            listed.add((manifest.parent / name).resolve())
    if include_unlisted:
        for p in sorted(directory.rglob("*")):
            if p.is_file() and p.resolve() not in listed and p.name not in MANIFEST_NAMES and not p.name.startswith("."):
                todo.append((p, None, None))
    total = sum(p.stat().st_size for p, _, _ in todo if p.is_file())
    with tqdm(total=total, unit="B", unit_scale=True, desc="verifying", disable=not progress) as bar:
        for path, manifest, expected in todo:
            if not path.is_file():
                results.append(FileCheck(path, manifest, expected, "missing"))
                continue
            digests = file_digests(path, cache=cache)
            bar.update(path.stat().st_size)
            if expected is None:
                status = "unlisted"
            else:
                algo = "md5" if len(expected) == 32 else "sha256"
                status = "ok" if digests[algo] == expected else "mismatch"
            results.append(FileCheck(path, manifest, expected, status, identify(path, digests["sha256"])))
    _save_cache(cache)
    return results


def verify_checkpoint(path: Path, progress: bool = False) -> list[FileCheck]:
    """Check a model folder against the manifests in it (none: nothing to do); raise
    ChecksumError naming every missing or mismatching file."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    if not manifests_for(directory):
        return []
    results = check_directory(directory, progress=progress)
    bad = [r for r in results if r.status in ("missing", "mismatch")]
    if bad:
        raise ChecksumError(
            f"{directory}: checksum verification failed: "
            + "; ".join(f"{r.path} is {'missing' if r.status == 'missing' else 'not as listed in ' + r.manifest.name}" for r in bad)
            + " (pass verify=False / --no-verify to load anyway)"
        )
    return results
