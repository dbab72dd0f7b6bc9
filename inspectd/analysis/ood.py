"""Is this frame like the ones the engine was built for? Frame statistics against a training envelope.

Why: an engine answers for any picture. Pure noise, a photograph, an inverted micrograph
(a camera set to negative, a mis-exported file) all come out as a mask with plausible
fractions, and a plausible porosity is a PASS. So every analysed frame gets a handful of
cheap statistics of what the engine sees, compared with the range those statistics took
over the frames the engine was fitted on (its *envelope*); a frame outside is flagged
`out_of_distribution` and, by default (`trust.ood.action: error`), becomes an ERROR verdict.

Which frame: the enhanced one (after `inspectd.analysis.preprocess.enhance`), the engine's input,
for everything but the histogram's shape. CLAHE removes what a camera changes (gain,
exposure, black level), so one envelope serves raw camera frames and already-enhanced
exports alike. The shape of the grey histogram, though, is what tells an inverted frame, and
CLAHE can erase it: a small 16-bit frame comes out equalised almost flat (skewness -0.02
where the same scene at 8 bits gives -0.99), and then an inverted one looks the same. The
raw frame keeps it, and its shape does not depend on the camera's gain and offset. So the
two `raw_` statistics come from the frame as decoded, the others from the enhanced frame.

The statistics (`FEATURES`; grey levels as fractions of full scale, 0..1; dimensionless):
- `raw_tail_ratio`: log2 of (p50 - p2) / (p98 - p50) of the raw grey levels, and
  `raw_skewness`. A coating's micrograph has a long dark tail (pores, cracks, splat
  boundaries) and a short bright one: both say "dark tail" (> 0, resp. < 0); inverted, both flip.
- `grey_p50`: median enhanced grey level; micrographs lean bright (matrix and particles).
- `log2_gradient_energy`: log2 of the mean squared central-difference gradient over the grey
  variance (0 for white noise, about -9 for a smooth photograph; micrographs -3.7..-1.4).
- `gradient_coherence`: anisotropy of the frame's summed structure tensor, 0 (no preferred
  direction) .. 1 (one direction, e.g. a ramp); lamellae make micrographs mildly directional.
- `variance_kept_4px`, `variance_kept_16px`: share of the grey variance left after a 4 and
  a 16 px box mean: the spectrum's slope in two numbers (white noise ~1/16 and ~1/256, a
  smooth scene ~1).
- `dark_detail_fraction`: black top-hat / (black + white top-hat) with a 5 px disc: the
  share of small-scale contrast that is darker than its surroundings. Pores, cracks and
  boundaries are small dark details, so micrographs sit above 0.5; an inversion maps the
  value to about 1 minus itself.
- `bright_line_excess`: (bright - dark) / (bright + dark) thin-line energy (Hessian ridges
  and valleys at 2 px, squared, so the strongest lines count most), floored at -0.07.

Why `bright_line_excess`, and why the floor: the statistics above are about the whole grey
histogram or all the small-scale contrast, and a training set that also draws particles as
dark as or darker than the matrix (the v3 generator, `particle_contrast` < 0, like some real
coatings) spans both signs of them: its envelope then holds an inverted micrograph (measured
with v3 frames added: distances 0.7-1.1 for inverted real tiles and v3/v2 frames). What stays
dark in every coating micrograph, whatever the particles do, are the thin lines: particle
outlines, cracks, oxide stringers, splat boundaries; an inverted one has them white. Weighted by
their squared strength, the strongest lines of v3, v2 and real frames lean dark (measured:
at most +0.03 over the 390 frames of the shipped envelopes, at most +0.05 over 410 held-out
and freshly drawn v3/v2 frames; the real tiles -0.03..-0.10), an inverted micrograph's lean
bright (+0.08 and +0.09 for the inverted real tiles, +0.10..+0.21 for inverted synthetic
frames). How dark they lean says nothing more, so every frame below the floor reads the floor:
the envelope's width then comes from the training frames nearest to bright lines (dark
particles or thin bright lamellae in a dark-streaked matrix), not from the darkest-lined
ones, and an inverted micrograph lies beyond it (distance 1.2-2.2). Tried and dropped, none
separating the inverted real tiles from those training frames: tail ratios of a high-pass
image, top-hats restricted to the darkest/brightest 1-2 % of pixels, how clustered those
pixels are, blob curvature at the tails, and the curvature across the strongest edges (thin
bright lamellae mimic a bright particle outline there).

Cost: the histogram is taken on a strided copy (about 2^18 pixels); the texture statistics
on five patches of 256x256 px (the corners and the centre) at the frame's own resolution
(magnification is part of what the engine learned, so no resizing): about 4 ms per 2560x1920
frame on two busy cores (7 ms before the kernels below). The grey spread, gradient tensor and
box-blurred spreads of a patch come from one `kernels.texture.patch_texture` pass (~0.15 ms
per patch where numpy temporaries and OpenCV calls took ~0.45), and the lines' eigenvalue
arithmetic from one `kernels.texture.line_energies` pass after OpenCV's blur and Sobels. The
values equal the former computation's (`_texture_statistics_numpy`, kept as the reference)
to ~1e-7 relative (tests allow 1e-6), so the envelopes fitted with it stay valid.

The envelope (`fit_envelope`): per statistic the median and the fitted [min, max] widened by
`margin` x (max - min) on each side (with a small floor for statistics that barely varied).
A frame's distance is the largest over the statistics of its deviation from the median in
units of the median-to-bound width: 1.0 lies on the bound, so the envelope's threshold is
1.0 and `assess` names every statistic beyond it. Envelopes are JSON: the classical engine's
ships as `inspectd/models/classical-envelope.json`, a U-Net's lives in its model card
(`envelope`), both built by `scripts/build_envelopes.py`.

Example:
    >>> import numpy as np
    >>> frames = [np.random.default_rng(seed).integers(0, 256, (96, 128), dtype=np.uint8) for seed in range(4)]
    >>> envelope = fit_envelope([frame_statistics(frame) for frame in frames])
    >>> abs(frame_statistics(frames[0])["log2_gradient_energy"]) < 0.1  # white noise: gradient energy = variance
    True
    >>> assess(frame_statistics(frames[1]), envelope).out_of_distribution
    False
    >>> check = assess(frame_statistics(np.full((96, 128), 128, np.uint8)), envelope)
    >>> check.out_of_distribution, check.reasons[0].split()[0]
    (True, 'log2_gradient_energy')
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from inspectd.errors import ConfigError
from kernels.texture import line_energies, patch_texture

logger = logging.getLogger(__name__)

ENVELOPE_FORMAT = "inspectd-ood-envelope/1"
# Bump when `frame_statistics` changes what a value means: envelopes record it and are refused
# by a different version (rebuild them with scripts/build_envelopes.py).
STATISTICS_VERSION = "2"
FEATURES = (
    "raw_tail_ratio", "raw_skewness", "grey_p50",
    "log2_gradient_energy", "gradient_coherence",
    "variance_kept_4px", "variance_kept_16px",
    "dark_detail_fraction", "bright_line_excess",
)
DEFAULT_MARGIN = 0.3
# A statistic that barely varied over the fitted frames still gets this half-width (its own units).
MIN_HALF_WIDTH = 0.02
THRESHOLD = 1.0

_HISTOGRAM_SAMPLE_PX = 1 << 18
_PATCH_PX = 256
_TOPHAT_DISC = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
# log2 of 0 is no number: a flat or perfectly smooth frame gets this much gradient energy.
_MIN_GRADIENT_ENERGY = 2.0 ** -20
# Below this grey variance (fractions of full scale, squared) a patch is flat: no texture to judge.
_FLAT_VARIANCE = 1e-7
# `bright_line_excess`: the scale of the lines (px; outlines, cracks, stringers are 1-5 px wide),
# its Gaussian kernel cut at +-3 sigma (OpenCV's default for float images, +-4, costs a third
# more for the same values to a per mille), and the floor.
_LINE_SIGMA_PX = 2.0
_LINE_KERNEL = (2 * math.ceil(3 * _LINE_SIGMA_PX) + 1,) * 2
_LINE_FLOOR = -0.07


class OodCheck(NamedTuple):
    """`assess`'s answer; unpacks as (out_of_distribution, distance, reasons)."""

    out_of_distribution: bool
    distance: float
    reasons: list[str]


