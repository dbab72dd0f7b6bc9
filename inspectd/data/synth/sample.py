"""One synthetic frame as both generators hand it back: image, class mask, truth counted on it.

Why one module: v2 (`lamellar.py`) and v3 (`realistic.py`) draw different scenes but make
one promise about what they return, and the data-set writer, the tests and training rely
on it: the same checks of a request, the same layering of the mask (pores over particles
over matrix) and a truth dict with the same keys, counted on the mask so it is exact.

>>> import numpy as np
>>> from inspectd.data.synth import SynthParams
>>> body, pores = np.zeros((4, 8), np.uint8), np.zeros((4, 8), np.uint8)
>>> body[:, :4] = 1; pores[0, 3:5] = 1
>>> s = labelled_sample(body * 200, body, pores, seed=1, params=SynthParams(),
...                     particles_drawn=1, pores_drawn=1, generator_version="1")
>>> s.mask[0].tolist(), s.truth["porosity_pct"], s.truth["particle_count"]
([1, 1, 1, 2, 2, 0, 0, 0], 6.25, 1)
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from inspectd.errors import ConfigError
from inspectd.types import MELTED, PORE, UNMELTED

if TYPE_CHECKING:
    from inspectd.data.synth.lamellar import SynthParams
    from inspectd.data.synth.realistic_params import RealisticParams

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthSample:
    """One generated frame: `image` (uint8/uint16), `mask` (uint8 class indices), `truth`."""

    image: np.ndarray
    mask: np.ndarray
    truth: dict[str, Any] = field(default_factory=dict)


def check_request(height: int, width: int, seed: int) -> None:
    """Raise `ConfigError` unless a frame of `height` x `width` px can be drawn from `seed`.

    >>> check_request(8, 64, seed=0)
    Traceback (most recent call last):
    ...
    inspectd.errors.ConfigError: synthetic frame must be at least 16x16 px, got 64x8
    """
    if height < 16 or width < 16:
        msg = f"synthetic frame must be at least 16x16 px, got {width}x{height}"
        raise ConfigError(msg)
    if seed < 0:
        msg = f"seed must be >= 0, got {seed}"
        raise ConfigError(msg)


def labelled_sample(
    image: np.ndarray,
    body: np.ndarray,
    pores: np.ndarray,
    *,
    seed: int,
    params: SynthParams | RealisticParams,
    particles_drawn: int,
    pores_drawn: int,
    generator_version: str,
) -> SynthSample:
    """The sample of `image` whose particle `body` and `pores` (uint8 0/1) are these.

    The mask is melted matrix, then particle bodies, then pores on top. The truth is
    counted on it (fractions, 8-connected regions) plus what drew it: drawn objects
    overlap and touch, so `particle_count` / `pore_count` (regions in the mask, what a
    measurement can see) are at most `particles_drawn` / `pores_drawn`.
    """
    mask = np.full(body.shape, MELTED, dtype=np.uint8)
    np.copyto(mask, np.uint8(UNMELTED), where=body.view(bool))
    np.copyto(mask, np.uint8(PORE), where=pores.view(bool))
    total_px = mask.size
    counts = {}
    regions = {}
    for class_index in (UNMELTED, PORE):
        in_class = cv2.compare(mask, class_index, cv2.CMP_EQ)
        counts[class_index] = cv2.countNonZero(in_class)
        regions[class_index] = cv2.connectedComponents(in_class, None, 8)[0] - 1
    counts[MELTED] = total_px - counts[UNMELTED] - counts[PORE]
    truth = {
        "melted_fraction_pct": 100.0 * float(counts[MELTED]) / total_px,
        "unmelted_fraction_pct": 100.0 * float(counts[UNMELTED]) / total_px,
        "porosity_pct": 100.0 * float(counts[PORE]) / total_px,
        "particle_count": int(regions[UNMELTED]),
        "pore_count": int(regions[PORE]),
        "particles_drawn": int(particles_drawn),
        "pores_drawn": int(pores_drawn),
        "crack_count": int(params.crack_count),
        "height_px": int(mask.shape[0]),
        "width_px": int(mask.shape[1]),
        "bit_depth": int(params.bit_depth),
        "seed": int(seed),
        "generator_version": generator_version,
        "params": dataclasses.asdict(params),
    }
    return SynthSample(image=image, mask=mask, truth=truth)
