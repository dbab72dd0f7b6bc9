"""From reflectance to a stored image file's pixels: light, optics, sensor, JPEG, enhancement.

Why its own stage: real micrographs differ as much in how they were taken and stored as in
what they show (the seed project's real tiles were cropped, resized and CLAHE-enhanced by
their author). Keeping the camera apart from the scene lets `vary_realistic` randomise it
as a whole: uneven illumination, optical blur, a black level / white level / gamma response
(a narrow span gives a raw, low-contrast frame), read plus shot noise, quantisation to 8 or
16 bit, JPEG encode/decode, and optionally a contrast stretch plus CLAHE.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> image = expose(rng, np.full((32, 32), 0.5, np.float32), illumination_gradient=0.0,
...                blur_sigma_px=0.0, noise_sd=0.0, black_level=0.0, white_level=200.0,
...                gamma=1.0, bit_depth=8, jpeg_quality=0)
>>> int(image[0, 0])
100
"""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np

logger = logging.getLogger(__name__)


def illumination(rng: np.random.Generator, shape: tuple[int, int], gradient: float) -> np.ndarray:
    """Smooth brightness factor around 1 spanning about +-gradient/2 (tilt plus a hot spot)."""
    height, width = shape
    low_h, low_w = max(2, height // 16), max(2, width // 16)
    yy, xx = np.mgrid[0:low_h, 0:low_w].astype(np.float32)
    yy = yy / max(1, low_h - 1) - 0.5
    xx = xx / max(1, low_w - 1) - 0.5
    direction = rng.uniform(0, 2 * np.pi)
    tilt = xx * math.cos(direction) + yy * math.sin(direction)
    spot_x, spot_y = rng.uniform(-0.4, 0.4, size=2)
    spot = np.exp(-((xx - spot_x) ** 2 + (yy - spot_y) ** 2) / (2 * 0.35**2))
    light = tilt + 0.6 * spot
    span = float(light.max() - light.min()) or 1.0
    factor = 1.0 + gradient * ((light - light.min()) / span - 0.5)
    return cv2.resize(factor.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def expose(
    rng: np.random.Generator,
    reflectance: np.ndarray,
    *,
    illumination_gradient: float,
    blur_sigma_px: float,
    noise_sd: float,
    noise_grain_px: float = 1.0,
    black_level: float,
    white_level: float,
    gamma: float,
    bit_depth: int,
    jpeg_quality: int,
) -> np.ndarray:
    """Camera model: reflectance float32 (~0..1, consumed) -> uint8 / uint16 image.

    grey = black + (white - black) * (light * reflectance) ** gamma in 8-bit levels, then
    noise with sd = noise_sd * (0.7 + 0.5 grey / 255) (read noise plus a shot term), then
    quantisation (16-bit: the 8-bit scale times 257) and, for 8-bit frames, JPEG.
    `noise_grain_px` > 1 makes the noise grains that many px wide: a frame enlarged after
    capture (as the seed project's tile b was) or smoothed by demosaicing.
    """
    shape = reflectance.shape
    signal = cv2.multiply(reflectance, illumination(rng, shape, illumination_gradient), dst=reflectance)
    if blur_sigma_px > 0:
        signal = cv2.GaussianBlur(signal, (0, 0), blur_sigma_px, dst=signal)
    np.clip(signal, 0.0, 1.0, out=signal)
    grey = cv2.pow(signal, gamma, dst=signal)
    cv2.addWeighted(grey, white_level - black_level, grey, 0.0, black_level, dst=grey)
    if noise_sd > 0:
        noise = _sensor_noise(rng, shape, noise_grain_px)
        noise_sd_map = cv2.addWeighted(grey, 0.5 * noise_sd / 255.0, grey, 0.0, 0.7 * noise_sd)
        cv2.add(grey, cv2.multiply(noise, noise_sd_map, dst=noise), dst=grey)
    if bit_depth == 16:
        grey *= 257.0
        np.clip(grey, 0, 65535, out=grey)
        return np.rint(grey, out=grey).astype(np.uint16)
    np.clip(grey, 0, 255, out=grey)
    image = np.rint(grey, out=grey).astype(np.uint8)
    if jpeg_quality > 0:
        image = jpeg_round_trip(image, jpeg_quality)
    return image


def _sensor_noise(rng: np.random.Generator, shape: tuple[int, int], grain_px: float) -> np.ndarray:
    """Unit-variance float32 noise whose grains are about `grain_px` px wide."""
    if grain_px <= 1.0:
        return rng.standard_normal(shape, dtype=np.float32)
    height, width = shape
    coarse = rng.standard_normal(
        (max(2, math.ceil(height / grain_px)), max(2, math.ceil(width / grain_px))), dtype=np.float32
    )
    noise = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    # Linear interpolation averages neighbours: restore unit variance.
    noise *= 1.0 / max(float(noise.std()), 1e-6)
    return noise


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode an 8-bit grey image as JPEG at `quality` (1..100): its artefacts.

    >>> import numpy as np
    >>> jpeg_round_trip(np.full((16, 16), 90, np.uint8), 50).shape
    (16, 16)
    """
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        msg = f"OpenCV could not JPEG-encode a {image.shape} {image.dtype} image"
        raise RuntimeError(msg)
    return cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)


# Stretch target: the 0.5 / 99.5 percentiles go to these shares of the dtype's range.
_STRETCH_TO = (0.03, 0.94)


def enhance(image: np.ndarray, clip_limit: float, grid: int) -> np.ndarray:
    """Enhance as micrographs are before they are published: stretch, then CLAHE.

    The grey levels between the 0.5th and 99.5th percentile are stretched linearly over
    3..94 % of the dtype's range (so the output no longer depends on the camera's black and
    white level; the margins keep the real tiles' headroom: their 0.5th / 99.5th
    percentiles are 9-12 / 234-244), then CLAHE (`clip_limit`, `grid` x `grid` tiles) evens out the local
    contrast. 8- or 16-bit in, the same out.

    >>> import numpy as np
    >>> out = enhance((np.arange(256, dtype=np.uint8).reshape(16, 16) // 4 + 100), 2.0, 2)
    >>> out.dtype.name, int(out.min()) < 25, int(out.max()) > 230
    ('uint8', True, True)
    """
    top = 65535.0 if image.dtype == np.uint16 else 255.0
    low, high = np.percentile(image, [0.5, 99.5])
    if high > low:
        scale = (_STRETCH_TO[1] - _STRETCH_TO[0]) * top / float(high - low)
        offset = _STRETCH_TO[0] * top - float(low) * scale
        stretched = cv2.addWeighted(image.astype(np.float32), scale, image.astype(np.float32), 0.0, offset)
        np.clip(stretched, 0, top, out=stretched)
        image = np.rint(stretched, out=stretched).astype(image.dtype)
    return cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(grid, grid)).apply(image)
