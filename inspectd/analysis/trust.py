"""How far a verdict can be trusted: the engine's confidence, the frame's place in the engine's envelope.

Why a stage of its own: the rules judge numbers, not whether the numbers mean anything. A
frame unlike those the engine was built for (`inspectd.analysis.ood`) still gives numbers, and a
plausible porosity is a PASS; this stage turns such a frame into an ERROR whose reason names
the statistics outside the envelope (`trust.ood.action: error`, the default), or lets the
PASS/FAIL stand with the flag and a warning (`warn`). Either way every analysed frame
carries an `Assessment`: `confidence` and `out_of_distribution` reach the result file, the
verdict message and the journal.

Which envelope (`select_envelope`): `trust.ood.envelope` when set; else the engine's own
(`SegmentationEngine.envelope_path`: the classical engine's shipped JSON, a U-Net's model
card); a model card without an envelope (cards written before envelopes existed, a model
without a card) falls back to the classical envelope, the frames inspectd knows as coating
micrographs, with one warning at start-up, so no engine runs without the check.

Example:
    >>> import numpy as np
    >>> from inspectd.config import OodConfig, SegmentConfig
    >>> from inspectd.analysis.engines.registry import create_engine
    >>> from inspectd.types import Verdict, VerdictResult
    >>> assessor = FrameAssessor(create_engine(SegmentConfig()), OodConfig())
    >>> noise = np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)
    >>> assessment = assessor.assess(noise, noise, confidence=0.3)
    >>> assessment.out_of_distribution
    True
    >>> verdict = assessor.apply(Verdict(VerdictResult.PASS), assessment)
    >>> verdict.result.value, verdict.reason.split(" (distance")[0], "envelope classical-envelope.json" in verdict.reason
    ('ERROR', 'out of distribution for the classical engine', True)
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from inspectd.analysis import ood
from inspectd.analysis.engines.base import SegmentationEngine
from inspectd.analysis.engines.classical import CLASSICAL_ENVELOPE_PATH
from inspectd.analysis.verdict import error_verdict
from inspectd.config import OodAction, OodConfig
from inspectd.errors import ConfigError
from inspectd.types import Assessment, Verdict, VerdictResult

logger = logging.getLogger(__name__)

OOD_KIND = "out_of_distribution"


def select_envelope(engine: SegmentationEngine, configured: Path | None) -> tuple[dict[str, Any], str]:
    """(envelope, where it came from) for `engine` (see the module docstring); ConfigError for a
    configured envelope that cannot be used, since a check the operator asked for must not silently change."""
    if configured is not None:
        return ood.load_envelope(configured), str(configured)
    own = engine.envelope_path
    if own is not None:
        try:
            return ood.load_envelope(own), str(own)
        except ConfigError as exc:
            reason = str(exc)
    else:
        reason = f"the {engine.name} engine has no training envelope"
    logger.warning("%s; frames are compared with the classical envelope %s instead (set trust.ood.envelope, or "
                   "export the model with inspectd export to give its card one)", reason, CLASSICAL_ENVELOPE_PATH.name)
    return ood.load_envelope(CLASSICAL_ENVELOPE_PATH), str(CLASSICAL_ENVELOPE_PATH)


class FrameAssessor:
    """One engine's envelope and the configured action; `assess` then `apply` per frame."""

    def __init__(self, engine: SegmentationEngine, cfg: OodConfig) -> None:
        self.engine_name = engine.name
        self.action = cfg.action
        self.envelope, self.envelope_origin = select_envelope(engine, cfg.envelope)
        logger.info("out-of-distribution check: %s envelope of %d frames (%s), action %s", self.engine_name,
                    self.envelope.get("n_frames", 0), Path(self.envelope_origin).name, self.action.value)

    def assess(self, raw: np.ndarray, enhanced: np.ndarray, confidence: float | None) -> Assessment:
        """The frame's `Assessment`: `raw` as decoded, `enhanced` as the engine saw it."""
        check = ood.assess(ood.frame_statistics(enhanced, raw), self.envelope)
        return Assessment(confidence=confidence, out_of_distribution=check.out_of_distribution,
                          ood_distance=check.distance, ood_reasons=tuple(check.reasons))

    def rejects(self, assessment: Assessment) -> bool:
        """True when the frame becomes an ERROR: outside the envelope with `action: error`."""
        return assessment.out_of_distribution and self.action is OodAction.ERROR

    def describe(self, assessment: Assessment) -> str:
        """One line naming the statistics outside the envelope."""
        threshold = self.envelope.get("threshold", ood.THRESHOLD)
        return (f"out of distribution for the {self.engine_name} engine (distance {assessment.ood_distance:.3g} > "
                f"{threshold:g}, envelope {Path(self.envelope_origin).name}): " + "; ".join(assessment.ood_reasons))

    def apply(self, verdict: Verdict, assessment: Assessment) -> Verdict:
        """The verdict as the trust policy has it: unchanged in the envelope; outside, ERROR (action
        error) or the same result with a warning (action warn). An ERROR stays an ERROR."""
        if not assessment.out_of_distribution or verdict.result is VerdictResult.ERROR:
            return verdict
        text = self.describe(assessment)
        if self.rejects(assessment):
            return replace(error_verdict(text), timings_ms=verdict.timings_ms)
        return replace(verdict, warnings=(*verdict.warnings, f"warning: {text}"))
