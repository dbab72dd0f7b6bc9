"""Where the v3 objects lie: particle label image, pore mask, crack layer.

Why separate from painting: the geometry decides the ground truth (class 1 = particle
bodies, class 2 = pores), so it is built first, exactly, as integer images; `realistic.py`
then paints greys onto it. Particles keep their own label (touching particles still get
an outline between them, as in the real tiles); polygons are filled in small regions of
interest, so a frame of 100 particles costs a few milliseconds.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> labels, drawn = place_particles(rng, (128, 128), 0.4, 40.0, 10.0, 0.3, 0.1, 0.0)
>>> labels.dtype.name, drawn > 0, 0.3 < float((labels > 0).mean()) < 0.5
('int32', True, True)
"""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np

from inspectd.data.synth.shapes import (
    SHIFT,
    fill_in_roi,
    fill_outlines,
    fit_by_shrinking,
    log_normal_diameters,
    wobbly_ellipses,
)

logger = logging.getLogger(__name__)

_HARMONICS = np.arange(2, 9, dtype=np.float64)


def blob_outlines(
    rng: np.random.Generator,
    centres_xy: np.ndarray,
    diameters_px: np.ndarray,
    aspects: np.ndarray,
    angles_deg: np.ndarray,
    roughness: float,
    n_vertices: int,
) -> np.ndarray:
    """Closed rounded outlines, (count, n_vertices, 2) x/y, of the given equivalent diameters.

    An ellipse of area pi d^2 / 4 (axes d/sqrt(aspect), d sqrt(aspect)) whose radius wobbles
    by harmonics 2..8 (amplitude falling as h^-1.5: potato shapes with slightly ragged
    edges, not stars); `shapes.wobbly_ellipses` draws it.
    """
    count = len(diameters_px)
    amplitudes = roughness * rng.normal(0.0, 1.0, (count, _HARMONICS.size)) / _HARMONICS**1.5 * 2.0
    root = np.sqrt(aspects)
    semi_major = diameters_px / (2.0 * root)
    semi_minor = diameters_px * root / 2.0
    return wobbly_ellipses(
        rng, centres_xy, semi_major, semi_minor, angles_deg, _HARMONICS, amplitudes, n_vertices
    )


_BATCH = 64


def place_particles(
    rng: np.random.Generator,
    shape: tuple[int, int],
    fraction: float,
    diameter_px: float,
    diameter_sd_px: float,
    flattening: float,
    roughness: float,
    angle_deg: float,
) -> tuple[np.ndarray, int]:
    """Particle label image (int32, 0 = none, 1.. = particle) covering about `fraction`.

    Cross-sections of particles hardly overlap, so a candidate is kept only while most of
    it is free (a later particle lies over an earlier one where they do touch); the last
    ones are shrunk so the share lands near the target. Returns (labels, particles drawn).
    """
    height, width = shape
    labels = np.zeros(shape, dtype=np.int32)
    target_px = fraction * height * width
    if target_px < 4.0:
        return labels, 0
    covered_px = 0
    drawn = 0
    mean_area_px = math.pi * (diameter_px**2 + diameter_sd_px**2) / 4.0
    max_batches = 6 + int(8 * target_px / mean_area_px / _BATCH)
    for batch_index in range(max_batches):
        if target_px - covered_px < 4.0:
            break
        crowded = batch_index >= max_batches // 2
        diameters = log_normal_diameters(rng, _BATCH, diameter_px, diameter_sd_px, 4.0)
        aspects = rng.uniform(1.0 - flattening, 1.0, _BATCH)
        margin = 0.3 * diameters
        centres = np.stack(
            [
                rng.random(_BATCH) * (width + 2 * margin) - margin,
                rng.random(_BATCH) * (height + 2 * margin) - margin,
            ],
            1,
        )
        angles = angle_deg + rng.normal(0.0, 12.0, _BATCH)
        outlines = blob_outlines(rng, centres, diameters, aspects, angles, roughness, 48)
        for i in range(_BATCH):
            remaining_px = target_px - covered_px
            if remaining_px < 4.0:
                break
            area_px = math.pi * diameters[i] ** 2 / 4.0
            outline = outlines[i]
            if area_px > 1.2 * remaining_px:
                outline = centres[i] + (outline - centres[i]) * math.sqrt(remaining_px / area_px)
            filled = fill_in_roi(outline, shape)
            if filled is None:
                continue
            roi, patch = filled[0], filled[1].view(bool)
            patch_px = int(np.count_nonzero(patch))
            if patch_px == 0:
                continue
            new_px = int(np.count_nonzero(patch & (labels[roi] == 0)))
            if new_px < (0.55 if crowded else 0.85) * patch_px:
                continue
            drawn += 1
            labels[roi][patch] = drawn
            covered_px += new_px
    if target_px - covered_px > 0.05 * target_px + 16:
        logger.debug("placed %d of %d px of particles", covered_px, int(target_px))
    return labels, drawn


