"""The classical engine (the seed's traditional path): smooth, threshold, morphology, pores.

Steps, on the enhanced frame (uint8 or uint16). Grey levels are in the frame's own
units: Otsu, minimum-error and `pore_level` (a fraction of the Otsu level) scale by
themselves, while `fixed_threshold` and `adaptive_offset` are given in the frame's grey
levels (x257 for a 16-bit frame of the same scene).

1. Smooth with a Gaussian of `smooth_sigma_px` (default 0.5: single-pixel noise only).
2. Bright = unmelted candidate, `kernels.threshold(smoothed, t)`, t by `threshold`:
   `minimum_error` (default, `kernels.minimum_error_threshold`), `otsu`
   (`kernels.otsu_threshold`), `fixed`, `adaptive` (`kernels.adaptive_threshold`: brighter
   than the local mean minus `adaptive_offset`), `otsu_upper` (a second Otsu over the
   pixels above the first).
3. Morphology (OpenCV, elliptical elements): opening by `open_radius_px` removes bright
   specks; closing by `close_radius_px` bridges gaps and fills narrow holes (both 0 by
   default).
4. Pores: pixels strictly darker than `pore_level * otsu` on a barely smoothed copy (a 7 px
   pore must not blur away), opened with the 5x5 disc (radius 2) so cracks and inter-splat
   boundaries a few pixels wide vanish, kept only where the dark component is compact
   (solidity = pixel area / convex-hull pixel area >= `pore_min_solidity`), then grown up
   to 2 px into their blurred rim (pixels darker than `2 * pore_level * otsu`): hysteresis.
   Cracks stay melted matrix. Pores override the bright class (a pore in a particle is a pore).
5. Optional SLIC (`slic.enabled`): every superpixel takes the majority of melted/unmelted
   among its pixels; pores are then laid over at pixel level, because a superpixel is
   usually larger than a pore and a majority vote would erase it.

Why these defaults (they were re-derived on real micrographs): in a real coating field the
unmelted particles' interior is a narrow bright grey population and the melted matrix a
broad one with bright lamellae of its own. Otsu (equal spreads) splits inside the matrix
and `otsu_upper` only keeps the brightest cores, so on the real labelled tile of the seed
project (CLAHE-enhanced, 256x256, labels 255 = unmelted) IoU(unmelted) was 0.79 and 0.37;
the minimum-error threshold, which gives each population its own spread, scores 0.83 there
with this engine's defaults, and its threshold lands within 2 grey levels of the best
single threshold for that label. The former smoothing (sigma 2) and opening (radius 4)
erased the bright structures 2-4 px wide that the real label marks (0.83 -> 0.70 with
both). On synthetic v3 frames, whose particles are often no brighter than the matrix, a
grey threshold is not enough whatever the method (held-out IoU ~0.45); telling those apart
by texture and outline is the U-Net's job.

Speed, 2560x1920 uint8 v3 frames on the shared 2-core development box, default settings
(`bench/classical_bench.py`): ~7 ms per call, 11 ms of CPU (smooth 1.4, one histogram for
both thresholds 1.3, threshold 1.7, pores 4.4: `kernels.morphology.open_dark` ~1 for the
dark compare and the opening in one pass, then `kernels.compact_fill` ~3.3 for the
labelling, the solidity test on ~800 dark components and the growth into the rim, read
from the grey levels around each pore, painted straight into the bright mask). With OpenCV's compare and
opening, a second compared frame for the rim and `cv2.max` it took ~10.4 ms (17 of CPU);
the path before that (a second blur, the histogram counted twice, contours, hulls, a
filled drawing and whole-frame dilations) ~19 ms.
numba's OpenMP threads must not spin between the `kernels` calls while OpenCV's own threads
want the cores (`analysis.choose_threading_layer` sets them passive).

Example:
    >>> import numpy as np
    >>> from inspectd.config import SegmentConfig
    >>> image = np.full((64, 64), 120, np.uint8)
    >>> image[8:28, 8:28] = 230; image[40:50, 40:50] = 5
    >>> mask = ClassicalEngine(SegmentConfig()).segment(image)
    >>> int(mask[18, 18]), int(mask[45, 45]), int(mask[60, 5])
    (1, 2, 0)
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from pydantic import Field, model_validator

import kernels
from inspectd.analysis.confidence import histogram_separability
from inspectd.analysis.engines import slic as slic_vote
from inspectd.analysis.engines.base import SegmentationEngine
from inspectd.config import SlicConfig, StrictModel, ThresholdMethod
from inspectd.types import PORE
from kernels.min_error import minimum_error_from_histogram
from kernels.morphology import open_dark
from kernels.otsu import otsu_from_histogram
from kernels.pores import compact_fill

if TYPE_CHECKING:
    from inspectd.config import SegmentFields

logger = logging.getLogger(__name__)

CLASSICAL_ENVELOPE_PATH = Path(__file__).resolve().parents[2] / "models" / "classical-envelope.json"

# A pore must survive an opening of this radius: cracks and boundaries are 1-2 px wide.
_PORE_OPEN_RADIUS_PX = 2
# Pores are found on a barely smoothed copy: a 7 px pore must not blur away.
_PORE_SMOOTH_SIGMA_PX = 0.5
# Hysteresis: a pore grows up to this many px into pixels darker than factor * dark level.
_PORE_GROW_PX = 2
_PORE_GROW_LEVEL_FACTOR = 2.0
# The second Otsu of `otsu_upper` is estimated on every other row and column (4x fewer
# pixels, the same histogram shape), which keeps it at ~1 ms on a 2560x1920 frame.
_UPPER_OTSU_STRIDE = 2


class ClassicalConfig(StrictModel):
    """The seed's traditional path: threshold + morphology (+ optional SLIC vote)."""

    threshold: ThresholdMethod = Field(
        ThresholdMethod.MINIMUM_ERROR,
        description="How unmelted (bright) pixels are split off: minimum_error (Kittler-Illingworth: a narrow bright "
        "particle population beside a broad matrix one, each with its own spread) | otsu | otsu_upper (Otsu again "
        "above the first Otsu threshold) | fixed | adaptive.",
    )
    fixed_threshold: int = Field(
        128, ge=0, le=65535, description="Grey level for threshold: fixed, in the frame's own levels (x257 for 16-bit)."
    )
    adaptive_block_size: int = Field(51, ge=3, le=4095, description="Odd window size for threshold: adaptive, pixels.")
    adaptive_offset: float = Field(
        -20.0, ge=-65535.0, le=65535.0, description="Subtracted from the local mean for threshold: adaptive, in the frame's own grey levels."
    )
    smooth_sigma_px: float = Field(
        0.5, ge=0.0, le=50.0, description="Gaussian sigma applied before thresholding (against single-pixel noise; "
        "raise it for a coarse grain inside particles)."
    )
    pore_level: float = Field(
        0.2, gt=0.0, lt=1.0,
        description="Pores are pixels darker than this fraction of the Otsu threshold (near-black).",
    )
    pore_min_solidity: float = Field(
        0.6, ge=0.0, le=1.0, description="Dark regions less solid than this are cracks, not pores (kept as melted)."
    )
    open_radius_px: int = Field(0, ge=0, le=50, description="Morphological opening radius (removes bright specks; "
                                "0 keeps structures a few pixels wide, which real labels mark).")
    close_radius_px: int = Field(0, ge=0, le=50, description="Morphological closing radius (fills gaps).")
    slic: SlicConfig = Field(default_factory=SlicConfig)

    @model_validator(mode="after")
    def _verify_block_size(self) -> ClassicalConfig:
        if self.adaptive_block_size % 2 == 0:
            msg = f"adaptive_block_size must be odd, got {self.adaptive_block_size}"
            raise ValueError(msg)
        return self