def frame_statistics(enhanced: np.ndarray, raw: np.ndarray | None = None) -> dict[str, float]:
    """The `FEATURES` of a 2-D uint8/uint16 enhanced frame and the frame it came from, as plain floats.

    `raw` is the frame as decoded, before `preprocess.enhance` (the `raw_` statistics); leave
    it out for a frame that was not enhanced (it is then the enhanced frame itself).

    >>> stats = frame_statistics(np.tile(np.arange(256, dtype=np.uint8), (64, 1)))
    >>> round(stats["grey_p50"], 2), round(stats["raw_skewness"], 2), round(stats["gradient_coherence"], 2)
    (0.5, 0.0, 1.0)
    """
    return _frame_statistics(enhanced, raw, _texture_statistics)


def _frame_statistics(enhanced: np.ndarray, raw: np.ndarray | None, texture_statistics: Any) -> dict[str, float]:
    """`frame_statistics` with the texture statistics taken by `texture_statistics` (the kernel's
    or the former numpy/OpenCV ones, `_texture_statistics_numpy`, which tests compare with)."""
    raw = enhanced if raw is None else raw
    for name, image in (("enhanced", enhanced), ("raw", raw)):
        if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16) or min(image.shape) < 1:
            msg = f"frame_statistics needs a non-empty 2-D uint8 or uint16 {name} frame, got {image.dtype} {image.shape}"
            raise ValueError(msg)
    stats = _histogram_shape(raw)
    stats["grey_p50"] = _percentiles(_histogram(_to_uint8(_sample(enhanced))), (0.5,))[0]
    stats.update(texture_statistics(enhanced))
    return stats


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return pixels if pixels.dtype == np.uint8 else (pixels >> 8).astype(np.uint8)


