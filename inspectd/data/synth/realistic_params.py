"""What a v3 frame looks like (`RealisticParams`), and wide per-frame draws for training sets.

Why wide: a segmenter trained on one look learns that look. Real coatings differ in
magnification (particle size in px), particle share, whether unmelted particles are brighter,
as bright as, or darker than the melted matrix, how strong the lamellae, oxide stringers,
outlines and grain boundaries are, and in how the picture was taken and stored (blur, noise,
uneven light, JPEG, 8/16 bit, raw camera output or already CLAHE-enhanced). `vary_realistic`
draws all of these per frame; the defaults of `RealisticParams` imitate the two real 256x256
tiles of the seed project (see `inspectd/data/synth/realistic.py`).

>>> params = vary_realistic(3, RealisticParams())
>>> 0.0 <= params.particle_fraction <= 0.65 and params.bit_depth == 8
True
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np

from inspectd.errors import ConfigError

logger = logging.getLogger(__name__)

# Largest particle share `vary_realistic` draws (the real tiles show about 30-60 %).
MAX_VARIED_PARTICLE_FRACTION = 0.65
# Share of draws `vary_realistic` takes near the base value (the rest span the whole range).
NEAR_BASE_SHARE = 0.8


@dataclass(frozen=True)
class RealisticParams:
    """One v3 frame's look; every field has a usable default (close to the real tiles).

    Sizes are in pixels of the generated frame (so they carry the scale, um/px), fractions
    are area fractions 0..1, strengths and darknesses are 0..1 (0 = absent).

    Scene:
    - `particle_fraction`: target share of unmelted particles (the truth is counted on the mask).
    - `particle_diameter_px` (+ `_sd_px`, log-normal): equivalent diameter of a particle.
    - `particle_flattening` f: minor/major axis ratio drawn from [1 - f, 1].
    - `particle_roughness`: how much an outline wobbles (0 = ellipse).
    - `particle_contrast`: particle reflectance relative to the matrix, -1..1: 1 = as bright
      as the brightest lamellae, 0 = the mean matrix grey, -1 = as dark as the dark lamellae
      (inverted: particles darker than the matrix).
    - `particle_grey_sd`: particle-to-particle spread of that grey (reflectance).
    - `grain_strength`, `grain_size_px`: the fine uniform grainy interior of a particle.
    - `grain_boundary_strength`, `grain_boundary_spacing_px`: dark boundaries between grains
      inside a particle (the large particles of tile c).
    - `outline_darkness`, `outline_width_px`: the dark rim around each particle.
    - `lamella_thickness_px`, `lamella_aspect` (length / thickness), `lamella_contrast`
      (bright vs dark lamellae), `lamella_dark_share` (share of dark streaks),
      `lamella_angle_deg` (0 = horizontal, positive rises to the right),
      `lamella_waviness` (0 = straight).
    - `matrix_grey`: mean reflectance of the melted matrix.
    - `stringer_strength`: thin dark oxide streaks along the lamellae.
    - `pore_fraction`, `pore_diameter_px` (+ `_sd_px`), `pore_clustering` (0 = scattered,
      1 = all in clusters).
    - `crack_count`: thin dark cracks through the matrix (class 0).

    Imaging:
    - `illumination_gradient`: brightness varies by about +-g/2 across the frame.
    - `blur_sigma_px`, `noise_sd` (8-bit grey levels, also for 16-bit frames),
      `noise_grain_px` (1 = independent pixels; more = the frame was enlarged after capture).
    - `black_level`, `white_level` (8-bit grey levels of reflectance 0 and 1) and `gamma`:
      the raw camera response; a narrow span is a low-contrast raw frame.
    - `jpeg_quality`: 0 = none, else the frame is JPEG-encoded and decoded at that quality
      (8-bit only).
    - `bit_depth`: 8 or 16 (16-bit is the 8-bit scale times 257, noise before quantisation).
    - `enhance`: apply CLAHE (`clahe_clip_limit`, `clahe_grid` x `clahe_grid` tiles), as the
      real tiles were; otherwise the raw camera frame.

    >>> RealisticParams(particle_fraction=0.5).particle_fraction
    0.5
    >>> RealisticParams(bit_depth=12)
    Traceback (most recent call last):
    ...
    inspectd.errors.ConfigError: invalid realistic synth parameters: bit_depth=12 must be 8 or 16
    """

    particle_fraction: float = 0.5
    particle_diameter_px: float = 55.0
    particle_diameter_sd_px: float = 22.0
    particle_flattening: float = 0.5
    particle_roughness: float = 0.15
    particle_contrast: float = 0.77
    particle_grey_sd: float = 0.03
    grain_strength: float = 0.063
    grain_size_px: float = 0.8
    grain_boundary_strength: float = 0.0
    grain_boundary_spacing_px: float = 30.0
    outline_darkness: float = 0.5
    outline_width_px: float = 2.5
    lamella_thickness_px: float = 3.9
    lamella_aspect: float = 4.5
    lamella_contrast: float = 0.46
    lamella_dark_share: float = 0.36
    lamella_angle_deg: float = 0.0
    lamella_waviness: float = 0.35
    matrix_grey: float = 0.5
    stringer_strength: float = 0.24
    pore_fraction: float = 0.02
    pore_diameter_px: float = 5.0
    pore_diameter_sd_px: float = 3.0
    pore_clustering: float = 0.6
    crack_count: int = 1
    illumination_gradient: float = 0.15
    blur_sigma_px: float = 0.67
    noise_sd: float = 3.4
    noise_grain_px: float = 1.63
    black_level: float = 15.0
    white_level: float = 235.0
    gamma: float = 1.04
    jpeg_quality: int = 0
    bit_depth: int = 8
    enhance: bool = True
    clahe_clip_limit: float = 0.92
    clahe_grid: int = 8

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            msg = "invalid realistic synth parameters: " + "; ".join(problems)
            raise ConfigError(msg)


def _problems(params: RealisticParams) -> list[str]:
    """Every reason `params` cannot be drawn, so one error names them all."""
    problems = []

    def in_range(name: str, low: float, high: float) -> None:
        value = getattr(params, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
            problems.append(f"{name}={value} not in [{low}, {high}]")

    for name in (
        "particle_roughness", "grain_boundary_strength", "outline_darkness", "lamella_contrast",
        "lamella_waviness", "stringer_strength", "pore_clustering", "illumination_gradient",
    ):
        in_range(name, 0.0, 1.0)
    in_range("particle_fraction", 0.0, 0.8)
    in_range("pore_fraction", 0.0, 0.3)
    in_range("particle_diameter_px", 4.0, 4096.0)
    in_range("particle_diameter_sd_px", 0.0, 4096.0)
    in_range("particle_flattening", 0.0, 0.9)
    in_range("particle_contrast", -1.0, 1.0)
    in_range("particle_grey_sd", 0.0, 0.3)
    in_range("grain_strength", 0.0, 0.5)
    in_range("grain_size_px", 0.3, 8.0)
    in_range("grain_boundary_spacing_px", 4.0, 1024.0)
    in_range("outline_width_px", 0.3, 16.0)
    in_range("lamella_thickness_px", 0.8, 64.0)
    in_range("lamella_aspect", 1.0, 40.0)
    in_range("lamella_dark_share", 0.05, 0.95)
    in_range("lamella_angle_deg", -180.0, 180.0)
    in_range("matrix_grey", 0.1, 0.9)
    in_range("pore_diameter_px", 1.5, 512.0)
    in_range("pore_diameter_sd_px", 0.0, 512.0)
    in_range("blur_sigma_px", 0.0, 8.0)
    in_range("noise_sd", 0.0, 40.0)
    in_range("noise_grain_px", 1.0, 8.0)
    in_range("black_level", 0.0, 250.0)
    in_range("white_level", 5.0, 255.0)
    in_range("gamma", 0.3, 3.0)
    in_range("clahe_clip_limit", 0.1, 40.0)
    if params.particle_fraction + params.pore_fraction > 0.9:
        problems.append("particle_fraction + pore_fraction > 0.9 leaves no matrix")
    if params.white_level - params.black_level < 5:
        problems.append(
            f"white_level={params.white_level} must be at least 5 above black_level={params.black_level}"
        )
    if not isinstance(params.crack_count, int) or params.crack_count < 0:
        problems.append(f"crack_count={params.crack_count} must be an integer >= 0")
    if params.bit_depth not in (8, 16):
        problems.append(f"bit_depth={params.bit_depth} must be 8 or 16")
    if not isinstance(params.jpeg_quality, int) or not 0 <= params.jpeg_quality <= 100:
        problems.append(f"jpeg_quality={params.jpeg_quality} must be 0 (none) or 1..100")
    elif params.jpeg_quality and params.bit_depth != 8:
        problems.append("jpeg_quality applies to 8-bit frames only (JPEG has no 16-bit mode here)")
    if not isinstance(params.clahe_grid, int) or not 1 <= params.clahe_grid <= 64:
        problems.append(f"clahe_grid={params.clahe_grid} must be an integer in [1, 64]")
    return problems


def vary_realistic(
    seed: int, base: RealisticParams, enhance: bool | None = None
) -> RealisticParams:
    """Draw one frame's parameters over the whole realistic range (domain randomisation).

    Every parameter is drawn on its own: with probability `NEAR_BASE_SHARE` (0.7) close to
    `base` (a normal spread around it), otherwise uniformly over its whole wide range. So a
    training set covers the range (each parameter is extreme in about 30 % of frames) while
    a typical frame still looks like a real micrograph (most of its parameters near `base`,
    whose defaults imitate the real tiles). Ranges: particle share 0..0.65, size 12..130 px,
    flattening 0..0.7, brightness relation brighter (70 %) / about equal (15 %) / inverted,
    darker than the matrix (15 %), grain 0.01..0.15, grain boundaries in 40 % of frames,
    outline darkness 0..0.9 and width 0.8..5 px, lamella thickness 1.5..10 px, aspect
    1.5..12, contrast 0.15..0.95, any direction in 25 % of frames (else within about
    +-15 deg of `base`), waviness 0..1, stringers 0..0.9, pores 0..12 % of 1.5..16 px,
    0..4 cracks, blur 0..2 px, noise 0.5..10 levels, grains 1..2.5 px, illumination
    0..0.5, raw response from high-contrast to low-contrast, JPEG (quality 25..95) in 35 %
    of 8-bit frames, CLAHE clip 0.4..2.5. Kept from `base`: `bit_depth` (a data set has one
    format) and the CLAHE grid. `enhance=None` draws enhanced vs raw output (half each);
    True/False forces it.

    >>> a, b = vary_realistic(1, RealisticParams()), vary_realistic(1, RealisticParams())
    >>> a == b, vary_realistic(2, RealisticParams()) == a
    (True, False)
    """
    rng = np.random.default_rng([int(seed), 0x3EA1])

    def draw(value: float, low: float, high: float, sd_share: float = 0.08, log: bool = False) -> float:
        """Near `value` (normal, sd = sd_share of the range) or, else, uniform over the range."""
        if log:
            return math.exp(draw(math.log(max(value, 1e-9)), math.log(low), math.log(high), sd_share))
        if rng.random() < NEAR_BASE_SHARE:
            return float(np.clip(rng.normal(value, sd_share * (high - low)), low, high))
        return float(rng.uniform(low, high))

    particle_fraction = draw(base.particle_fraction, 0.0, MAX_VARIED_PARTICLE_FRACTION, 0.1)
    diameter_px = draw(base.particle_diameter_px, 12.0, 130.0, 0.08, log=True)
    relation = rng.random()
    if relation < 0.7:
        contrast = draw(base.particle_contrast, 0.3, 1.0, 0.12)
    elif relation < 0.85:
        contrast = float(rng.uniform(-0.15, 0.15))
    else:
        contrast = float(rng.uniform(-1.0, -0.3))
    if rng.random() < 0.75:
        angle_deg = base.lamella_angle_deg + float(rng.normal(0.0, 7.5))
    else:
        angle_deg = float(rng.uniform(-90.0, 90.0))
    angle_deg = (angle_deg + 180.0) % 360.0 - 180.0
    pore_fraction = 0.0 if rng.random() < 0.1 else draw(base.pore_fraction, 0.002, 0.12, 0.1, log=True)
    jpeg_quality = 0
    if base.bit_depth == 8 and rng.random() < 0.35:
        jpeg_quality = int(rng.integers(25, 96))
    black_level = draw(base.black_level, 0.0, 80.0)
    white_level = float(np.clip(draw(base.white_level - black_level, 60.0, 250.0) + black_level, black_level + 60.0, 255.0))
    return dataclasses.replace(
        base,
        particle_fraction=particle_fraction,
        particle_diameter_px=diameter_px,
        particle_diameter_sd_px=diameter_px * draw(base.particle_diameter_sd_px / base.particle_diameter_px, 0.1, 0.5),
        particle_flattening=draw(base.particle_flattening, 0.0, 0.7),
        particle_roughness=draw(base.particle_roughness, 0.03, 0.3),
        particle_contrast=contrast,
        particle_grey_sd=draw(base.particle_grey_sd, 0.0, 0.08),
        grain_strength=draw(base.grain_strength, 0.01, 0.15, log=True),
        grain_size_px=draw(base.grain_size_px, 0.5, 1.6),
        grain_boundary_strength=0.0 if rng.random() < 0.6 else float(rng.uniform(0.1, 0.8)),
        grain_boundary_spacing_px=max(4.0, diameter_px * float(rng.uniform(0.25, 0.8))),
        outline_darkness=draw(base.outline_darkness, 0.0, 0.9),
        outline_width_px=draw(base.outline_width_px, 0.8, 5.0),
        lamella_thickness_px=draw(base.lamella_thickness_px, 1.5, 10.0, log=True),
        lamella_aspect=draw(base.lamella_aspect, 1.5, 12.0),
        lamella_contrast=draw(base.lamella_contrast, 0.15, 0.95),
        lamella_dark_share=draw(base.lamella_dark_share, 0.2, 0.7),
        lamella_angle_deg=angle_deg,
        lamella_waviness=draw(base.lamella_waviness, 0.0, 1.0),
        matrix_grey=draw(base.matrix_grey, 0.35, 0.65),
        stringer_strength=draw(base.stringer_strength, 0.0, 0.9),
        pore_fraction=min(pore_fraction, 0.9 - particle_fraction),
        pore_diameter_px=draw(base.pore_diameter_px, 1.5, 16.0, log=True),
        pore_diameter_sd_px=draw(base.pore_diameter_sd_px, 0.5, 6.0),
        pore_clustering=draw(base.pore_clustering, 0.0, 1.0),
        crack_count=int(rng.integers(0, 5)) if rng.random() >= NEAR_BASE_SHARE else base.crack_count,
        illumination_gradient=draw(base.illumination_gradient, 0.0, 0.5),
        blur_sigma_px=draw(base.blur_sigma_px, 0.0, 2.0),
        noise_sd=draw(base.noise_sd, 0.5, 10.0, log=True),
        noise_grain_px=draw(base.noise_grain_px, 1.0, 2.5),
        black_level=black_level,
        white_level=white_level,
        gamma=draw(base.gamma, 0.6, 1.4),
        jpeg_quality=jpeg_quality,
        enhance=bool(rng.random() < 0.5) if enhance is None else bool(enhance),
        clahe_clip_limit=draw(base.clahe_clip_limit, 0.4, 2.5, log=True),
    )