class ClassicalEngine(SegmentationEngine):
    """Threshold + morphology segmentation; no model file, runs on the CPU kernels."""

    KEY = "classical"
    config_class = ClassicalConfig

    def __init__(self, segment_cfg: SegmentFields) -> None:
        super().__init__(segment_cfg)
        self.cfg: ClassicalConfig = self.settings
        requested = segment_cfg.backend.value
        if requested not in ("auto", "cpu"):
            logger.info("classical engine runs on the CPU kernels (backend %s asked for)", requested)

    def _load(self) -> None:
        if self.cfg.slic.enabled:
            slic_vote.require_implementation(self.cfg.slic.implementation.value)

    def forward(self, prepared: np.ndarray) -> np.ndarray:
        return classify(prepared, self.cfg)

    def confidence(self, raw: np.ndarray, image: np.ndarray, mask: np.ndarray) -> float:
        """How clearly the frame's grey levels split into two populations (`confidence.histogram_separability`)."""
        return histogram_separability(image)

    @property
    def envelope_path(self) -> Path:
        """The shipped envelope of the frames this engine was tuned on (`scripts/build_envelopes.py`)."""
        return CLASSICAL_ENVELOPE_PATH


def classify(enhanced: np.ndarray, cfg: ClassicalConfig) -> np.ndarray:
    """Class-index mask (uint8: 0 melted, 1 unmelted, 2 pore) of a 2-D uint8/uint16 enhanced frame.

    Example:
        >>> import numpy as np
        >>> from inspectd.config import ClassicalConfig
        >>> frame = np.full((40, 40), 100, np.uint16) * 257; frame[10:30, 10:30] = 60000
        >>> int(classify(frame, ClassicalConfig())[20, 20])
        1
    """
    smoothed = _smooth(enhanced, cfg.smooth_sigma_px)
    # One histogram serves Otsu's threshold and the minimum-error one (one pass over the frame less).
    histogram = kernels.grey_histogram(smoothed)
    otsu = otsu_from_histogram(histogram)
    mask = _bright(smoothed, otsu, cfg, histogram)
    mask = _refine_bright(mask, cfg.open_radius_px, cfg.close_radius_px)
    if cfg.slic.enabled:
        mask = slic_vote.slic_vote(
            enhanced, mask, n_segments=cfg.slic.n_segments, compactness=cfg.slic.compactness,
            implementation=cfg.slic.implementation.value,
        )
    # With the default sigma (0.5) both passes want the same blur: it is computed once.
    pore_source = smoothed if cfg.smooth_sigma_px == _PORE_SMOOTH_SIGMA_PX else _smooth(enhanced, _PORE_SMOOTH_SIGMA_PX)
    # mask is 0/1 (melted/unmelted) and PORE > 1: painting the pores into it gives
    # cv2.max(mask, pores) without that full-frame pass and array. Every step above returns a
    # new array, so np.require hands back the mask itself.
    into = np.require(mask, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])
    return _pores(pore_source, cfg.pore_level * otsu, cfg.pore_min_solidity, into=into)