def _sample(image: np.ndarray) -> np.ndarray:
    """A strided view of about `_HISTOGRAM_SAMPLE_PX` pixels: the same histogram, in expectation, at a fraction of the cost."""
    height, width = image.shape
    step = max(1, math.ceil(math.sqrt(height * width / _HISTOGRAM_SAMPLE_PX)))
    return image[::step, ::step]


def _histogram(pixels: np.ndarray) -> np.ndarray:
    """Probability of each grey level (256 or 65536 of them): uint16 keeps every level, so a
    12-bit camera's frame in a 16-bit container is not reduced to 16 levels."""
    counts = np.bincount(pixels.ravel(), minlength=256 if pixels.dtype == np.uint8 else 65536)
    return counts / counts.sum()


def _percentiles(p: np.ndarray, quantiles: tuple[float, ...]) -> list[float]:
    """Grey levels (fractions of full scale) below which the given shares of the pixels lie."""
    cdf = np.cumsum(p)
    return [float(np.searchsorted(cdf, q) / (p.size - 1)) for q in quantiles]


def _histogram_shape(raw: np.ndarray) -> dict[str, float]:
    """Skewness and log2 tail ratio of the raw frame's grey levels: both unchanged by the camera's
    gain and offset (x -> a x + b, a > 0), both change sign when the frame is inverted."""
    p = _histogram(_sample(raw))
    levels = np.arange(p.size) / (p.size - 1)
    # Plain sums, not `p @ levels`: a BLAS dot of 65536 elements took 8 ms with the BLAS
    # threads competing for two busy cores, the sums take 0.2 ms.
    mean = float((p * levels).sum())
    deviation = levels - mean
    variance = float((p * deviation * deviation).sum())
    skewness = float((p * deviation * deviation * deviation).sum()) / variance ** 1.5 if variance > _FLAT_VARIANCE else 0.0
    p02, p50, p98 = _percentiles(p, (0.02, 0.5, 0.98))
    floor = 1.0 / 255.0  # one 8-bit level: a flat frame's tails have ratio 1
    tail_ratio = math.log2(max(p50 - p02, floor) / max(p98 - p50, floor))
    return {"raw_tail_ratio": tail_ratio, "raw_skewness": skewness}


def _patch_origins(height: int, width: int, side_y: int, side_x: int) -> list[tuple[int, int]]:
    """Top-left corners of the patches: the four corners and the centre of the frame (fewer when it is small)."""
    def at(length: int, side: int, where: int) -> int:  # where: 0 start, 1 middle, 2 end
        return (length - side) * where // 2

    spots = ((0, 0), (0, 2), (1, 1), (2, 0), (2, 2))
    return sorted({(at(height, side_y, row), at(width, side_x, col)) for row, col in spots})