def place_pores(
    rng: np.random.Generator,
    shape: tuple[int, int],
    fraction: float,
    diameter_px: float,
    diameter_sd_px: float,
    clustering: float,
    preferred_centres_index: np.ndarray,
    avoid: np.ndarray,
) -> tuple[np.ndarray, int]:
    """Pore mask (uint8 0/1) covering about `fraction`; returns (mask, pores drawn).

    A share `clustering` of pores gathers in clusters whose centres are mostly taken from
    `preferred_centres_index` (flat pixel indices: particle rims and dark lamellae, where
    pores form in sprayed coatings); the rest are scattered. Pores centred where `avoid`
    (uint8 0/1, the particle interiors: never-melted powder is dense) is set are mostly
    dropped.
    """
    height, width = shape
    pores = np.zeros(shape, dtype=np.uint8)
    target_px = fraction * height * width
    if target_px < 1.0:
        return pores, 0
    mean_area_px = math.pi * (diameter_px**2 + diameter_sd_px**2) / 4.0 * 0.8
    expected = max(1.0, target_px / mean_area_px)
    n_clusters = max(1, int(round(expected / 7.0)))
    centres = np.stack([rng.uniform(0, width, n_clusters), rng.uniform(0, height, n_clusters)], 1)
    on_preferred = rng.random(n_clusters) < 0.7
    if preferred_centres_index.size:
        picked = rng.choice(preferred_centres_index, n_clusters)
        centres[on_preferred, 0] = (picked % width)[on_preferred]
        centres[on_preferred, 1] = (picked // width)[on_preferred]
    spreads = rng.uniform(0.8, 2.5, n_clusters) * diameter_px
    covered_px = 0
    drawn = 0
    for _ in range(16 + int(8 * expected / _BATCH)):
        remaining_px = target_px - covered_px
        if remaining_px < 1.0:
            break
        # Far from the target: a block that cannot overshoot (a third of what is left,
        # counted once); near it, pore by pore, each shrunk to fit what is left.
        count = int(np.clip(remaining_px / (3.0 * mean_area_px), 1, _BATCH))
        diameters = log_normal_diameters(rng, count, diameter_px, diameter_sd_px, 1.5)
        aspects = rng.uniform(0.5, 1.0, count)
        cluster = rng.integers(0, n_clusters, count)
        centre_xy = centres[cluster] + rng.normal(0.0, 1.0, (count, 2)) * spreads[cluster, None]
        scattered = rng.random(count) >= clustering
        centre_xy[scattered] = np.stack(
            [rng.uniform(0, width, count), rng.uniform(0, height, count)], 1
        )[scattered]
        column = np.clip(np.round(centre_xy[:, 0]), 0, width - 1).astype(np.intp)
        row = np.clip(np.round(centre_xy[:, 1]), 0, height - 1).astype(np.intp)
        kept = (avoid[row, column] == 0) | (rng.random(count) < 0.05)
        centre_xy, diameters, aspects = centre_xy[kept], diameters[kept], aspects[kept]
        if len(diameters) == 0:
            continue
        outlines = blob_outlines(
            rng, centre_xy, diameters, aspects, rng.uniform(0, 180, len(diameters)), 0.45, 20
        )
        if count >= 8:
            fill_outlines(pores, outlines)
            drawn += len(outlines)
            covered_px = cv2.countNonZero(pores)
            continue
        for outline, centre in zip(outlines, centre_xy, strict=True):
            new_px = _add_fitted(pores, outline, centre, target_px - covered_px)
            if new_px:
                drawn += 1
                covered_px += new_px
    return pores, drawn


def _add_fitted(pores: np.ndarray, outline: np.ndarray, centre_xy: np.ndarray, remaining_px: float) -> int:
    """Add one pore, shrunk until it adds at most `remaining_px` px; returns the px it added."""
    if remaining_px < 1.0:
        return 0
    fitted = fit_by_shrinking(
        outline, centre_xy, remaining_px, pores.shape, 0,
        lambda roi, patch: int(np.count_nonzero(patch > pores[roi])),
    )
    if fitted is None:
        return 0
    roi, patch, _, new_px = fitted
    pores[roi] |= patch
    return new_px


def crack_layer(
    rng: np.random.Generator, shape: tuple[int, int], count: int, angle_deg: float
) -> np.ndarray:
    """Thin curvy cracks, float32 darkness 0..1, running roughly along the lamellae."""
    height, width = shape
    layer = np.zeros(shape, dtype=np.uint8)
    step_px = 5.0
    for _ in range(count):
        length_px = rng.uniform(0.2, 0.8) * max(height, width)
        n_steps = max(2, int(length_px / step_px))
        heading = math.radians(angle_deg + rng.normal(0.0, 30.0))
        turns = np.convolve(np.cumsum(rng.normal(0.0, 0.15, n_steps)), np.ones(5) / 5.0, "same")
        xs = rng.uniform(0, width) + np.cumsum(step_px * np.cos(heading + turns))
        ys = rng.uniform(0, height) - np.cumsum(step_px * np.sin(heading + turns))
        points = np.round(np.stack([xs, ys], 1) * (1 << SHIFT)).astype(np.int32).reshape(-1, 1, 2)
        darkness = int(rng.uniform(120, 230))
        cv2.polylines(layer, [points], False, darkness, 1, cv2.LINE_AA, shift=SHIFT)
    return layer.astype(np.float32) * (1.0 / 255.0)
