import os
from pathlib import Path

import pytest

# As the CLI does: waiting OpenMP threads sleep instead of spinning, so the test process
# and the servers it starts do not starve each other on a 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO_ROOT = Path(__file__).resolve().parents[1]


def assets_path() -> Path:
    """The shared assets: $LLAMAHERD_ASSETS, default ../shared/assets from the repo root."""
    configured = os.environ.get("LLAMAHERD_ASSETS")
    path = Path(configured) if configured else REPO_ROOT.parent / "shared" / "assets"
    if not (path / "models").is_dir():
        from tests.fetch_assets import fetch_assets

        path = fetch_assets()
    return path


@pytest.fixture(scope="session")
def assets() -> Path:
    return assets_path()


@pytest.fixture(scope="session")
def smollm2_path(assets: Path) -> Path:
    return assets / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