def _variance(image: np.ndarray) -> float:
    return float(cv2.meanStdDev(image)[1][0, 0]) ** 2


def _texture_statistics(enhanced: np.ndarray) -> dict[str, float]:
    """The texture `FEATURES` over the patches: grey spread, gradients and box-blurred spreads from
    one `kernels.texture.patch_texture` pass per patch, top-hats and lines from OpenCV."""
    height, width = enhanced.shape
    side_y, side_x = min(height, _PATCH_PX), min(width, _PATCH_PX)
    tensor = np.zeros(3)  # sums of gx^2, gy^2, gx*gy over every patch
    energies, kept_4, kept_16 = [], [], []
    black_hat = white_hat = 0.0
    bright_lines = dark_lines = 0.0
    for y, x in _patch_origins(height, width, side_y, side_x):
        bright, dark = _line_energies(enhanced[y:y + side_y, x:x + side_x])
        bright_lines, dark_lines = bright_lines + bright, dark_lines + dark
        patch8 = _to_uint8(enhanced[y:y + side_y, x:x + side_x])
        black_hat += float(cv2.morphologyEx(patch8, cv2.MORPH_BLACKHAT, _TOPHAT_DISC).sum(dtype=np.float64))
        white_hat += float(cv2.morphologyEx(patch8, cv2.MORPH_TOPHAT, _TOPHAT_DISC).sum(dtype=np.float64))
        texture = patch_texture(patch8)
        variance = texture.std ** 2
        if variance < _FLAT_VARIANCE or min(patch8.shape) < 3:
            continue
        tensor += (texture.gxx, texture.gyy, texture.gxy)
        energies.append((texture.gxx + texture.gyy) / variance)
        kept_4.append(texture.std_box4 ** 2 / variance)
        kept_16.append(texture.std_box16 ** 2 / variance)
    return _texture_features(tensor, energies, kept_4, kept_16, black_hat + white_hat, black_hat,
                             bright_lines, dark_lines)


def _texture_features(tensor: np.ndarray, energies: list[float], kept_4: list[float], kept_16: list[float],
                      hats: float, black_hat: float, bright_lines: float, dark_lines: float) -> dict[str, float]:
    trace = tensor[0] + tensor[1]
    coherence = math.sqrt((tensor[0] - tensor[1]) ** 2 + 4.0 * tensor[2] ** 2) / trace if trace > 0 else 0.0
    lines = bright_lines + dark_lines
    return {
        # A flat frame: no gradient, all variance "kept" at every scale (a perfectly smooth scene).
        "log2_gradient_energy": math.log2(max(float(np.median(energies)), _MIN_GRADIENT_ENERGY)) if energies
        else math.log2(_MIN_GRADIENT_ENERGY),
        "gradient_coherence": float(coherence),
        "variance_kept_4px": float(np.median(kept_4)) if kept_4 else 1.0,
        "variance_kept_16px": float(np.median(kept_16)) if kept_16 else 1.0,
        "dark_detail_fraction": black_hat / hats if hats > 0 else 0.5,
        "bright_line_excess": max((bright_lines - dark_lines) / lines, _LINE_FLOOR) if lines > 0 else 0.0,
    }


