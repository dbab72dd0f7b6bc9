"""How far synthetic micrographs are from real ones: statistic distances and a real-vs-fake test.

Why: "looks real" has to be a number before a generator can be tuned or two generators
ranked. Frames are cut into square patches (64 px by default, non-overlapping) and each
patch is described by texture features (`patch_features`): grey-level percentiles,
gradient magnitudes, GLCM contrast / homogeneity / energy / correlation at 1, 2, 4 and 8 px
(averaged over 0/45/90/135 deg, plus how anisotropic the contrast is), local standard
deviation in 3, 7 and 15 px windows, and the radially averaged power spectrum in octave
bands. `compare` reports:

- grey-level histogram: earth mover's (Wasserstein-1) distance between all real and all
  synthetic grey levels, in grey levels;
- gradient magnitude: the same for Sobel gradient magnitudes;
- GLCM and local variance: the per-feature Wasserstein-1 distance between real and
  synthetic patches, in units of the real patches' standard deviation, averaged over the
  group's features;
- power spectrum: mean absolute difference of the mean band powers, in dB;
- classifier accuracy (the sharpest test): a standardised logistic regression trained to
  tell real patches from synthetic ones on all features, stratified 5-fold cross-validated
  with balanced classes (the larger side subsampled afresh in each of several repeats).
  50 % = indistinguishable, 100 % = always told apart.

Frames are compared in one state, that of the real tiles: 8-bit (16-bit frames divided by
257) and CLAHE-enhanced. `synthetic_frames` therefore draws each generator's *enhanced*
output (v2 `enhance=True`, v3 `enhance=True`) with per-frame varied parameters; real
frames are taken as decoded (the seed project's tiles are already enhanced). Comparing raw
camera frames would need the real raw frames, which we do not have.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> noise = [rng.integers(0, 256, (128, 128)).astype(np.uint8) for _ in range(4)]
>>> flat = [np.full((128, 128), v, np.uint8) for v in (90, 110, 130, 150)]
>>> compare(noise, flat).classifier_accuracy > 0.9
True
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.stats import wasserstein_distance

from inspectd.data.synth import lamellar
from inspectd.data.synth.realistic import generate_v3
from inspectd.data.synth.realistic_params import RealisticParams, vary_realistic
from inspectd.errors import ConfigError

logger = logging.getLogger(__name__)

PATCH_PX = 64
GLCM_DISTANCES_PX = (1, 2, 4, 8)
GLCM_ANGLES_RAD = (0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4)
GLCM_PROPS = ("contrast", "homogeneity", "energy", "correlation")
GLCM_LEVELS = 32
LOCAL_WINDOWS_PX = (3, 7, 15)
SPECTRUM_BANDS = 6

# Feature slices in the vector `patch_features` returns (names for the distance groups).
_GREY = slice(0, 7)
_GRADIENT = slice(7, 11)
_GLCM = slice(11, 11 + len(GLCM_DISTANCES_PX) * len(GLCM_PROPS) + 1)
_LOCAL = slice(_GLCM.stop, _GLCM.stop + 2 * len(LOCAL_WINDOWS_PX))
_SPECTRUM = slice(_LOCAL.stop, _LOCAL.stop + SPECTRUM_BANDS)
N_FEATURES = _SPECTRUM.stop


@dataclass(frozen=True)
class ComparisonResult:
    """Distances between one synthetic set and the real set (smaller = closer to real)."""

    grey_w1_levels: float
    gradient_w1: float
    glcm_w1_sd: float
    local_variance_w1_sd: float
    spectrum_db: float
    classifier_accuracy: float
    classifier_accuracy_sd: float
    real_patches: int
    synthetic_patches: int


def to_grey8(image: np.ndarray) -> np.ndarray:
    """The comparison state's bit depth: uint8 as is, uint16 / 257 (the synth 16-bit scale).

    >>> to_grey8(np.array([[0, 65535]], np.uint16)).tolist()
    [[0, 255]]
    """
    if image.ndim != 2:
        msg = f"expected a grey image, got shape {image.shape}"
        raise ConfigError(msg)
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return np.rint(image / 257.0).astype(np.uint8)
    msg = f"expected a uint8 or uint16 image, got {image.dtype}"
    raise ConfigError(msg)


def cut_patches(image: np.ndarray, patch_px: int = PATCH_PX) -> list[np.ndarray]:
    """Non-overlapping `patch_px` squares (the remainder at the right / bottom is dropped).

    Non-overlapping so that no two patches share pixels: a cross-validated classifier
    would otherwise recognise a test patch by its overlapping neighbour in the training set.

    >>> len(cut_patches(np.zeros((130, 200), np.uint8), 64))
    6
    """
    height, width = image.shape[:2]
    return [
        image[y : y + patch_px, x : x + patch_px]
        for y in range(0, height - patch_px + 1, patch_px)
        for x in range(0, width - patch_px + 1, patch_px)
    ]


def patch_features(image: np.ndarray) -> np.ndarray:
    """Texture feature vector (float64, `N_FEATURES` long) of one grey patch (uint8 or uint16).

    >>> patch = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
    >>> patch_features(patch).shape == (N_FEATURES,), N_FEATURES
    (True, 40)
    """
    from skimage.feature import graycomatrix, graycoprops

    grey8 = to_grey8(image)
    grey = grey8.astype(np.float32)
    features: list[float] = []
    features += [float(grey.mean()), float(grey.std())]
    features += np.percentile(grey, [5, 25, 50, 75, 95]).tolist()

    magnitude = cv2.magnitude(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    features += [float(magnitude.mean()), float(magnitude.std())]
    features += np.percentile(magnitude, [50, 90]).tolist()

    quantised = (grey8 // (256 // GLCM_LEVELS)).astype(np.uint8)
    glcm = graycomatrix(
        quantised, GLCM_DISTANCES_PX, GLCM_ANGLES_RAD, levels=GLCM_LEVELS, symmetric=True, normed=True
    )
    for prop in GLCM_PROPS:
        values = graycoprops(glcm, prop)  # (distances, angles)
        values = np.nan_to_num(values, nan=1.0)  # correlation of a flat patch
        features += values.mean(axis=1).tolist()
    contrast_2px = graycoprops(glcm, "contrast")[1]
    features.append(math.log((contrast_2px.max() + 1.0) / (contrast_2px.min() + 1.0)))

    for window_px in LOCAL_WINDOWS_PX:
        mean = cv2.blur(grey, (window_px, window_px))
        mean_sq = cv2.blur(grey * grey, (window_px, window_px))
        local_sd = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))
        features += [float(local_sd.mean()), float(local_sd.std())]

    features += _band_powers_db(grey).tolist()
    return np.asarray(features, dtype=np.float64)


def _band_powers_db(grey: np.ndarray) -> np.ndarray:
    """Radially averaged power spectrum in octave bands, dB relative to the patch's total."""
    height, width = grey.shape
    window = np.outer(np.hanning(height), np.hanning(width)).astype(np.float32)
    power = np.abs(np.fft.fft2((grey - grey.mean()) * window)) ** 2
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    radius = np.hypot(fy, fx)  # cycles per px, up to ~0.707
    edges = 0.5 / 2.0 ** np.arange(SPECTRUM_BANDS, -1, -1)  # octaves ending at Nyquist
    edges[0] = 1e-9
    total = float(power[radius > 0].sum()) + 1e-12
    bands = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        in_band = (radius > low) & (radius <= high)
        bands.append(10.0 * math.log10(float(power[in_band].sum()) / total + 1e-12))
    return np.asarray(bands)


