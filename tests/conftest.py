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


@pytest.fixture
def real_labelled_tile() -> tuple[Path, Path]:
    """(image, label) of the real labelled tile from ../shared (label: 255 = unmelted); skips where absent."""
    image = SHARED_SAMPLES / "real_coating_tile_b.png"
    label = SHARED_SAMPLES / "real_coating_tile_b_label.png"
    if not (image.is_file() and label.is_file()):
        pytest.skip("../shared/samples/real_coating_tile_b.png and its label are not present")
    return image, label
