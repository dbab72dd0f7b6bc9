"""Immutable records that flow between the stages: Frame -> Measurements -> Verdict."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

# Class indices of a segmentation mask; shared by every engine, the measurements and the
# U-Net training data. Never renumber: masks on disk and PLC maps depend on them.
MELTED = 0
UNMELTED = 1
PORE = 2
CLASS_NAMES = {MELTED: "melted", UNMELTED: "unmelted", PORE: "pore"}


@dataclass(frozen=True)
class Frame:
    """One field of view as decoded, before any enhancement.

    `pixels` is 2-D grey, uint8 or uint16 (`bit_depth` says how many bits carry data), or
    None for an item that yielded no image (unreadable file, camera timeout): such a frame
    still gets its verdict (ERROR / NO_INSPECTION), so it carries the source and part id.
    """

    pixels: np.ndarray | None
    source: str
    field_index: int = 0
    bit_depth: int = 8
    sha256: str = ""
    capture_time: datetime | None = None
    part_id: str | None = None


@dataclass(frozen=True)
class Region:
    """One connected region of one class, in pixels and micrometres."""

    label: int
    class_name: str
    area_px: int
    area_um2: float
    bbox_x: int
    bbox_y: int
    bbox_width_px: int
    bbox_height_px: int
    aspect_ratio: float
    equivalent_diameter_px: float
    equivalent_diameter_um: float
    perimeter_px: float
    perimeter_um: float
    circularity: float
    solidity: float
    centroid_x: float
    centroid_y: float


@dataclass(frozen=True)
class Measurements:
    """Numbers measured on one field; `metrics` is the flat name -> value map rules refer to.

    `regions` is a tuple or any read-only sequence equal to one (`measure` returns one that
    makes its `Region` objects only when read).
    """

    metrics: dict[str, float]
    regions: Sequence[Region] = ()


class VerdictResult(str, enum.Enum):
    """Every word a verdict can carry, on the wire, in the journal and in `<stem>.json`.

    PASS / FAIL: the frame was measured and judged. ERROR: it could not be (bad file,
    engine failure, out of distribution). NO_INSPECTION: a triggered part got no frame at all
    (camera timeout or lost), so the line still hears about that part.
    """

    PASS = "PASS"
    FAIL = "FAIL"
    ERROR = "ERROR"
    NO_INSPECTION = "NO_INSPECTION"

    @classmethod
    def not_judged(cls, word: str) -> bool:
        """True for the words that mean "no measured verdict": the item is quarantined, not filed as done.

        >>> VerdictResult.not_judged("NO_INSPECTION"), VerdictResult.not_judged("FAIL")
        (True, False)
        """
        return word in (cls.ERROR.value, cls.NO_INSPECTION.value)


@dataclass(frozen=True)
class FailedRule:
    metric: str
    op: str
    limit: float
    value: float | None


@dataclass(frozen=True)
class Verdict:
    """PASS / FAIL / ERROR; `warnings` are things a reader should know that did not change the result."""

    result: VerdictResult
    failed_rules: tuple[FailedRule, ...] = ()
    reason: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Assessment:
    """How far one frame's verdict can be trusted (`inspectd.analysis.trust`).

    `confidence`: the engine's own 0..1 (U-Net: mean top-two softmax margin; classical: how
    clearly the grey levels split into two populations); None when the engine cannot say.
    `out_of_distribution`: the frame's statistics lie outside the engine's training envelope
    (`inspectd.analysis.ood`); `ood_distance` is how far (1.0 = on the envelope's edge) and
    `ood_reasons` names each statistic outside it.
    """

    confidence: float | None
    out_of_distribution: bool
    ood_distance: float
    ood_reasons: tuple[str, ...] = ()
