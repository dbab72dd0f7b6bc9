"""Synthetic coating cross-section micrographs with an exact class mask.

Why: the tests, the demo, the benchmarks and the U-Net training need micrographs whose true
melted / unmelted / pore fractions are known to the pixel; real micrographs never come with
that. The frames imitate a polished thermal-spray cross-section under a bright-field
microscope (compare with `../shared/samples/real_coating_tile_c.png` after CLAHE).

What is painted, in this order (in reflectance 0..1, then "imaged"):

1. Melted matrix: lamellar splats. A Voronoi mosaic, flattened along the lamellae
   (`lamella_angle_deg`, 0 = horizontal) and warped, gives wavy lens-shaped splats, each
   with its own mid/light grey (a few darker, oxide-rich ones); the splat boundaries are
   dark ragged bands whose width and depth wander across the frame; streaks along the
   lamellae, mottle and dark-biased speckle (polishing pits) cover everything, so the
   matrix is far from flat and a global threshold is not trivially right.
2. Cracks: thin dark curvy polylines that run roughly along the lamellae, under the
   particles. Crack pixels are labelled melted matrix (class 0): they are thin, not compact,
   so they are not pores.
3. Unmelted particles: bright rounded or flattened blobs with a mottled, grainy interior
   and a soft dark rim; later particles lie over earlier ones. Label 1 is the particle body
   (the filled outline); the part of the rim outside the outline stays class 0.
4. Pores: near-black compact irregular blobs, mostly in clusters on splat boundaries, on
   top of everything, with a soft dark halo. Label 2 is the filled pore outline (its
   blurred edge pixels are dark grey, as in real images).
5. Imaging: smooth uneven illumination, Gaussian optical blur, a tone curve (gamma 0.7),
   sensor noise (read noise plus a signal-dependent shot term), quantisation.

Constants were tuned by eye and by histogram against the real tile: a 512x512 frame with
`particle_diameter_px=64`, after CLAHE (clip 2, 8x8), has grey-level percentiles within a
few levels of the tile's (1%: 21, 5%: 57, 25%: 128, 50%: 175, 75%: 197, 95%: 218, 99%: 230)
and a similar mean gradient magnitude.

Fractions in `truth` are counted on the mask, so they are exact; the generator aims at
`unmelted_fraction` and `pore_fraction` and lands within about one small object's area.

Bit depth: 8-bit frames use 0..255. 16-bit frames use the full 0..65535 range (the 8-bit
grey scale times 257, noise added before quantisation), like a 16-bit camera, so
`image16 / 257` is comparable with an 8-bit frame and `noise_sd` is always in 8-bit levels.

Frames are raw (camera-like, low contrast) unless `enhance=True`, which applies OpenCV's
CLAHE (clip 2.0, 8x8 tiles) as the real tile was; the analysis pipeline does its own CLAHE.

Cost: one 2560x1920 frame is about 0.4 s of CPU (numpy + OpenCV, no per-pixel Python).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from inspectd.data.synth.camera import illumination
from inspectd.data.synth.sample import SynthSample, check_request, labelled_sample
from inspectd.data.synth.shapes import (
    fill_outlines,
    fit_by_shrinking,
    log_normal_diameters,
    wobbly_ellipses,
)
from inspectd.errors import ConfigError

logger = logging.getLogger(__name__)

# Bump when the same (params, seed) would draw a different image: sidecars record it.
GENERATOR_VERSION = "1"

# Raw camera response: reflectance r maps to _BLACK_LEVEL + _WHITE_GAIN * r**_GAMMA 8-bit
# grey levels before noise (tuned so that after CLAHE the histogram matches the real tile).
_BLACK_LEVEL = 18.0
_WHITE_GAIN = 205.0
_GAMMA = 0.7


@dataclass(frozen=True)
class SynthParams:
    """What one synthetic frame looks like; every field has a usable default.

    Sizes are in pixels of the generated frame; fractions are area fractions (0..1) the
    generator aims at (the truth it reports is counted on the mask).
    - `unmelted_fraction`, `pore_fraction`: target areas of particles and pores.
    - `particle_diameter_px` (+ `_sd_px`, log-normal): particle size; it also sets the
      scale of the splats and boundaries, i.e. the magnification.
    - `particle_flattening` f: each particle's minor/major axis ratio is drawn from [1 - f, 1].
    - `pore_diameter_px` (+ `_sd_px`, log-normal): pore size.
    - `crack_count`: cracks per frame.
    - `illumination_gradient` g: brightness varies by about +-g/2 across the frame.
    - `blur_sigma_px`: optical blur; `noise_sd`: read noise in 8-bit grey levels (also for
      16-bit frames, which are the 8-bit scale times 257).
    - `bit_depth`: 8 or 16; `enhance`: apply CLAHE (clip 2, 8x8) to the output.
    - `lamella_angle_deg`: direction of the lamellae, 0 = horizontal, positive rises to the
      right.

    >>> SynthParams(pore_fraction=0.05).pore_fraction
    0.05
    """

    unmelted_fraction: float = 0.15
    pore_fraction: float = 0.03
    particle_diameter_px: float = 40.0
    particle_diameter_sd_px: float = 10.0
    particle_flattening: float = 0.45
    pore_diameter_px: float = 8.0
    pore_diameter_sd_px: float = 5.0
    crack_count: int = 3
    illumination_gradient: float = 0.3
    blur_sigma_px: float = 0.85
    noise_sd: float = 2.0
    bit_depth: int = 8
    enhance: bool = False
    lamella_angle_deg: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.unmelted_fraction <= 0.8:
            problems.append(f"unmelted_fraction={self.unmelted_fraction} not in [0, 0.8]")
        if not 0.0 <= self.pore_fraction <= 0.3:
            problems.append(f"pore_fraction={self.pore_fraction} not in [0, 0.3]")
        if self.unmelted_fraction + self.pore_fraction > 0.9:
            problems.append("unmelted_fraction + pore_fraction > 0.9 leaves no matrix")
        if self.particle_diameter_px < 4 or self.particle_diameter_sd_px < 0:
            problems.append("particle_diameter_px must be >= 4 and its sd >= 0")
        if self.pore_diameter_px < 2 or self.pore_diameter_sd_px < 0:
            problems.append("pore_diameter_px must be >= 2 and its sd >= 0")
        if not 0.0 <= self.particle_flattening < 1.0:
            problems.append(f"particle_flattening={self.particle_flattening} not in [0, 1)")
        if self.crack_count < 0:
            problems.append(f"crack_count={self.crack_count} must be >= 0")
        if not 0.0 <= self.illumination_gradient <= 1.0:
            problems.append(f"illumination_gradient={self.illumination_gradient} not in [0, 1]")
        if self.blur_sigma_px < 0 or self.noise_sd < 0:
            problems.append("blur_sigma_px and noise_sd must be >= 0")
        if self.bit_depth not in (8, 16):
            problems.append(f"bit_depth={self.bit_depth} must be 8 or 16")
        if problems:
            msg = "invalid synth parameters: " + "; ".join(problems)
            raise ConfigError(msg)


def generate(height: int, width: int, seed: int, params: SynthParams | None = None) -> SynthSample:
    """Draw one synthetic micrograph and its class mask; the same seed gives the same frame.

    >>> s = generate(128, 160, seed=7)
    >>> s.image.shape, s.image.dtype.name, sorted(set(s.mask.ravel().tolist())) <= [0, 1, 2]
    ((128, 160), 'uint8', True)
    >>> round(s.truth["melted_fraction_pct"] + s.truth["unmelted_fraction_pct"]
    ...       + s.truth["porosity_pct"], 6)
    100.0
    """
    params = params or SynthParams()
    check_request(height, width, seed)
    rng = np.random.default_rng(seed)
    shape = (int(height), int(width))

    splat_grey, splat_edges = _splat_mosaic(rng, shape, params)
    cracks = _crack_layer(rng, shape, params)
    pore_mask, pore_count = _place_pores(rng, shape, params, splat_edges)
    particles = _place_particles(rng, shape, params, pore_mask)
    reflectance = _compose(
        rng, shape, params, splat_grey, splat_edges, cracks, particles, pore_mask
    )
    image = _image(rng, reflectance, params)
    return labelled_sample(
        image, particles.body, pore_mask, seed=seed, params=params,
        particles_drawn=particles.count, pores_drawn=pore_count,
        generator_version=GENERATOR_VERSION,
    )


# --------------------------------------------------------------------------- fields


def _blurred_uniform_sd(sigma_x: float, sigma_y: float) -> float:
    """Standard deviation of U(0, 1) noise after cv2.GaussianBlur with these sigmas.

    Known in closed form (sd(U) times the root of the summed squared kernel taps), so the
    fields are normalised without two extra passes over a full frame.
    """
    taps_sq = 1.0
    for sigma in (sigma_x, sigma_y):
        ksize = int(round(sigma * 8 + 1)) | 1  # what cv2 picks for float images
        kernel = cv2.getGaussianKernel(ksize, sigma, cv2.CV_64F)
        taps_sq *= float((kernel**2).sum())
    return math.sqrt(taps_sq / 12.0)


def _smooth_noise(
    rng: np.random.Generator,
    shape: tuple[int, int],
    sigma_along_px: float,
    sigma_across_px: float,
    angle_deg: float = 0.0,
) -> np.ndarray:
    """Zero-mean, about unit-variance random field (float32), correlated over the given lengths.

    Computed at reduced resolution when the field is smooth (nothing is lost) and stretched
    along `angle_deg` (0 = horizontal, positive rises to the right); a 2560x1920 field
    costs a few milliseconds.
    """
    height, width = shape
    factor_x = max(1.0, sigma_along_px / 1.5)
    factor_y = max(1.0, sigma_across_px / 1.5)
    sx = sigma_along_px / factor_x
    sy = sigma_across_px / factor_y
    if abs(angle_deg) > 1e-6:
        # Draw the field in the lamella frame, coarse along each axis and big enough to
        # cover the turned frame, then sample it with one affine warp.
        diagonal = math.hypot(height, width)
        low_w = int(math.ceil(diagonal / factor_x)) + 4
        low_h = int(math.ceil(diagonal / factor_y)) + 4
    else:
        low_w = max(4, int(math.ceil(width / factor_x)))
        low_h = max(4, int(math.ceil(height / factor_y)))
    noise = rng.random((low_h, low_w), dtype=np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigmaX=sx, sigmaY=sy, borderType=cv2.BORDER_REFLECT)
    if noise.size <= 1 << 20:
        # Few correlation lengths per frame: normalise exactly, so no frame comes out with,
        # say, thick boundaries everywhere just because its field drew a high mean.
        noise -= noise.mean()
        noise *= 1.0 / max(float(noise.std()), 1e-12)
    else:
        noise -= 0.5
        noise *= 1.0 / _blurred_uniform_sd(sx, sy)
    if abs(angle_deg) > 1e-6:
        # Frame pixel (x, y), centred, goes to along = x cos - y sin, across = x sin + y cos
        # (image y points down, so +angle rises to the right), then to canvas pixels.
        cos_a, sin_a = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
        cx, cy = width / 2.0, height / 2.0
        frame_to_canvas = np.array(
            [
                [
                    cos_a / factor_x,
                    -sin_a / factor_x,
                    (-cx * cos_a + cy * sin_a) / factor_x + low_w / 2,
                ],
                [
                    sin_a / factor_y,
                    cos_a / factor_y,
                    (-cx * sin_a - cy * cos_a) / factor_y + low_h / 2,
                ],
            ]
        )
        return cv2.warpAffine(
            noise,
            frame_to_canvas,
            (width, height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT,
        )
    if (low_h, low_w) != (height, width):
        noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    return noise


def _fine_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Zero-mean unit-variance speckle at pixel scale (blurred uniform noise, Gaussian enough)."""
    return _smooth_noise(rng, shape, sigma_px, sigma_px)


