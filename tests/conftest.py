"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_SAMPLES = REPO_ROOT.parent / "shared" / "samples"


@pytest.fixture
def real_tile_path() -> Path:
    """The real CLAHE-enhanced coating tile from ../shared; the test skips where it is absent."""
    path = SHARED_SAMPLES / "real_coating_tile_c.png"
    if not path.is_file():
        pytest.skip("../shared/samples/real_coating_tile_c.png is not present")
    return path
