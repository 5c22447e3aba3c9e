import os
from pathlib import Path

import pytest

from tests.fetch_assets import assets_path

# As the CLI's --wait sleep does: waiting OpenMP threads sleep instead of spinning, so the
# test process and the servers it starts do not starve each other on a 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def assets() -> Path:
    return assets_path()


@pytest.fixture(scope="session")
def smollm2_path(assets: Path) -> Path:
    return assets / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