def _band_edges(labels: np.ndarray) -> np.ndarray:
    """1 where a pixel's label differs from its right or lower neighbour (uint8 0/1)."""
    edges = np.zeros(labels.shape, dtype=np.uint8)
    # cv2.compare on row-contiguous views: one threaded pass each instead of numpy's three.
    right = cv2.compare(labels[:, :-1], labels[:, 1:], cv2.CMP_NE)
    down = cv2.compare(labels[:-1, :], labels[1:, :], cv2.CMP_NE)
    edges[:, :-1] = right
    edges[:-1, :] |= down
    edges //= 255
    return edges


# --------------------------------------------------------------------------- matrix


def _splat_mosaic(
    rng: np.random.Generator, shape: tuple[int, int], params: SynthParams
) -> tuple[np.ndarray, np.ndarray]:
    """Splat cells of the melted matrix: (grey per cell float32, 1-px boundaries uint8 0/1).

    A Voronoi mosaic of random seeds is computed on a grid where splats are round (the
    lamella direction compressed by length/thickness) and sampled back through a smoothly
    warped map: cells come out as wavy, flattened lenses with curvy edges. One distance
    transform on a small grid plus two nearest-neighbour remaps; no per-splat drawing.
    """
    height, width = shape
    scale = params.particle_diameter_px / 40.0
    length_px, thickness_px = 55.0 * scale, 20.0 * scale
    ratio = length_px / thickness_px
    coarse = max(0.5, thickness_px / 16.0)  # frame px per grid px across the lamellae
    warp_px = 0.35 * thickness_px
    angle = math.radians(params.lamella_angle_deg)
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    # The sampling map is smooth, so it is built at half resolution and enlarged (4x fewer
    # passes). Two octaves of warp: wavy splats, and ragged edges that hide the grid's steps.
    half_shape = ((height + 1) // 2, (width + 1) // 2)
    dx = warp_px * _smooth_noise(rng, half_shape, 0.75 * thickness_px, 0.75 * thickness_px)
    dx += 1.5 * _smooth_noise(rng, half_shape, 1.5, 1.5)
    dy = warp_px * _smooth_noise(rng, half_shape, 0.75 * thickness_px, 0.75 * thickness_px)
    dy += 1.5 * _smooth_noise(rng, half_shape, 1.5, 1.5)
    xs = (
        (np.arange(half_shape[1], dtype=np.float32) + 0.5) * (width / half_shape[1])
        - 0.5
        - width / 2.0
    )
    ys = (
        (np.arange(half_shape[0], dtype=np.float32) + 0.5) * (height / half_shape[0])
        - 0.5
        - height / 2.0
    )[:, None]
    # Image y points down: a lamella at +angle rises to the right.
    along = ((xs + dx) * cos_a - (ys + dy) * sin_a) / (ratio * coarse)
    across = ((xs + dx) * sin_a + (ys + dy) * cos_a) / coarse
    margin = 2.0 + 4.0 * warp_px / coarse
    half_along = (abs(width * cos_a) + abs(height * sin_a)) / (2.0 * ratio * coarse) + margin
    half_across = (abs(width * sin_a) + abs(height * cos_a)) / (2.0 * coarse) + margin
    grid_h, grid_w = int(math.ceil(2 * half_across)) + 1, int(math.ceil(2 * half_along)) + 1
    along = cv2.resize(along + half_along, (width, height), interpolation=cv2.INTER_LINEAR)
    across = cv2.resize(across + half_across, (width, height), interpolation=cv2.INTER_LINEAR)

    cell_px = thickness_px / coarse
    n_seeds = max(1, int(grid_h * grid_w / (cell_px * cell_px)))
    seeds = np.ones((grid_h, grid_w), dtype=np.uint8)
    seeds[rng.integers(0, grid_h, n_seeds), rng.integers(0, grid_w, n_seeds)] = 0
    _, labels = cv2.distanceTransformWithLabels(
        seeds, cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL
    )
    maps = cv2.convertMaps(along, across, cv2.CV_16SC2, nninterpolation=True)
    n_labels = int(labels.max()) + 1
    # Most splats mid/light grey, some darker (oxide-rich) ones.
    lut = rng.uniform(0.72, 0.80, n_labels).astype(np.float32)
    dark = rng.random(n_labels) < 0.06
    lut[dark] = rng.uniform(0.55, 0.68, int(dark.sum()))
    # Labels stay exact in float32 (< 2**24 cells); nearest-neighbour keeps cells crisp.
    labels_full = cv2.remap(
        labels.astype(np.float32),
        maps[0],
        maps[1],
        cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_REFLECT,
    )
    grey_full = cv2.remap(
        lut[labels], maps[0], maps[1], cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT
    )
    return grey_full, _band_edges(labels_full)


def _crack_layer(
    rng: np.random.Generator, shape: tuple[int, int], params: SynthParams
) -> np.ndarray:
    """Thin curvy cracks (uint8 darkness 0..255) running roughly along the lamellae."""
    height, width = shape
    layer = np.zeros(shape, dtype=np.uint8)
    step_px = 6.0
    for _ in range(params.crack_count):
        length_px = rng.uniform(0.25, 0.7) * max(height, width)
        n_steps = max(2, int(length_px / step_px))
        heading = math.radians(params.lamella_angle_deg + rng.normal(0.0, 25.0))
        # Direction wanders as a smoothed random walk: curvy, never zig-zag.
        turns = np.cumsum(rng.normal(0.0, 0.12, n_steps))
        turns = np.convolve(turns, np.ones(5) / 5.0, mode="same")
        headings = heading + turns
        xs = rng.uniform(0, width) + np.cumsum(step_px * np.cos(headings))
        ys = rng.uniform(0, height) - np.cumsum(step_px * np.sin(headings))
        points = np.stack([xs, ys], axis=1)
        points = np.round(points * 16).astype(np.int32).reshape(-1, 1, 2)
        thickness = 1 if rng.random() < 0.75 else 2
        cv2.polylines(
            layer, [points], False, int(rng.uniform(140, 255)), thickness, cv2.LINE_AA, shift=4
        )
    return layer


# --------------------------------------------------------------------------- objects

_HARMONICS = np.arange(2, 7, dtype=np.float64)


def _blob_polygons(
    rng: np.random.Generator,
    centres_xy: np.ndarray,
    radii_px: np.ndarray,
    aspects: np.ndarray,
    angles_deg: np.ndarray,
    roughness: float,
    n_vertices: int,
) -> np.ndarray:
    """A batch of closed rounded outlines, (count, n_vertices, 2) in x, y: v2's shape law.

    Each is an ellipse of semi-axes (radius, radius * aspect) whose radius wobbles by
    harmonics 2..6 with amplitudes roughness / h (`shapes.wobbly_ellipses` draws it).
    """
    amplitudes = roughness * rng.normal(0.0, 1.0, (len(radii_px), _HARMONICS.size)) / _HARMONICS
    return wobbly_ellipses(
        rng, centres_xy, radii_px, radii_px * aspects, angles_deg, _HARMONICS, amplitudes,
        n_vertices,
    )


def _shrink_to(
    outline: np.ndarray,
    centre_xy: np.ndarray,
    diameter_px: float,
    aspect: float,
    remaining_px: float,
) -> np.ndarray:
    """Scale an outline about its centre so its area is at most about `remaining_px`."""
    area_px = math.pi * diameter_px * diameter_px * aspect / 4.0
    if area_px <= remaining_px:
        return outline
    factor = math.sqrt(max(remaining_px, 1.0) / area_px)
    return centre_xy + (outline - centre_xy) * factor


_BATCH = 256


def _place_pores(
    rng: np.random.Generator, shape: tuple[int, int], params: SynthParams, splat_edges: np.ndarray
) -> tuple[np.ndarray, int]:
    """Pore mask (uint8 0/1) covering about `pore_fraction`; pores mostly cluster on boundaries.

    Pores in sprayed coatings gather at inter-splat boundaries and around unmelted
    particles, so most cluster centres are taken on splat boundary pixels.
    """
    height, width = shape
    pore_mask = np.zeros(shape, dtype=np.uint8)
    target_px = params.pore_fraction * height * width
    if target_px < 1.0:
        return pore_mask, 0
    mean_d = params.pore_diameter_px
    expected = target_px / (math.pi * mean_d * mean_d / 4.0 * 0.75)
    n_clusters = max(1, int(expected / 6.0))
    edge_index = np.flatnonzero(splat_edges)
    on_edges = rng.random(n_clusters) < 0.75
    centres = np.stack([rng.uniform(0, width, n_clusters), rng.uniform(0, height, n_clusters)], 1)
    if edge_index.size:
        picked = rng.choice(edge_index, n_clusters)
        centres[on_edges, 0] = (picked % width)[on_edges]
        centres[on_edges, 1] = (picked // width)[on_edges]
    spreads = rng.uniform(0.8, 2.5, n_clusters) * mean_d

    covered_px = 0
    count = 0
    # E[d^2] = mean^2 + sd^2 for the log-normal sizes; 0.775 = mean aspect ratio.
    mean_area_px = math.pi * (mean_d**2 + params.pore_diameter_sd_px**2) / 4.0 * 0.775
    max_batches = 8 + int(4 * expected / _BATCH)
    for _ in range(max_batches):
        if target_px - covered_px <= 0.5:
            break
        diameters = log_normal_diameters(rng, _BATCH, mean_d, params.pore_diameter_sd_px, 2.0)
        aspects = rng.uniform(0.55, 1.0, _BATCH)
        cluster = rng.integers(0, n_clusters, _BATCH)
        lone = rng.random(_BATCH) < 0.15
        centre_xy = centres[cluster] + rng.normal(0.0, 1.0, (_BATCH, 2)) * spreads[cluster, None]
        centre_xy[lone] = np.stack(
            [rng.uniform(0, width, _BATCH), rng.uniform(0, height, _BATCH)], 1
        )[lone]
        outlines = _blob_polygons(
            rng, centre_xy, diameters / 2.0, aspects, rng.uniform(0, 180, _BATCH), 0.6, 20
        )
        # Far from the target: draw a block that cannot overshoot (half what is left) and
        # count once; near it, pore by pore, shrinking the last one to fit.
        n_bulk = min(_BATCH, int(0.5 * (target_px - covered_px) / mean_area_px))
        if n_bulk >= 16:
            fill_outlines(pore_mask, outlines[:n_bulk])
            covered_px = cv2.countNonZero(pore_mask)
            count += n_bulk
            continue
        for i in range(_BATCH):
            remaining_px = target_px - covered_px
            if remaining_px <= 0.5:
                break
            outline = _shrink_to(outlines[i], centre_xy[i], diameters[i], aspects[i], remaining_px)
            fitted = fit_by_shrinking(
                outline,
                centre_xy[i],
                remaining_px,
                shape,
                0,
                lambda roi, patch: int(np.count_nonzero(patch > pore_mask[roi])),
            )
            if fitted is None or fitted[3] == 0:
                continue
            roi, patch, _, new_px = fitted
            pore_mask[roi] |= patch
            covered_px += new_px
            count += 1
    return pore_mask, count


@dataclass
class _Particles:
    body: np.ndarray  # uint8 0/1 union of particle bodies (pores not removed)
    brightness: np.ndarray  # float32 reflectance of the top particle at each pixel
    outline: np.ndarray  # uint8 0/1 visible particle outlines (where the dark rims go)
    count: int


def _place_particles(
    rng: np.random.Generator, shape: tuple[int, int], params: SynthParams, pore_mask: np.ndarray
) -> _Particles:
    """Paint particles until their visible (non-pore) area reaches `unmelted_fraction`."""
    height, width = shape
    body = np.zeros(shape, dtype=np.uint8)
    brightness = np.zeros(shape, dtype=np.float32)
    outline_layer = np.zeros(shape, dtype=np.uint8)
    target_px = params.unmelted_fraction * height * width
    covered_px = 0
    count = 0
    mean_d = params.particle_diameter_px
    expected = target_px / (math.pi * mean_d * mean_d / 4.0 * (1 - params.particle_flattening / 2))
    max_batches = 8 + int(6 * expected / _BATCH)

    def count_free(roi: tuple[slice, slice], patch: np.ndarray) -> int:
        return int(np.count_nonzero(patch.astype(bool) & (body[roi] == 0) & (pore_mask[roi] == 0)))

    for batch_index in range(max_batches):
        if target_px - covered_px <= 0.5:
            break
        crowded = batch_index >= max_batches // 2
        diameters = log_normal_diameters(rng, _BATCH, mean_d, params.particle_diameter_sd_px, 4.0)
        aspects = rng.uniform(1.0 - params.particle_flattening, 1.0, _BATCH)
        radii = diameters / 2.0
        # Centres may lie a little outside the frame: particles are cut by the field edge.
        centre_xy = np.stack(
            [
                rng.random(_BATCH) * (width + 0.6 * radii) - 0.3 * radii,
                rng.random(_BATCH) * (height + 0.6 * radii) - 0.3 * radii,
            ],
            1,
        )
        angles = params.lamella_angle_deg + rng.normal(0.0, 12.0, _BATCH)
        outlines = _blob_polygons(rng, centre_xy, radii, aspects, angles, 0.18, 40)
        levels = rng.uniform(0.86, 0.93, _BATCH)
        for i in range(_BATCH):
            remaining_px = target_px - covered_px
            if remaining_px <= 0.5:
                break
            outline = _shrink_to(outlines[i], centre_xy[i], diameters[i], aspects[i], remaining_px)
            fitted = fit_by_shrinking(outline, centre_xy[i], remaining_px, shape, 1, count_free)
            if fitted is None:
                continue
            roi, patch, local, new_px = fitted
            patch_area = int(np.count_nonzero(patch))
            if patch_area == 0:
                continue
            on_patch = patch.astype(bool)
            # Touching and slightly overlapping particles are common, big pile-ups are not;
            # pores sit mostly between particles (allowed inside only if space runs short).
            pore_px = int(np.count_nonzero(pore_mask[roi][on_patch]))
            min_new = 0.25 if crowded else 0.6
            if new_px < min_new * patch_area or (pore_px > 0.05 * patch_area and not crowded):
                continue
            inside = patch > 0
            body[roi] |= patch
            brightness[roi][inside] = levels[i]
            outline_roi = outline_layer[roi]
            outline_roi[inside] = 0
            cv2.polylines(outline_roi, [local], True, 1, 1, cv2.LINE_8, shift=4)
            covered_px += new_px
            count += 1
    if target_px - covered_px > 0.02 * target_px + 1:
        logger.warning("placed only %d of %d px of particles", covered_px, int(target_px))
    return _Particles(body=body, brightness=brightness, outline=outline_layer, count=count)


# --------------------------------------------------------------------------- imaging


def _compose(
    rng: np.random.Generator,
    shape: tuple[int, int],
    params: SynthParams,
    splat_grey: np.ndarray,
    splat_edges: np.ndarray,
    cracks: np.ndarray,
    particles: _Particles,
    pore_mask: np.ndarray,
) -> np.ndarray:
    """Lay texture, particles, boundaries, cracks and pores together: reflectance float32 ~0..1.

    Works in place on full-frame float32 arrays with OpenCV arithmetic where it helps: this
    is the bulk of a frame's cost (about 30 passes over the frame).
    """
    scale = params.particle_diameter_px / 40.0
    root_scale = math.sqrt(scale)
    angle = params.lamella_angle_deg
    # Matrix: splat greys with long streaks along the lamellae and a fine mottle.
    mottle = _smooth_noise(rng, shape, 1.6, 1.6)
    speckle = _fine_noise(rng, shape, 1.1)
    reflectance = splat_grey  # owned here: updated in place (dst=) to spare page faults
    cv2.scaleAdd(
        _smooth_noise(rng, shape, 10.0 * scale, 1.3, angle), 0.025, reflectance, dst=reflectance
    )
    cv2.scaleAdd(mottle, 0.03, reflectance, dst=reflectance)
    # Particles: grainy, mottled interiors of never-melted powder.
    particle_grey = cv2.scaleAdd(mottle, 0.06, particles.brightness, dst=particles.brightness)
    cv2.copyTo(particle_grey, particles.body, dst=reflectance)

    # Boundaries (between splats, around particles): dark bands of varying, ragged width.
    # Particle rims are always there; splat boundaries fade in and out.
    outside = 1 - particles.body
    lines = cv2.bitwise_or(cv2.bitwise_and(splat_edges, outside), particles.outline)
    distance_px = cv2.distanceTransform(1 - lines, cv2.DIST_L2, 3)
    variation = _smooth_noise(rng, shape, 22.0 * scale, 22.0 * scale)
    cv2.addWeighted(variation, 0.5, variation, 0.0, 0.5, dst=variation)
    cv2.min(cv2.max(variation, 0.0, dst=variation), 1.0, dst=variation)
    rim_zone = cv2.dilate(particles.outline, np.ones((5, 5), np.uint8)).astype(np.float32)
    cv2.max(variation, cv2.multiply(rim_zone, 0.75, dst=rim_zone), dst=variation)
    # darkness = clip((half_width - distance + 0.7 speckle) / 2 + 0.5, 0, 1) * depth, with
    # half_width = (0.4 + 2 v^3) sqrt(scale) px and depth = 0.3 + 0.35 v; the speckle makes
    # the edges ragged with the same pits that roughen the surface.
    darkness = cv2.pow(variation, 3)
    cv2.addWeighted(
        darkness, 1.0 * root_scale, distance_px, -0.5, 0.2 * root_scale + 0.5, dst=darkness
    )
    cv2.scaleAdd(speckle, 0.35, darkness, dst=darkness)
    cv2.min(cv2.max(darkness, 0.0, dst=darkness), 1.0, dst=darkness)
    depth = cv2.addWeighted(variation, 0.35, variation, 0.0, 0.3, dst=variation)
    cv2.multiply(darkness, depth, dst=darkness)
    visible_cracks = cv2.bitwise_and(cracks, cracks, mask=outside)
    cv2.scaleAdd(visible_cracks.astype(np.float32), 0.5 / 255.0, darkness, dst=darkness)
    cv2.min(darkness, 0.9, dst=darkness)
    cv2.subtract(reflectance, cv2.multiply(reflectance, darkness, dst=darkness), dst=reflectance)

    # Pores: near-black, a little uneven inside, with a soft dark halo around them.
    pores = pore_mask.astype(np.float32)
    halo = cv2.GaussianBlur(pores, (0, 0), max(1.0, params.pore_diameter_px / 3.0), dst=distance_px)
    cv2.addWeighted(halo, -0.375, halo, 0.0, 1.0, dst=halo)
    cv2.multiply(reflectance, cv2.max(halo, 0.75, dst=halo), dst=reflectance)
    pore_alpha = cv2.GaussianBlur(pores, (0, 0), 0.9, dst=pores)
    towards_pore = cv2.addWeighted(mottle, 0.015, reflectance, -1.0, 0.03, dst=mottle)
    cv2.add(reflectance, cv2.multiply(towards_pore, pore_alpha, dst=towards_pore), dst=reflectance)
    # Polishing relief and grain: fine speckle everywhere, dark-biased (a light surface with
    # dark pits): factor = 1 - 0.14 max(s + 0.4, 0) + 0.02 s = 0.944 - 0.14 max(s, -0.4) + 0.02 s.
    pits = cv2.addWeighted(cv2.max(speckle, -0.4), -0.14, speckle, 0.02, 0.944, dst=darkness)
    return cv2.multiply(reflectance, pits, dst=reflectance)


def _image(rng: np.random.Generator, reflectance: np.ndarray, params: SynthParams) -> np.ndarray:
    """Camera model: illumination, optical blur, response, read + shot noise, quantisation."""
    shape = reflectance.shape
    signal = cv2.multiply(
        reflectance, illumination(rng, shape, params.illumination_gradient), dst=reflectance
    )
    if params.blur_sigma_px > 0:
        signal = cv2.GaussianBlur(signal, (0, 0), params.blur_sigma_px, dst=signal)
    # Camera tone curve: lifts the mid-greys the way the real tile's histogram shows.
    grey = cv2.pow(cv2.max(signal, 0.0, dst=signal), _GAMMA, dst=signal)
    cv2.addWeighted(grey, _WHITE_GAIN, grey, 0.0, _BLACK_LEVEL, dst=grey)
    if params.noise_sd > 0:
        # Read noise everywhere plus shot noise growing with the signal: sd ~ sqrt(0.5 + g/255),
        # here its tangent 0.7 + 0.5 g/255 (within 3% over the range, one pass cheaper).
        noise = rng.standard_normal(shape, dtype=np.float32)
        noise_sd_map = cv2.addWeighted(
            grey, 0.5 * params.noise_sd / 255.0, grey, 0.0, 0.7 * params.noise_sd
        )
        cv2.add(grey, cv2.multiply(noise, noise_sd_map, dst=noise), dst=grey)
    if params.bit_depth == 16:
        grey *= 257.0
        np.clip(grey, 0, 65535, out=grey)
        image = np.rint(grey, out=grey).astype(np.uint16)
    else:
        np.clip(grey, 0, 255, out=grey)
        image = np.rint(grey, out=grey).astype(np.uint8)
    if params.enhance:
        clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
        image = clahe.apply(image)
    return image


# --------------------------------------------------------------------------- variety


def vary_params(sample_seed: int, params: SynthParams) -> SynthParams:
    """Draw one sample's parameters around `params` (training variety), clipped to valid ranges.

    What `write_dataset(vary=True)` draws for v2 frames (also used by `synth.compare`).

    >>> vary_params(3, SynthParams()) == vary_params(3, SynthParams())
    True
    """
    rng = np.random.default_rng([sample_seed, 0x5EED])

    def spread(value: float, rel_sd: float) -> float:
        return float(value * rng.lognormal(0.0, rel_sd))

    unmelted = min(0.6, spread(params.unmelted_fraction, 0.4))
    pores = min(0.2, spread(params.pore_fraction, 0.5))
    return dataclasses.replace(
        params,
        unmelted_fraction=unmelted,
        pore_fraction=min(pores, 0.85 - unmelted),
        particle_diameter_px=max(6.0, spread(params.particle_diameter_px, 0.25)),
        particle_diameter_sd_px=spread(params.particle_diameter_sd_px, 0.25),
        particle_flattening=float(np.clip(params.particle_flattening + rng.normal(0, 0.1), 0, 0.8)),
        pore_diameter_px=max(3.0, spread(params.pore_diameter_px, 0.3)),
        pore_diameter_sd_px=spread(params.pore_diameter_sd_px, 0.3),
        crack_count=int(rng.poisson(params.crack_count)),
        illumination_gradient=float(np.clip(spread(params.illumination_gradient, 0.5), 0, 0.8)),
        blur_sigma_px=spread(params.blur_sigma_px, 0.3),
        noise_sd=spread(params.noise_sd, 0.4),
        lamella_angle_deg=params.lamella_angle_deg + float(rng.normal(0.0, 10.0)),
    )