def upper_otsu_threshold(smoothed: np.ndarray, otsu: int) -> int:
    """Otsu's threshold of the pixels brighter than `otsu` (the bright side split again).

    Example:
        >>> import numpy as np
        >>> image = np.repeat(np.repeat(np.array([[20, 120, 220]], np.uint8), 4, axis=1), 4, axis=0)
        >>> upper_otsu_threshold(image, 20)
        120
    """
    sample = smoothed[::_UPPER_OTSU_STRIDE, ::_UPPER_OTSU_STRIDE]
    upper = sample[sample > otsu]
    if upper.size == 0:
        return int(otsu)
    return int(kernels.otsu_threshold(upper.reshape(1, -1)))


def _smooth(image: np.ndarray, sigma_px: float) -> np.ndarray:
    if sigma_px <= 0:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma_px, sigmaY=sigma_px, borderType=cv2.BORDER_REFLECT_101)


def _bright(smoothed: np.ndarray, otsu: int, cfg: ClassicalConfig, histogram: np.ndarray | None = None) -> np.ndarray:
    """The bright (unmelted) candidates; `histogram`: the frame's `kernels.grey_histogram`, if counted."""
    method = cfg.threshold.value
    if method == "fixed":
        return kernels.threshold(smoothed, cfg.fixed_threshold)
    if method == "adaptive":
        return kernels.adaptive_threshold(smoothed, cfg.adaptive_block_size, cfg.adaptive_offset)
    if method == "otsu_upper":
        return kernels.threshold(smoothed, upper_otsu_threshold(smoothed, otsu))
    if method == "minimum_error":
        level = (kernels.minimum_error_threshold(smoothed) if histogram is None
                 else minimum_error_from_histogram(histogram))
        return kernels.threshold(smoothed, level)
    return kernels.threshold(smoothed, otsu)


def _disk(radius_px: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius_px + 1, 2 * radius_px + 1))


def _refine_bright(bright: np.ndarray, open_radius_px: int, close_radius_px: int) -> np.ndarray:
    out = bright
    if open_radius_px > 0:
        out = cv2.morphologyEx(out, cv2.MORPH_OPEN, _disk(open_radius_px))
    if close_radius_px > 0:
        out = cv2.morphologyEx(out, cv2.MORPH_CLOSE, _disk(close_radius_px))
    return out