def _texture_statistics_numpy(enhanced: np.ndarray) -> dict[str, float]:
    """`_texture_statistics` as computed before the kernel, with numpy arrays and OpenCV calls per
    patch: kept as the reference the kernel's values are checked against (equal to ~1e-7 relative)."""
    height, width = enhanced.shape
    side_y, side_x = min(height, _PATCH_PX), min(width, _PATCH_PX)
    tensor = np.zeros(3)  # sums of gx^2, gy^2, gx*gy over every patch
    energies, kept_4, kept_16 = [], [], []
    black_hat = white_hat = 0.0
    bright_lines = dark_lines = 0.0
    for y, x in _patch_origins(height, width, side_y, side_x):
        bright, dark = _line_energies_opencv(enhanced[y:y + side_y, x:x + side_x])
        bright_lines, dark_lines = bright_lines + bright, dark_lines + dark
        patch8 = _to_uint8(enhanced[y:y + side_y, x:x + side_x])
        grey = patch8.astype(np.float32) * np.float32(1.0 / 255.0)
        variance = _variance(grey)
        black_hat += float(cv2.morphologyEx(patch8, cv2.MORPH_BLACKHAT, _TOPHAT_DISC).sum(dtype=np.float64))
        white_hat += float(cv2.morphologyEx(patch8, cv2.MORPH_TOPHAT, _TOPHAT_DISC).sum(dtype=np.float64))
        if variance < _FLAT_VARIANCE or min(grey.shape) < 3:
            continue
        gx = (grey[1:-1, 2:] - grey[1:-1, :-2]) * np.float32(0.5)
        gy = (grey[2:, 1:-1] - grey[:-2, 1:-1]) * np.float32(0.5)
        gxx, gyy = float(np.mean(gx * gx)), float(np.mean(gy * gy))
        tensor += (gxx, gyy, float(np.mean(gx * gy)))
        energies.append((gxx + gyy) / variance)
        kept_4.append(_variance(cv2.blur(grey, (4, 4))) / variance)
        kept_16.append(_variance(cv2.blur(grey, (16, 16))) / variance)
    return _texture_features(tensor, energies, kept_4, kept_16, black_hat + white_hat, black_hat,
                             bright_lines, dark_lines)


def _line_energies(patch: np.ndarray) -> tuple[float, float]:
    """(bright-line, dark-line) energy of one patch: what `bright_line_excess` is made of.

    The Hessian at `_LINE_SIGMA_PX` has eigenvalues (trace +- root) / 2. A line is where the
    curvature across it is strong and the one along it weak, which comes to min(trace, root)
    for a dark line (a valley) and min(-trace, root) for a bright one (a ridge); a round blob
    or a flat area scores 0 on both. Squared and summed, the strongest lines dominate.
    """
    grey = patch.astype(np.float32)
    if min(grey.shape) < 3:
        return 0.0, 0.0
    fine = cv2.GaussianBlur(grey, _LINE_KERNEL, _LINE_SIGMA_PX)
    dxx = cv2.Sobel(fine, cv2.CV_32F, 2, 0, ksize=3)
    dyy = cv2.Sobel(fine, cv2.CV_32F, 0, 2, ksize=3)
    dxy = cv2.Sobel(fine, cv2.CV_32F, 1, 1, ksize=3)
    return line_energies(dxx, dyy, dxy)


def _line_energies_opencv(patch: np.ndarray) -> tuple[float, float]:
    """`_line_energies` with the eigenvalue arithmetic in OpenCV calls, as before `kernels.texture.line_energies`
    (the reference `_texture_statistics_numpy` uses)."""
    grey = patch.astype(np.float32)
    if min(grey.shape) < 3:
        return 0.0, 0.0
    fine = cv2.GaussianBlur(grey, _LINE_KERNEL, _LINE_SIGMA_PX)
    dxx = cv2.Sobel(fine, cv2.CV_32F, 2, 0, ksize=3)
    dyy = cv2.Sobel(fine, cv2.CV_32F, 0, 2, ksize=3)
    dxy = cv2.Sobel(fine, cv2.CV_32F, 1, 1, ksize=3)
    trace = cv2.add(dxx, dyy)
    root = cv2.magnitude(cv2.subtract(dxx, dyy), cv2.add(dxy, dxy))
    dark_line = cv2.max(cv2.min(trace, root), 0.0)
    bright_line = cv2.max(cv2.min(cv2.multiply(trace, -1.0), root), 0.0)
    return cv2.norm(bright_line, cv2.NORM_L2SQR), cv2.norm(dark_line, cv2.NORM_L2SQR)


