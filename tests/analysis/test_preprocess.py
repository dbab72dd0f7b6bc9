"""Preprocess: CLAHE on camera frames, none on frames that are already enhanced."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

import kernels
from inspectd.analysis.preprocess import enhance, looks_enhanced, needs_clahe
from inspectd.config import PreprocessConfig
from inspectd.data.synth import SynthParams, generate


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("shape", [(256, 256), (480, 640)])
def test_raw_camera_frames_are_enhanced_and_clahe_outputs_are_recognised(seed, shape):
    raw = generate(*shape, seed=seed).image
    assert not looks_enhanced(raw)
    enhanced = enhance(raw, PreprocessConfig())
    assert looks_enhanced(enhanced)
    assert np.array_equal(enhanced, kernels.clahe(raw, clip_limit=2.0, tile_grid=(8, 8), backend="cpu"))


def test_an_enhanced_frame_is_left_as_it_is_and_copied():
    frame = generate(256, 256, seed=4, params=dataclasses.replace(SynthParams(), enhance=True)).image
    out = enhance(frame, PreprocessConfig())
    assert np.array_equal(out, frame) and out is not frame


def test_sixteen_bit_frames_are_judged_like_eight_bit_ones():
    raw8 = generate(256, 256, seed=5).image
    enhanced16 = kernels.clahe(raw8, clip_limit=2.0, tile_grid=(8, 8), backend="cpu").astype(np.uint16) * 257
    assert looks_enhanced(enhanced16)
    assert not looks_enhanced(raw8.astype(np.uint16) * 16)  # a 12-bit camera frame


def test_the_check_can_be_switched_off_and_clahe_off_means_off():
    frame = np.tile(np.arange(256, dtype=np.uint8), (32, 1))
    assert looks_enhanced(frame)
    assert not needs_clahe(frame, PreprocessConfig())
    assert needs_clahe(frame, PreprocessConfig(clahe={"skip_if_enhanced": False}))
    assert not needs_clahe(frame // 2, PreprocessConfig(clahe={"enabled": False}))


@pytest.mark.parametrize("denoise", ["none", "median"])
@pytest.mark.parametrize("shape", [(256, 256), (251, 397)])  # the 8x8 grid divides the first only
def test_enhance_decides_as_needs_clahe_does(shape, denoise):
    """Without denoising `enhance` judges the frame on CLAHE's own tile histograms; the output
    is what `needs_clahe` + CLAHE give, for camera frames and enhanced ones, 8 and 16 bit."""
    cfg = PreprocessConfig(denoise=denoise)
    raw = generate(*shape, seed=6).image
    enhanced = kernels.clahe(raw, clip_limit=2.0, tile_grid=(8, 8), backend="cpu")
    for frame in (raw, enhanced, raw.astype(np.uint16) * 16, enhanced.astype(np.uint16) * 257):
        out = enhance(frame, cfg)
        source = cv2.medianBlur(frame, 3) if denoise == "median" else frame
        want = kernels.clahe(source, clip_limit=2.0, tile_grid=(8, 8), backend="cpu") if needs_clahe(frame, cfg) else source
        assert not np.shares_memory(out, frame) and out.dtype == frame.dtype
        assert np.array_equal(out, want)