def features_of(images: Sequence[np.ndarray], patch_px: int = PATCH_PX) -> np.ndarray:
    """(patches, N_FEATURES) features of every patch of every image."""
    rows = [patch_features(p) for image in images for p in cut_patches(image, patch_px)]
    if not rows:
        msg = f"no {patch_px}x{patch_px} patch fits in the images given"
        raise ConfigError(msg)
    return np.stack(rows)


def classifier_accuracy(
    real_features: np.ndarray,
    synthetic_features: np.ndarray,
    seed: int = 0,
    folds: int = 5,
    repeats: int = 20,
) -> tuple[float, float]:
    """Cross-validated accuracy (mean, sd over repeats) of telling real from synthetic patches.

    Classes are balanced by subsampling the larger side afresh in every repeat, then a
    standardised logistic regression is scored with stratified k-fold; 0.5 = no better than
    a coin. Two draws from one source give about 0.5; sets with a clear difference give
    about 1. Patches of one image may land in both training and test folds, which helps
    the classifier recognise sets of few, distinct images (the real side: two tiles); the
    accuracy is therefore an upper bound, and fair between generators compared with the
    same real set. Exact duplicates across the sets score below 0.5 (a test patch's twin
    sits in the training folds with the other label).

    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(0, 1, (40, 3))
    >>> round(classifier_accuracy(a, a + 10.0)[0], 2)
    1.0
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_each = min(len(real_features), len(synthetic_features))
    folds = min(folds, n_each)
    if folds < 2:
        msg = "need at least 2 patches on each side to cross-validate a classifier"
        raise ConfigError(msg)
    rng = np.random.default_rng([seed, 0xC1A55])
    scores = []
    for repeat in range(repeats):
        real = real_features[rng.permutation(len(real_features))[:n_each]]
        fake = synthetic_features[rng.permutation(len(synthetic_features))[:n_each]]
        x = np.concatenate([real, fake])
        y = np.repeat([1, 0], n_each)
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=5000))
        split = StratifiedKFold(folds, shuffle=True, random_state=int(seed) * 1000 + repeat)
        scores.append(float(np.mean(cross_val_score(model, x, y, cv=split))))
    return float(np.mean(scores)), float(np.std(scores))


def _standardised_w1(real: np.ndarray, synthetic: np.ndarray) -> float:
    """Mean over features of W1(real, synthetic) in units of the real feature's sd."""
    distances = []
    for column in range(real.shape[1]):
        scale = float(real[:, column].std()) or float(np.abs(real[:, column]).mean()) or 1.0
        distances.append(wasserstein_distance(real[:, column], synthetic[:, column]) / scale)
    return float(np.mean(distances))


