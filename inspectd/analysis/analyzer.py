"""One frame through preprocess -> segment -> measure -> verdict, with stage timings.

`inspectd analyze` and the daemon's pipeline both go through `Analyzer`, so a verdict from
the command line and one published to the line come from the same code. Every analysed
frame also gets an `Assessment` (`inspectd.analysis.trust`): the engine's confidence and whether the
frame lies outside the engine's training envelope; by default such a frame is an ERROR.

Example:
    >>> from inspectd import config
    >>> from inspectd.data import synth
    >>> from inspectd.types import Frame
    >>> analyzer = Analyzer(config.load(None))
    >>> sample = synth.generate(256, 256, seed=1)
    >>> result = analyzer.analyze(Frame(sample.image, "synthetic"))
    >>> result.verdict.result.value in ("PASS", "FAIL"), result.assessment.out_of_distribution
    (True, False)
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numba
import numpy as np

import kernels
from inspectd.analysis.engines.registry import create_engine
from inspectd.analysis.measure import measure
from inspectd.analysis.preprocess import enhance, enhance_on_device
from inspectd.analysis.trust import FrameAssessor
from inspectd.analysis.verdict import decide, error_verdict
from inspectd.config import Config
from inspectd.errors import InspectdError, KernelResourceError
from inspectd.types import Assessment, Frame, Measurements, Verdict

logger = logging.getLogger(__name__)


def choose_threading_layer() -> None:
    """Called before the first parallel kernel runs (numba fixes its layer then).

    Several analysis threads call parallel numba kernels at once: numba's `workqueue` layer
    is not safe for that, so insist on tbb or OpenMP. OpenMP workers spin-wait between
    kernels by default and then fight OpenCV's own threads for the same cores (measured:
    a classical frame 100-130 ms instead of ~60 ms on 2 cores), so they are told to sleep.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    numba.config.THREADING_LAYER = "threadsafe"


@dataclass(frozen=True)
class FrameResult:
    """Everything known about one analysed field; `measurements` is None after an ERROR.

    `enhanced`/`mask` are None after an ERROR too, except for a frame refused as out of
    distribution: it was segmented, so its mask is kept for review (not measured).
    `assessment` is None for a frame that was never assessed (unreadable, or an engine failure).
    """

    frame: Frame
    verdict: Verdict
    measurements: Measurements | None = None
    enhanced: np.ndarray | None = None
    mask: np.ndarray | None = None
    assessment: Assessment | None = None


class Analyzer:
    """Holds the loaded, warmed-up engine; `analyze` never raises for a bad frame."""

    def __init__(self, cfg: Config, *, device_frames: bool | None = None) -> None:
        """`device_frames`: keep each frame on the GPU from CLAHE to the mask (None: when the station can)."""
        choose_threading_layer()
        self.cfg = cfg
        self.engine = create_engine(cfg.segment)
        self.engine.load()
        self.assessor = FrameAssessor(self.engine, cfg.trust.ood)
        with _kernel_resources():
            self.device_frames = self._device_frames_usable() if device_frames is None else device_frames
            if self.device_frames:
                kernels.select_backend("cuda", "the device frame flow")
        if self.device_frames:
            logger.info("frames stay on the GPU from upload to mask (CUDA CLAHE, %s U-Net); the enhanced frame "
                        "and the mask come back for measurement", self.engine.backend)

    def _device_frames_usable(self) -> bool:
        """True on a GPU station: the engine reads device frames and runs on the GPU, and the kernels use CUDA."""
        return (self.engine.takes_device_frames and self.engine.backend in ("cuda", "tensorrt")
                and kernels.select_backend(self.kernel_backend, "clahe") == "cuda")

    def warm_up(self) -> None:
        """Compile kernels and run the engine once, so the first real frame is not slow."""
        with _kernel_resources():
            kernels.warm_up(backend=self.kernel_backend)
        self.engine.warm_up()
        if self.device_frames:  # the device path's own kernels (tiles, blend) and bindings
            side = getattr(self.engine, "tile_px", 64)
            dummy = np.random.default_rng(0).integers(0, 256, size=(side, side), dtype=np.uint8)
            self.engine.segment_device(enhance_on_device(dummy, self.cfg.preprocess))

    @property
    def kernel_backend(self) -> str:
        """CLAHE/threshold kernels follow `segment.backend`; a TensorRT station uses the GPU if usable."""
        backend = self.cfg.segment.backend.value
        return "auto" if backend == "tensorrt" else backend

    def analyze(self, frame: Frame) -> FrameResult:
        timings_ms: dict[str, float] = {}
        try:
            start = time.perf_counter()
            if self.device_frames:
                on_device = enhance_on_device(frame.pixels, self.cfg.preprocess)
                enhanced = kernels.to_host(on_device)  # measure reads its grey levels
            else:
                enhanced = enhance(frame.pixels, self.cfg.preprocess, backend=self.kernel_backend)
            timings_ms["preprocess"] = _ms_since(start)

            start = time.perf_counter()
            if self.device_frames:
                segmentation = self.engine.segment_device_assessed(on_device)
            else:
                segmentation = self.engine.segment_assessed(enhanced)
            mask = segmentation.mask
            timings_ms["segment"] = _ms_since(start)

            start = time.perf_counter()
            assessment = self.assessor.assess(frame.pixels, enhanced, segmentation.confidence)
            timings_ms["ood"] = _ms_since(start)
            if self.assessor.rejects(assessment):
                # An ERROR carries no numbers anyone could take for a measurement; the mask stays,
                # so `inspectd analyze` can still show the engine's proposal for review.
                reason = self.assessor.describe(assessment)
                logger.warning("%s field %d: %s", frame.source, frame.field_index, reason)
                return FrameResult(frame, replace(error_verdict(reason), timings_ms=timings_ms),
                                   enhanced=enhanced, mask=mask, assessment=assessment)

            start = time.perf_counter()
            measurements = measure(
                mask,
                enhanced,
                um_per_px=self.cfg.um_per_px,
                min_region_area_px=self.cfg.measure.min_region_area_px,
            )
            timings_ms["measure"] = _ms_since(start)

            start = time.perf_counter()
            verdict = self.assessor.apply(decide(measurements, self.cfg.rules), assessment)
            timings_ms["verdict"] = _ms_since(start)
        except InspectdError as exc:
            logger.warning("analysis failed for %s field %d: %s", frame.source, frame.field_index, exc)
            return FrameResult(frame, replace(error_verdict(str(exc)), timings_ms=timings_ms))
        except Exception as exc:  # noqa: BLE001 - the per-frame boundary: one bad frame never stops the run
            logger.exception("unexpected failure analysing %s field %d", frame.source, frame.field_index)
            reason = f"internal error: {type(exc).__name__}: {exc}"
            return FrameResult(frame, replace(error_verdict(reason), timings_ms=timings_ms))
        return FrameResult(frame, replace(verdict, timings_ms=timings_ms), measurements, enhanced, mask, assessment)


@contextlib.contextmanager
def _kernel_resources() -> Iterator[None]:
    """`kernels.CudaUnavailableError` (the kernels know nothing of inspectd) as a `KernelResourceError`."""
    try:
        yield
    except kernels.CudaUnavailableError as exc:
        raise KernelResourceError(str(exc)) from exc


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)
