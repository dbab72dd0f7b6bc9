"""Smooth random fields for the v3 generator: isotropic, and along wavy lamellae.

Why a module: lamellae, oxide stringers, splat greys and the waviness that bends them all
must follow one shared coordinate system (a lamella and the stringer on it bend together),
so the coordinates (`LamellaFrame`) are built once per frame and every anisotropic field is
sampled through them. Fields are drawn on a coarse canvas where they are smooth (nothing is
lost) and sampled with one `cv2.remap`: a 1024x768 field costs a few milliseconds.

Every field is zero-mean with unit standard deviation over its canvas (normalised exactly),
so strengths in `RealisticParams` mean the same at every size and correlation length.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> frame = lamella_frame(rng, (64, 96), angle_deg=0.0, waviness=0.0, thickness_px=3, length_px=15)
>>> field = frame.field(rng, along_sigma_px=8.0, across_sigma_px=1.5)
>>> field.shape, field.dtype.name
((64, 96), 'float32')
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

logger = logging.getLogger(__name__)

# A field is drawn on a canvas this many canvas px per correlation length (sigma): coarser
# loses nothing visible after the linear interpolation of the remap.
_CANVAS_PX_PER_SIGMA = 1.5


def _normalised(noise: np.ndarray) -> np.ndarray:
    noise -= noise.mean()
    noise *= 1.0 / max(float(noise.std()), 1e-12)
    return noise


def isotropic_field(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Zero-mean unit-variance float32 field correlated over `sigma_px` in every direction.

    >>> f = isotropic_field(np.random.default_rng(1), (40, 50), 4.0)
    >>> f.shape, abs(float(f.mean())) < 0.2
    ((40, 50), True)
    """
    height, width = shape
    factor = max(1.0, sigma_px / _CANVAS_PX_PER_SIGMA)
    low_h = max(4, int(math.ceil(height / factor)) + 2)
    low_w = max(4, int(math.ceil(width / factor)) + 2)
    noise = rng.standard_normal((low_h, low_w), dtype=np.float32)
    sigma = sigma_px / factor
    noise = cv2.GaussianBlur(noise, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    noise = _normalised(noise)
    if factor == 1.0:
        return np.ascontiguousarray(noise[:height, :width])
    # Canvas pixel i covers frame pixels [i * factor, (i + 1) * factor): sample its centre.
    xs = ((np.arange(width, dtype=np.float32) + 0.5) / factor - 0.5)[None, :]
    ys = ((np.arange(height, dtype=np.float32) + 0.5) / factor - 0.5)[:, None]
    map_x = np.broadcast_to(xs, shape).astype(np.float32)
    map_y = np.broadcast_to(ys, shape).astype(np.float32)
    return cv2.remap(noise, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


@dataclass(frozen=True)
class LamellaFrame:
    """Per-pixel coordinates along (`along_px`) and across (`across_px`) the wavy lamellae."""

    along_px: np.ndarray  # float32, frame shape
    across_px: np.ndarray  # float32, frame shape

    def field(
        self, rng: np.random.Generator, along_sigma_px: float, across_sigma_px: float
    ) -> np.ndarray:
        """Zero-mean unit-variance float32 field, correlated over the given lengths along/across."""
        factor_u = max(1.0, along_sigma_px / _CANVAS_PX_PER_SIGMA)
        factor_v = max(1.0, across_sigma_px / _CANVAS_PX_PER_SIGMA)
        u_min, u_max = float(self.along_px.min()), float(self.along_px.max())
        v_min, v_max = float(self.across_px.min()), float(self.across_px.max())
        canvas_w = int(math.ceil((u_max - u_min) / factor_u)) + 6
        canvas_h = int(math.ceil((v_max - v_min) / factor_v)) + 6
        noise = rng.standard_normal((canvas_h, canvas_w), dtype=np.float32)
        noise = cv2.GaussianBlur(
            noise,
            (0, 0),
            sigmaX=along_sigma_px / factor_u,
            sigmaY=across_sigma_px / factor_v,
            borderType=cv2.BORDER_REFLECT,
        )
        noise = _normalised(noise)
        map_u = cv2.addWeighted(self.along_px, 1.0 / factor_u, self.along_px, 0.0, 3.0 - u_min / factor_u)
        map_v = cv2.addWeighted(
            self.across_px, 1.0 / factor_v, self.across_px, 0.0, 3.0 - v_min / factor_v
        )
        return cv2.remap(noise, map_u, map_v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def lamella_frame(
    rng: np.random.Generator,
    shape: tuple[int, int],
    angle_deg: float,
    waviness: float,
    thickness_px: float,
    length_px: float,
) -> LamellaFrame:
    """Coordinates along/across lamellae at `angle_deg`, bent by `waviness` (0 = straight).

    Two octaves of bending: a gentle sway over a few lamella lengths (amplitude up to about
    one lamella length) and a tighter ripple over one length (up to about 1.5 thicknesses),
    both displacing the across coordinate, which is what makes splats curve around each other.
    Image y points down, so a positive angle rises to the right (as in v2).
    """
    height, width = shape
    cos_a, sin_a = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    xs = np.arange(width, dtype=np.float32)[None, :] - width / 2.0
    ys = np.arange(height, dtype=np.float32)[:, None] - height / 2.0
    along = (xs * cos_a - ys * sin_a).astype(np.float32)
    across = (xs * sin_a + ys * cos_a).astype(np.float32)
    if waviness > 0:
        sway = isotropic_field(rng, shape, 1.5 * length_px)
        ripple = isotropic_field(rng, shape, 0.5 * length_px)
        across = across + waviness * (0.6 * length_px * sway + 1.5 * thickness_px * ripple)
        along = along + waviness * (0.5 * length_px) * isotropic_field(rng, shape, 1.5 * length_px)
    return LamellaFrame(
        along_px=np.ascontiguousarray(along, dtype=np.float32),
        across_px=np.ascontiguousarray(across, dtype=np.float32),
    )