def _dark(image: np.ndarray, level: float) -> np.ndarray:
    """uint8 0/255: grey < level, i.e. grey < ceil(level) for integer grey levels.

    One `cv2.compare` pass (it saturates levels outside the dtype's range correctly);
    inverting a `kernels.threshold` mask took two passes and a parallel kernel launch.
    Only used as a binary mask (morphology, contours, AND), so 255 serves as well as 1.
    """
    return cv2.compare(image, math.ceil(level), cv2.CMP_LT)


def _pores(pore_source: np.ndarray, dark_level: float, min_solidity: float, into: np.ndarray | None = None) -> np.ndarray:
    """Dark, compact components (uint8 0/PORE), grown into their blurred rim; thin cracks are dropped.

    Drawn with the class index itself; with `into` (a 0/1 class mask of the frame's own,
    C-contiguous) they are painted over it in place and it is returned.

    `kernels.morphology.open_dark` finds the dark pixels and opens them in one pass
    (OpenCV's compare and opening to the byte, ~2.5 ms less CPU);
    `kernels.pores.compact_fill` labels the opened mask once, keeps the outermost
    components whose solidity passes, filled, and grows each into the rim around it only,
    reading the grey levels there: exactly what external contours, the per-contour test, a
    filled drawing and two whole-frame dilations over a second compared frame
    (`_pores_by_contours`, the former path) give.
    """
    dark = open_dark(pore_source, dark_level, _disk(_PORE_OPEN_RADIUS_PX))
    if not cv2.hasNonZero(dark):  # stops at the first set pixel, where `any` reads the whole frame
        return dark if into is None else into  # no pore
    # Optics blur a pore's edge: grow it into the adjacent, still fairly dark pixels, never
    # further than _PORE_GROW_PX (so it cannot run along a crack or a boundary).
    return compact_fill(dark, min_solidity, value=255, fill_value=PORE, grow_into=pore_source,
                        grow_below=_PORE_GROW_LEVEL_FACTOR * dark_level, grow_px=_PORE_GROW_PX, out=into)


def _grow_into_rim(pores: np.ndarray, pore_source: np.ndarray, dark_level: float) -> np.ndarray:
    """The former growth of `_pores_by_contours`, on the whole frame."""
    rim = _dark(pore_source, _PORE_GROW_LEVEL_FACTOR * dark_level)
    step = _disk(1)
    for _ in range(_PORE_GROW_PX):
        pores = cv2.bitwise_and(cv2.dilate(pores, step), rim)
    return pores


def _pores_by_contours(pore_source: np.ndarray, dark_level: float, min_solidity: float) -> np.ndarray:
    """`_pores` the former way, kept as the reference tests and `bench/classical_bench.py` compare with.

    External contours plus a convex hull only where the bbox does not already prove the
    solidity, then the kept contours drawn filled.
    """
    dark = _dark(pore_source, dark_level)
    if not dark.any():
        return dark  # all zeros
    dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, _disk(_PORE_OPEN_RADIUS_PX))
    contours, _ = cv2.findContours(dark, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    compact = [c for c in contours if _is_compact(c, min_solidity)]
    pores = np.zeros(pore_source.shape, dtype=np.uint8)
    if not compact:
        return pores
    cv2.drawContours(pores, compact, -1, PORE, thickness=cv2.FILLED)
    return _grow_into_rim(pores, pore_source, dark_level)


def _pixel_area(contour: np.ndarray) -> float:
    """Pixels inside a pixel-centre contour, by Pick's theorem: polygon area + perimeter / 2 + 1.

    Exact for a w x h rectangle (w*h), and 1.0 per pixel for a one-pixel-wide line.
    """
    return cv2.contourArea(contour) + cv2.arcLength(contour, True) / 2.0 + 1.0


def _is_compact(contour: np.ndarray, min_solidity: float) -> bool:
    _, _, width, height = cv2.boundingRect(contour)
    pixels = _pixel_area(contour)
    if pixels >= min_solidity * width * height:  # solidity >= extent: the hull lies in the bbox
        return True
    return pixels / _pixel_area(cv2.convexHull(contour)) >= min_solidity
