"""Synthetic micrographs: determinism, masks that match the truth, appearance, dataset files.

Tolerances (stated once): realised unmelted / pore fractions land within 0.1 percentage
points of the targets (the generator shrinks its last object to fit; on an 80 %-covered
frame within 0.5); the real-tile comparison allows 15 grey levels per CLAHE percentile and
25 % on the gradient and Laplacian energies.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from inspectd.data.synth import GENERATOR_VERSION, SynthParams, SynthSample, generate, write_dataset
from inspectd.errors import ConfigError
from inspectd.types import MELTED, PORE, UNMELTED

SMALL = (96, 128)


def class_fractions_pct(mask: np.ndarray) -> list[float]:
    counts = np.bincount(mask.ravel(), minlength=3)
    return list(100.0 * counts / mask.size)


def assert_truth_counted_on_mask(sample: SynthSample) -> None:
    """The truth's class fractions and 8-connected region counts are the mask's (v2 and v3)."""
    melted, unmelted, pores = class_fractions_pct(sample.mask)
    truth = sample.truth
    assert truth["melted_fraction_pct"] == pytest.approx(melted, abs=1e-9)
    assert truth["unmelted_fraction_pct"] == pytest.approx(unmelted, abs=1e-9)
    assert truth["porosity_pct"] == pytest.approx(pores, abs=1e-9)
    for class_index, key in ((UNMELTED, "particle_count"), (PORE, "pore_count")):
        regions = cv2.connectedComponents((sample.mask == class_index).astype(np.uint8), None, 8)
        assert truth[key] == regions[0] - 1


def _clahe(image: np.ndarray) -> np.ndarray:
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(image)


def test_same_seed_gives_the_same_frame():
    first = generate(*SMALL, seed=11)
    again = generate(*SMALL, seed=11)
    assert isinstance(first, SynthSample)
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.mask, again.mask)
    assert first.truth == again.truth


def test_different_seeds_give_different_frames():
    one, two = generate(*SMALL, seed=1), generate(*SMALL, seed=2)
    assert not np.array_equal(one.image, two.image)
    assert not np.array_equal(one.mask, two.mask)


@pytest.mark.parametrize(
    "params",
    [
        SynthParams(),
        SynthParams(unmelted_fraction=0.35, pore_fraction=0.08, bit_depth=16),
        SynthParams(unmelted_fraction=0.0, pore_fraction=0.0, crack_count=0),
    ],
    ids=["default", "dense-16bit", "matrix-only"],
)
def test_mask_holds_class_indices_and_truth_is_counted_on_it(params):
    sample = generate(120, 150, seed=5, params=params)
    assert sample.mask.dtype == np.uint8 and sample.mask.shape == (120, 150)
    assert sample.image.shape == (120, 150)
    assert set(np.unique(sample.mask).tolist()) <= {MELTED, UNMELTED, PORE}
    assert_truth_counted_on_mask(sample)
    truth = sample.truth
    assert truth["particle_count"] <= truth["particles_drawn"]
    assert truth["pore_count"] <= truth["pores_drawn"]
    assert truth["seed"] == 5 and truth["params"]["bit_depth"] == params.bit_depth
    assert truth["generator_version"] == GENERATOR_VERSION


@pytest.mark.parametrize(
    ("unmelted", "pores", "shape"),
    [
        (0.15, 0.03, (256, 256)),
        (0.30, 0.08, (200, 240)),
        (0.05, 0.01, (128, 160)),
        (0.40, 0.0, (64, 64)),
        (0.0, 0.10, (256, 256)),
    ],
)
def test_realised_fractions_are_near_the_targets(unmelted, pores, shape):
    for seed in (0, 1):
        truth = generate(
            *shape, seed=seed, params=SynthParams(unmelted_fraction=unmelted, pore_fraction=pores)
        ).truth
        assert truth["unmelted_fraction_pct"] == pytest.approx(100 * unmelted, abs=0.1)
        assert truth["porosity_pct"] == pytest.approx(100 * pores, abs=0.1)


def test_a_crowded_frame_still_reaches_its_targets():
    truth = generate(
        192, 192, seed=3, params=SynthParams(unmelted_fraction=0.6, pore_fraction=0.2)
    ).truth
    assert truth["unmelted_fraction_pct"] == pytest.approx(60.0, abs=0.5)
    assert truth["porosity_pct"] == pytest.approx(20.0, abs=0.1)


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_pores_are_darker_than_matrix_which_is_darker_than_particles(bit_depth):
    for seed in range(3):
        sample = generate(192, 256, seed=seed, params=SynthParams(bit_depth=bit_depth))
        grey = sample.image.astype(np.float64) / (257.0 if bit_depth == 16 else 1.0)
        pore, matrix, particle = (grey[sample.mask == k].mean() for k in (PORE, MELTED, UNMELTED))
        assert pore + 40 < matrix < particle


def test_sixteen_bit_frames_use_the_full_range_at_finer_steps():
    params8 = SynthParams()
    sample8 = generate(128, 128, seed=4, params=params8)
    sample16 = generate(128, 128, seed=4, params=SynthParams(bit_depth=16))
    assert sample16.image.dtype == np.uint16
    assert len(np.unique(sample16.image)) > 256
    assert sample16.image.max() > 40000
    # Same scene and noise, 257x the 8-bit scale: dividing back agrees to one grey level.
    np.testing.assert_array_equal(sample16.mask, sample8.mask)
    difference = np.abs(sample16.image / 257.0 - sample8.image.astype(np.float64))
    assert difference.max() <= 1.0


def test_enhance_applies_clahe_clip_2_grid_8():
    raw = generate(*SMALL, seed=8)
    enhanced = generate(*SMALL, seed=8, params=SynthParams(enhance=True))
    np.testing.assert_array_equal(enhanced.image, _clahe(raw.image))
    np.testing.assert_array_equal(enhanced.mask, raw.mask)


@pytest.mark.parametrize(("angle_deg", "vertical_over_horizontal"), [(0.0, 1.1), (90.0, 1 / 1.1)])
def test_lamellae_are_streaks_along_the_lamella_angle(angle_deg, vertical_over_horizontal):
    # Streaks along x change little along x: the vertical gradient dominates, and vice versa.
    params = SynthParams(lamella_angle_deg=angle_deg, noise_sd=0.0)
    ratios = []
    for seed in range(2):
        grey = generate(192, 192, seed=seed, params=params).image.astype(np.float32)
        along_x = np.abs(cv2.Sobel(grey, cv2.CV_32F, 1, 0)).mean()
        along_y = np.abs(cv2.Sobel(grey, cv2.CV_32F, 0, 1)).mean()
        ratios.append(along_y / along_x)
    if vertical_over_horizontal > 1:
        assert min(ratios) > vertical_over_horizontal
    else:
        assert max(ratios) < vertical_over_horizontal


def test_pores_are_dark_but_not_a_trivial_threshold():
    # The darkest pixels are mostly pore, yet boundaries, cracks and halos compete: a global
    # threshold at the true porosity recovers pores only partly (so segmentation is a job).
    ious = []
    for seed in range(2):
        sample = generate(256, 256, seed=seed)
        enhanced = _clahe(sample.image)
        pores = sample.mask == PORE
        dark = enhanced <= np.quantile(enhanced, pores.mean())
        ious.append((dark & pores).sum() / (dark | pores).sum())
    assert 0.25 < float(np.mean(ious)) < 0.9


def test_invalid_parameters_raise_config_error():
    for kwargs in (
        {"unmelted_fraction": 0.9},
        {"pore_fraction": -0.1},
        {"bit_depth": 12},
        {"unmelted_fraction": 0.7, "pore_fraction": 0.25},
        {"particle_flattening": 1.0},
        {"noise_sd": -1.0},
    ):
        with pytest.raises(ConfigError, match="invalid synth parameters"):
            SynthParams(**kwargs)
    with pytest.raises(ConfigError, match="at least 16x16"):
        generate(8, 64, seed=0)
    with pytest.raises(ConfigError, match="seed must be >= 0"):
        generate(32, 32, seed=-1)


def test_write_dataset_files_round_trip(tmp_path):
    paths = write_dataset(tmp_path, n=3, height=80, width=96, seed=21)
    assert [p.name for p in paths] == ["synth_0000.png", "synth_0001.png", "synth_0002.png"]
    seeds = set()
    for image_path in paths:
        stem = image_path.stem
        sidecar = json.loads((tmp_path / f"{stem}.json").read_text())
        image = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(tmp_path / sidecar["mask"]), cv2.IMREAD_UNCHANGED)
        assert sidecar["mask"] == f"{stem}_mask.png"
        assert image.dtype == np.uint8 and mask.dtype == np.uint8 and mask.shape == (80, 96)
        # The sidecar alone rebuilds the sample exactly; the mask PNG is unscaled indices.
        rebuilt = generate(80, 96, sidecar["seed"], SynthParams(**sidecar["params"]))
        np.testing.assert_array_equal(mask, rebuilt.mask)
        np.testing.assert_array_equal(image, rebuilt.image)
        melted, unmelted, pores = class_fractions_pct(mask)
        assert sidecar["unmelted_fraction_pct"] == pytest.approx(unmelted, abs=1e-9)
        assert sidecar["porosity_pct"] == pytest.approx(pores, abs=1e-9)
        assert sidecar["melted_fraction_pct"] == pytest.approx(melted, abs=1e-9)
        assert sidecar["generator_version"] == GENERATOR_VERSION
        assert sidecar["dataset_seed"] == 21
        seeds.add(sidecar["seed"])
    assert len(seeds) == 3


def test_write_dataset_sixteen_bit_png(tmp_path):
    (path,) = write_dataset(
        tmp_path, n=1, height=64, width=64, seed=2, params=SynthParams(bit_depth=16)
    )
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint16 and len(np.unique(image)) > 256


def test_write_dataset_masks_dir_matches_by_stem(tmp_path):
    images_dir, masks_dir = tmp_path / "images", tmp_path / "masks"
    paths = write_dataset(images_dir, n=2, height=64, width=80, seed=9, masks_dir=masks_dir)
    assert sorted(p.name for p in images_dir.glob("*.png")) == [p.name for p in paths]
    assert sorted(p.name for p in masks_dir.iterdir()) == [p.name for p in paths]
    for image_path in paths:
        sidecar = json.loads(image_path.with_suffix(".json").read_text())
        mask = cv2.imread(str(masks_dir / image_path.name), cv2.IMREAD_UNCHANGED)
        assert (images_dir / sidecar["mask"]).resolve() == (masks_dir / image_path.name).resolve()
        rebuilt = generate(64, 80, sidecar["seed"], SynthParams(**sidecar["params"]))
        np.testing.assert_array_equal(mask, rebuilt.mask)


def test_write_dataset_vary_draws_valid_params_per_sample(tmp_path):
    base = SynthParams()
    paths = write_dataset(tmp_path, n=4, height=64, width=64, seed=5, params=base, vary=True)
    drawn = [json.loads(p.with_suffix(".json").read_text())["params"] for p in paths]
    assert len({d["unmelted_fraction"] for d in drawn}) == 4
    assert all(d["bit_depth"] == base.bit_depth for d in drawn)
    for image_path, params in zip(paths, drawn, strict=True):
        sidecar = json.loads(image_path.with_suffix(".json").read_text())
        rebuilt = generate(64, 64, sidecar["seed"], SynthParams(**params))
        image = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(image, rebuilt.image)
    # The same call writes the same dataset.
    again = write_dataset(tmp_path / "again", n=4, height=64, width=64, seed=5, vary=True)
    for first, second in zip(paths, again, strict=True):
        np.testing.assert_array_equal(
            cv2.imread(str(first), cv2.IMREAD_UNCHANGED),
            cv2.imread(str(second), cv2.IMREAD_UNCHANGED),
        )


def _tile_statistics(enhanced: np.ndarray) -> tuple[np.ndarray, float, float]:
    grey = enhanced.astype(np.float32)
    gradient = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    percentiles = np.percentile(grey, [1, 5, 25, 50, 75, 95, 99])
    return percentiles, float(gradient.mean()), float(cv2.Laplacian(grey, cv2.CV_32F).std())


def test_frames_after_clahe_resemble_the_real_tile(real_tile_path):
    real = cv2.imread(str(real_tile_path), cv2.IMREAD_GRAYSCALE)
    real_pct, real_gradient, real_laplacian = _tile_statistics(real)
    # The tile is a 256x256 crop; compare with the centre of 512x512 frames whose particles
    # have about the tile's scale, averaged over a few seeds.
    params = SynthParams(particle_diameter_px=64, pore_diameter_px=12, pore_diameter_sd_px=8)
    stats = [
        _tile_statistics(_clahe(generate(512, 512, seed, params).image)[128:384, 128:384])
        for seed in range(3)
    ]
    synth_pct = np.mean([s[0] for s in stats], axis=0)
    assert np.abs(synth_pct - real_pct).max() <= 15, (synth_pct, real_pct)
    assert np.mean([s[1] for s in stats]) == pytest.approx(real_gradient, rel=0.25)
    assert np.mean([s[2] for s in stats]) == pytest.approx(real_laplacian, rel=0.25)


def test_write_dataset_generator_v2_is_the_default_byte_for_byte(tmp_path):
    default = write_dataset(tmp_path / "default", n=2, height=48, width=64, seed=13, vary=True)
    explicit = write_dataset(
        tmp_path / "v2", n=2, height=48, width=64, seed=13, vary=True, generator="v2"
    )
    for first, second in zip(default, explicit, strict=True):
        for suffix in (".png", ".json"):
            assert first.with_suffix(suffix).read_bytes() == second.with_suffix(suffix).read_bytes()
        assert json.loads(first.with_suffix(".json").read_text())["generator"] == "inspectd.synth"
