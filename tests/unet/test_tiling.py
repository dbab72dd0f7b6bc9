"""Tile geometry and feathered blending (`inspectd.analysis.engines.tiling`), pure numpy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inspectd.analysis.engines.tiling import (
    TileBlender,
    extract_tiles,
    pad_frame,
    plan_tiles,
    round_up,
    tile_weights,
)

SIZES = [(1, 1), (16, 16), (17, 17), (333, 700), (700, 333), (512, 512), (513, 513), (1920, 2560), (5000, 100)]


def _check_plan(height: int, width: int, tile_px: int, overlap_px: int, fixed=None) -> None:
    plan = plan_tiles(height, width, tile_px, overlap_px, fixed_tile_hw=fixed)
    padded_h, padded_w = plan.padded_hw
    tile_h, tile_w = plan.tile_hw
    assert padded_h % 16 == 0 and padded_w % 16 == 0
    assert padded_h >= height and padded_w >= width
    assert tile_h % 16 == 0 and tile_w % 16 == 0
    if fixed is None:
        assert tile_h <= tile_px and tile_w <= tile_px
        # never more padding than one multiple of 16 beyond the frame
        assert padded_h - height < 16 and padded_w - width < 16
    else:
        assert plan.tile_hw == fixed
    coverage = np.zeros(plan.padded_hw, np.int32)
    for y, x in plan.origins:
        assert y % 16 == 0 and x % 16 == 0
        assert 0 <= y and y + tile_h <= padded_h and 0 <= x and x + tile_w <= padded_w
        coverage[y:y + tile_h, x:x + tile_w] += 1
    assert coverage.min() >= 1, "some pixel is in no tile"
    ys = sorted({y for y, _ in plan.origins})
    xs = sorted({x for _, x in plan.origins})
    assert len(plan.origins) == len(ys) * len(xs)
    for starts, tile in ((ys, tile_h), (xs, tile_w)):
        for a, b in itertools.pairwise(starts):
            assert a + tile - b >= overlap_px, f"neighbouring tiles overlap by less than {overlap_px}"


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_plan_covers_every_pixel_with_equal_aligned_overlapping_tiles(height, width):
    _check_plan(height, width, 512, 64)
    _check_plan(height, width, 128, 32)


@settings(max_examples=150, deadline=None)
@given(height=st.integers(1, 3000), width=st.integers(1, 3000), tile_units=st.integers(4, 40),
       overlap_px=st.integers(0, 60))
def test_plan_properties_hold_for_any_size(height, width, tile_units, overlap_px):
    tile_px = 16 * tile_units
    overlap_px = min(overlap_px, tile_px // 2 - 1)
    _check_plan(height, width, tile_px, overlap_px)
    _check_plan(height, width, 512, overlap_px, fixed=(tile_px, tile_px))  # TensorRT: one fixed tile shape


def test_large_frame_uses_smaller_tiles_than_the_maximum_when_that_wastes_less():
    plan = plan_tiles(1920, 2560, 512, 64)
    assert plan.tile_hw == (448, 480)
    assert plan.n_tiles == 30
    covered_px = plan.n_tiles * plan.tile_hw[0] * plan.tile_hw[1]
    assert covered_px / (1920 * 2560) < 1.35  # 512x512 tiles would cover 1.6x the frame


def test_fixed_tile_pads_small_frames_up_and_tiles_large_ones():
    _check_plan(100, 40, 512, 16, fixed=(64, 64))
    _check_plan(700, 333, 512, 16, fixed=(128, 128))
    plan = plan_tiles(20, 30, 512, 8, fixed_tile_hw=(64, 64))
    assert plan.padded_hw == (64, 64) and plan.origins == ((0, 0),)


def test_fixed_tile_must_hold_the_overlap():
    with pytest.raises(ValueError, match="fixed tile"):
        plan_tiles(100, 100, 512, 40, fixed_tile_hw=(64, 64))
    with pytest.raises(ValueError, match="fixed tile"):
        plan_tiles(100, 100, 512, 8, fixed_tile_hw=(60, 64))


def test_small_frame_is_one_tile_of_its_own_padded_size():
    plan = plan_tiles(333, 200, 512, 64)
    assert plan.origins == ((0, 0),)
    assert plan.tile_hw == plan.padded_hw == (336, 208)


@pytest.mark.parametrize(("tile_px", "overlap_px"), [(100, 10), (0, 0), (64, 32), (64, -1)])
def test_bad_tile_arguments_are_refused(tile_px, overlap_px):
    with pytest.raises(ValueError):
        plan_tiles(100, 100, tile_px, overlap_px)


def test_round_up():
    assert [round_up(v) for v in (0, 1, 15, 16, 17, 32)] == [16, 16, 16, 16, 32, 32]


def test_pad_frame_reflects_at_bottom_and_right_only():
    frame = np.arange(5 * 7, dtype=np.uint8).reshape(5, 7)
    plan = plan_tiles(5, 7, 64, 8)
    padded = pad_frame(frame, plan)
    assert padded.shape == (16, 16)
    assert np.array_equal(padded[:5, :7], frame)
    assert np.array_equal(padded[5, :7], frame[3])  # reflect, edge row not repeated
    assert np.array_equal(padded[:5, 7], frame[:, 5])
    one_pixel = pad_frame(np.full((1, 1), 9, np.uint16), plan_tiles(1, 1, 64, 8))
    assert one_pixel.shape == (16, 16) and np.all(one_pixel == 9)
    aligned = np.zeros((32, 48), np.uint8)
    assert pad_frame(aligned, plan_tiles(32, 48, 64, 8)) is aligned


def test_feathers_are_positive_one_at_frame_borders_and_cross_fade_to_one():
    plan = plan_tiles(64, 112, 64, 16)  # two tiles side by side, overlapping by exactly 16
    assert plan.origins == ((0, 0), (0, 48))
    left, right = tile_weights(plan, 0, 0), tile_weights(plan, 0, 48)
    assert left.min() > 0 and right.min() > 0
    assert np.all(left[:, :48] == 1.0) and np.all(right[:, 16:] == 1.0)  # frame borders: full weight
    overlap_sum = left[:, 48:] + right[:, :16]
    assert np.allclose(overlap_sum, 1.0)
    assert np.all(np.diff(left[0, 48:]) < 0) and np.all(np.diff(right[0, :16]) > 0)


@pytest.mark.parametrize(("height", "width", "tile_px", "overlap_px"),
                         [(333, 700, 128, 32), (700, 333, 96, 16), (45, 1000, 64, 0), (1, 1, 64, 8), (200, 300, 320, 32)])
def test_blending_tiles_of_a_field_reproduces_it_without_seams(height, width, tile_px, overlap_px):
    """Tiles cut from one smooth field and blended back give the field: weights normalise everywhere."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    field = np.stack([np.sin(yy / 37.0) + xx / 100.0, np.cos(xx / 23.0), yy * 0.01 - xx * 0.02])
    plan = plan_tiles(height, width, tile_px, overlap_px)
    padded = np.stack([pad_frame(channel, plan) for channel in field])
    blender = TileBlender(plan, n_classes=3)
    for (y, x), _ in zip(plan.origins, extract_tiles(padded[0], plan), strict=True):
        tile_h, tile_w = plan.tile_hw
        blender.add(padded[:, y:y + tile_h, x:x + tile_w], y, x)
    blended = blender.blended()[:, :height, :width]
    assert np.allclose(blended, field, atol=1e-5)
    assert np.array_equal(blender.argmax(), np.argmax(field, axis=0).astype(np.uint8))


def test_blending_cross_fades_between_disagreeing_tiles():
    """Two tiles that disagree by a constant meet in a linear ramp, not a step (a seam)."""
    plan = plan_tiles(64, 112, 64, 16)
    blender = TileBlender(plan, n_classes=1)
    blender.add(np.zeros((1, 64, 64), np.float32), 0, 0)
    blender.add(np.ones((1, 64, 64), np.float32), 0, 48)
    row = blender.blended()[0, 0]
    assert np.all(row[:48] == 0.0) and np.all(row[64:] == 1.0)
    ramp = row[47:65]
    assert np.all(np.diff(ramp) > 0)
    assert np.max(np.diff(ramp)) <= 1.0 / 16 + 1e-6  # no jump larger than one ramp step