def compare(
    real_images: Sequence[np.ndarray],
    synthetic_images: Sequence[np.ndarray],
    patch_px: int = PATCH_PX,
    seed: int = 0,
) -> ComparisonResult:
    """Distances between real and synthetic images (both grey, already in the same state).

    >>> rng = np.random.default_rng(1)
    >>> images = [rng.integers(0, 256, (64, 64)).astype(np.uint8) for _ in range(6)]
    >>> compare(images, images).grey_w1_levels
    0.0
    """
    real_grey = [to_grey8(image) for image in real_images]
    synthetic_grey = [to_grey8(image) for image in synthetic_images]
    real_features = features_of(real_grey, patch_px)
    synthetic_features = features_of(synthetic_grey, patch_px)
    accuracy, accuracy_sd = classifier_accuracy(real_features, synthetic_features, seed)

    def pooled(images: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([image.ravel() for image in images]).astype(np.float64)

    def gradients(images: list[np.ndarray]) -> np.ndarray:
        # Sobel of 8-bit grey is exact in integers; the magnitude is taken in float64 by numpy
        # because cv2.magnitude's float32 result can differ in the last bit with the buffer's
        # alignment, and two equal sets must be at distance 0.
        parts = []
        for image in images:
            gx = cv2.Sobel(image, cv2.CV_16S, 1, 0).astype(np.float64)
            gy = cv2.Sobel(image, cv2.CV_16S, 0, 1).astype(np.float64)
            parts.append(np.hypot(gx, gy).ravel())
        return np.concatenate(parts)

    grey_real, grey_synthetic = pooled(real_grey), pooled(synthetic_grey)
    spectrum_real = real_features[:, _SPECTRUM].mean(axis=0)
    spectrum_synthetic = synthetic_features[:, _SPECTRUM].mean(axis=0)
    return ComparisonResult(
        grey_w1_levels=float(wasserstein_distance(grey_real, grey_synthetic)),
        gradient_w1=float(wasserstein_distance(gradients(real_grey), gradients(synthetic_grey))),
        glcm_w1_sd=_standardised_w1(real_features[:, _GLCM], synthetic_features[:, _GLCM]),
        local_variance_w1_sd=_standardised_w1(
            real_features[:, _LOCAL], synthetic_features[:, _LOCAL]
        ),
        spectrum_db=float(np.abs(spectrum_real - spectrum_synthetic).mean()),
        classifier_accuracy=accuracy,
        classifier_accuracy_sd=accuracy_sd,
        real_patches=len(real_features),
        synthetic_patches=len(synthetic_features),
    )


def synthetic_frames(
    generator: str, n: int, sizes: Sequence[tuple[int, int]], seed: int
) -> list[np.ndarray]:
    """`n` enhanced frames from a generator ("v2" or "v3"), each with its own varied parameters.

    Frame i has size `sizes[i % len(sizes)]` (height, width) and the per-sample seed
    `write_dataset` would give sample i of dataset seed `seed`.

    >>> [f.shape for f in synthetic_frames("v3", 2, [(32, 48)], seed=0)]
    [(32, 48), (32, 48)]
    """
    if n < 1 or not sizes:
        msg = f"need n >= 1 frames and at least one size, got n={n}, sizes={list(sizes)}"
        raise ConfigError(msg)
    frames = []
    for index in range(n):
        sample_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        height, width = sizes[index % len(sizes)]
        if generator == "v2":
            params = dataclasses.replace(
                lamellar.vary_params(sample_seed, lamellar.SynthParams()), enhance=True
            )
            frames.append(lamellar.generate(height, width, sample_seed, params).image)
        elif generator == "v3":
            params = vary_realistic(sample_seed, RealisticParams(), enhance=True)
            frames.append(generate_v3(height, width, sample_seed, params).image)
        else:
            msg = f"generator={generator!r} must be 'v2' or 'v3'"
            raise ConfigError(msg)
    return frames


def format_table(results: dict[str, ComparisonResult]) -> str:
    """Side-by-side table, one column per generator (smaller is closer to real).

    >>> r = ComparisonResult(1.0, 2.0, 0.3, 0.4, 0.5, 0.75, 0.01, 32, 512)
    >>> print(format_table({"v2": r}).splitlines()[-2].split())
    ['real-vs-synthetic', 'classifier', 'accuracy', '(50%', 'best)', '75.0%', '+-1.0']
    """
    label_width, column_width = 50, 14
    rows = [
        ("grey-level histogram, W1 (grey levels)", lambda r: f"{r.grey_w1_levels:.1f}"),
        ("gradient magnitude, W1 (Sobel units)", lambda r: f"{r.gradient_w1:.1f}"),
        ("GLCM contrast/homog./energy/corr., W1 (sd)", lambda r: f"{r.glcm_w1_sd:.2f}"),
        ("local variance 3/7/15 px, W1 (sd)", lambda r: f"{r.local_variance_w1_sd:.2f}"),
        ("power spectrum, octave bands (dB)", lambda r: f"{r.spectrum_db:.2f}"),
        (
            "real-vs-synthetic classifier accuracy (50% best)",
            lambda r: f"{100 * r.classifier_accuracy:.1f}% +-{100 * r.classifier_accuracy_sd:.1f}",
        ),
        ("patches: real / synthetic", lambda r: f"{r.real_patches} / {r.synthetic_patches}"),
    ]
    header = "statistic (distance to real; smaller = closer)"
    lines = [header.ljust(label_width) + "".join(name.rjust(column_width) for name in results)]
    for label, cell in rows:
        cells = "".join(cell(result).rjust(column_width) for result in results.values())
        lines.append(label.ljust(label_width) + cells)
    return "\n".join(lines)