def fit_envelope(statistics: Iterable[Mapping[str, float]], *, margin: float = DEFAULT_MARGIN,
                 sources: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON-able envelope of frames' `frame_statistics` (see the module docstring for the bounds).

    `sources` says in words what the frames were (recorded, for whoever rebuilds it).

    >>> envelope = fit_envelope([{name: 0.0 for name in FEATURES}, {name: 1.0 for name in FEATURES}])
    >>> envelope["features"]["grey_p50"]["lower"], envelope["features"]["grey_p50"]["upper"], envelope["n_frames"]
    (-0.3, 1.3, 2)
    """
    rows = [dict(row) for row in statistics]
    if not rows:
        msg = "fit_envelope needs the statistics of at least one frame"
        raise ValueError(msg)
    features: dict[str, dict[str, float]] = {}
    for name in FEATURES:
        values = np.array([row[name] for row in rows], dtype=np.float64)
        low, high, centre = float(values.min()), float(values.max()), float(np.median(values))
        widen = margin * (high - low)
        lower = min(low - widen, centre - MIN_HALF_WIDTH)
        upper = max(high + widen, centre + MIN_HALF_WIDTH)
        features[name] = {"centre": centre, "lower": lower, "upper": upper, "fit_min": low, "fit_max": high}
    return {
        "format": ENVELOPE_FORMAT,
        "statistics_version": STATISTICS_VERSION,
        "created_utc": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "n_frames": len(rows),
        "margin": margin,
        "threshold": THRESHOLD,
        "sources": list(sources),
        "features": features,
    }


def assess(statistics: Mapping[str, float], envelope: Mapping[str, Any]) -> OodCheck:
    """Compare one frame's statistics with an envelope: (flagged?, distance, what lies outside).

    distance: the largest deviation from a statistic's centre in units of its centre-to-bound
    width (1.0 on the bound); flagged when above the envelope's threshold.

    >>> envelope = fit_envelope([{name: 0.0 for name in FEATURES}, {name: 1.0 for name in FEATURES}])
    >>> assess({**{name: 0.5 for name in FEATURES}, "raw_skewness": 2.1}, envelope)
    OodCheck(out_of_distribution=True, distance=2.0, reasons=['raw_skewness 2.1 above [-0.3, 1.3]'])
    """
    threshold = float(envelope.get("threshold", THRESHOLD))
    distance = 0.0
    reasons = []
    for name, bounds in envelope["features"].items():
        value = float(statistics[name])
        centre, lower, upper = bounds["centre"], bounds["lower"], bounds["upper"]
        if not math.isfinite(value):
            deviation = math.inf
        elif value >= centre:
            deviation = (value - centre) / max(upper - centre, 1e-12)
        else:
            deviation = (centre - value) / max(centre - lower, 1e-12)
        distance = max(distance, deviation)
        if deviation > threshold:
            side = "above" if value >= centre else "below"
            reasons.append(f"{name} {value:.3g} {side} [{lower:.3g}, {upper:.3g}]")
    distance = distance if math.isfinite(distance) else 1e9
    return OodCheck(distance > threshold, round(distance, 4), reasons)


def check_envelope(envelope: Any, origin: str) -> dict[str, Any]:
    """The envelope if it is one this version can use, else ConfigError naming `origin` and the fix.

    >>> check_envelope({"format": "x"}, "card.json")
    Traceback (most recent call last):
    ...
    inspectd.errors.ConfigError: card.json: not an out-of-distribution envelope (format 'x', expected 'inspectd-ood-envelope/1')
    """
    if not isinstance(envelope, Mapping) or envelope.get("format") != ENVELOPE_FORMAT:
        found = envelope.get("format") if isinstance(envelope, Mapping) else type(envelope).__name__
        msg = f"{origin}: not an out-of-distribution envelope (format {found!r}, expected {ENVELOPE_FORMAT!r})"
        raise ConfigError(msg)
    version = envelope.get("statistics_version")
    missing = [name for name in FEATURES if name not in envelope.get("features", {})]
    if version != STATISTICS_VERSION or missing:
        msg = (f"{origin}: envelope of frame statistics version {version!r} (this inspectd computes version "
               f"{STATISTICS_VERSION!r}{'; missing ' + ', '.join(missing) if missing else ''}); rebuild it with "
               "scripts/build_envelopes.py")
        raise ConfigError(msg)
    return dict(envelope)


def load_envelope(path: str | Path) -> dict[str, Any]:
    """An envelope JSON file, or the `envelope` section of a model card; ConfigError if unusable."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        msg = f"{path}: cannot read the out-of-distribution envelope: {exc}"
        raise ConfigError(msg) from exc
    if isinstance(document, Mapping) and "envelope" in document and document.get("format") != ENVELOPE_FORMAT:
        document = document["envelope"]
        if document is None:
            msg = f"{path}: this model card has no out-of-distribution envelope; rebuild it with scripts/build_envelopes.py"
            raise ConfigError(msg)
    return check_envelope(document, str(path))
