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
from typing import Any

import numba
import numpy as np

import kernels
from inspectd.analysis.engines.base import Segmentation
from inspectd.analysis.engines.registry import create_engine
from inspectd.analysis.measure import measure
from inspectd.analysis.preprocess import enhance, enhance_on_device
from inspectd.analysis.trust import FrameAssessor
from inspectd.analysis.verdict import decide, error_verdict
from inspectd.config import Config, SegmentFields
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


def engine_settings(cfg: Config) -> SegmentFields:
    """`cfg.segment` as the engine gets it: with several analysis workers, a U-Net whose ONNX
    Runtime threads are left to the default (`intra_op_threads: 0`) gets the usable cores
    shared out among the workers instead of every core per inference.

    Why: with one worker each inference should have every core (the lowest latency with one
    frame in flight). With several, inferences run side by side, and each one's threads on
    every core only compete with the others': on 2 cores (U-Net, 2560x1920 frames) two
    workers made 10.4 frames/s with two threads per inference and 11.6 with one, while one
    frame alone then takes ~45 % longer (`bench/RESULTS.md`).
    """
    workers = cfg.pipeline.workers
    unet = getattr(cfg.segment, "unet", None)
    if workers == 1 or cfg.segment.engine != "unet" or unet is None or unet.intra_op_threads:
        return cfg.segment
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    shared = unet.model_copy(update={"intra_op_threads": max(1, cores // workers)})
    return cfg.segment.model_copy(update={"unet": shared})


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
        self.engine = create_engine(engine_settings(cfg))
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
        """The frame's result: its stages one after the other (the pipeline runs the same
        stages, segment and out-of-distribution side by side; see `FrameJob`)."""
        job = FrameJob(frame)
        self.preprocess(job)
        result = self.settle(job)
        if result is None:
            self.segment(job)
            if "segment" not in job.failures:  # its result would be the segment's ERROR anyway
                self.assess(job)
            result = self.settle(job)
        if result is None:
            self.measure(job)
            result = self.settle(job)
        assert result is not None  # measure settles every frame
        return result

    # ---- the stages, for a caller that schedules them itself --------------------------------
    # Each stage fills its part of the `FrameJob` and never raises for a bad frame: a failure is
    # kept in `job.failures` and `settle` turns the first one, in stage order, into the ERROR
    # `analyze` always gave, whichever stage happened to finish first.

    def preprocess(self, job: FrameJob) -> None:
        """Denoise + CLAHE: `job.enhanced` (and the frame on the GPU when frames stay there)."""
        with job.stage("preprocess"):
            if self.device_frames:
                job.on_device = enhance_on_device(job.frame.pixels, self.cfg.preprocess)
                job.enhanced = kernels.to_host(job.on_device)  # measure reads its grey levels
            else:
                job.enhanced = enhance(job.frame.pixels, self.cfg.preprocess, backend=self.kernel_backend)

    def segment(self, job: FrameJob) -> None:
        """The engine's mask and confidence (after `preprocess`)."""
        with job.stage("segment"):
            if self.device_frames:
                job.segmentation = self.engine.segment_device_assessed(job.on_device)
            else:
                job.segmentation = self.engine.segment_assessed(job.enhanced)

    def assess(self, job: FrameJob) -> None:
        """The out-of-distribution statistics (after `preprocess`; independent of `segment`,
        whose confidence `settle` adds)."""
        with job.stage("ood"):
            job.assessment = self.assessor.assess(job.frame.pixels, job.enhanced, None)

    def measure(self, job: FrameJob) -> None:
        """Measurements and the verdict (after `segment` and `assess`, once `settle` said go on)."""
        with job.stage("measure"):
            job.measurements = measure(
                job.segmentation.mask,
                job.enhanced,
                um_per_px=self.cfg.um_per_px,
                min_region_area_px=self.cfg.measure.min_region_area_px,
            )
        if "measure" in job.failures:
            return
        with job.stage("verdict"):
            job.verdict = self.assessor.apply(decide(job.measurements, self.cfg.rules), self._assessment(job))

    def settle(self, job: FrameJob) -> FrameResult | None:
        """The frame's result once it is decided (a stage failed, the frame is out of distribution
        under `action: error`, or it is measured), else None: more stages to run. Decided once."""
        if job.result is not None:
            return job.result
        frame = job.frame
        for stage in _STAGES:
            if stage in job.failures:
                exc = job.failures[stage]
                timings_ms = job.timings_before(stage)
                if isinstance(exc, InspectdError):
                    logger.warning("analysis failed for %s field %d: %s", frame.source, frame.field_index, exc)
                    reason = str(exc)
                else:
                    logger.error("unexpected failure analysing %s field %d", frame.source, frame.field_index,
                                 exc_info=exc)
                    reason = f"internal error: {type(exc).__name__}: {exc}"
                job.result = FrameResult(frame, replace(error_verdict(reason), timings_ms=timings_ms))
                return job.result
            if stage not in job.timings_ms:
                return None  # not run yet
            if stage == "ood":
                assessment = self._assessment(job)
                if self.assessor.rejects(assessment):
                    # An ERROR carries no numbers anyone could take for a measurement; the mask stays,
                    # so `inspectd analyze` can still show the engine's proposal for review.
                    reason = self.assessor.describe(assessment)
                    logger.warning("%s field %d: %s", frame.source, frame.field_index, reason)
                    job.result = FrameResult(frame, replace(error_verdict(reason),
                                                            timings_ms=job.timings_before("measure")),
                                             enhanced=job.enhanced, mask=job.segmentation.mask, assessment=assessment)
                    return job.result
        job.result = FrameResult(frame, replace(job.verdict, timings_ms=job.timings_before(None)), job.measurements,
                                 job.enhanced, job.segmentation.mask, self._assessment(job))
        return job.result

    def _assessment(self, job: FrameJob) -> Assessment:
        return replace(job.assessment, confidence=job.segmentation.confidence)


# The stages of one frame in the order `analyze` runs them; segment and ood both need only
# the enhanced frame, so a scheduler may run them side by side.
_STAGES = ("preprocess", "segment", "ood", "measure", "verdict")


class FrameJob:
    """One frame on its way through the `Analyzer`'s stages; what each stage made, its time, or its failure.

    Example (the stages `analyze` runs, one after the other):
        >>> from inspectd import config
        >>> from inspectd.data import synth
        >>> analyzer = Analyzer(config.load(None))
        >>> job = FrameJob(Frame(synth.generate(128, 128, seed=2).image, "synthetic"))
        >>> analyzer.preprocess(job); analyzer.settle(job) is None
        True
        >>> analyzer.segment(job); analyzer.assess(job); analyzer.settle(job) is None
        True
        >>> analyzer.measure(job); list(analyzer.settle(job).verdict.timings_ms)
        ['preprocess', 'segment', 'ood', 'measure', 'verdict']
    """

    def __init__(self, frame: Frame) -> None:
        self.frame = frame
        self.timings_ms: dict[str, float] = {}
        self.failures: dict[str, Exception] = {}
        self.enhanced: np.ndarray | None = None
        self.on_device: Any = None
        self.segmentation: Segmentation | None = None
        self.assessment: Assessment | None = None
        self.measurements: Measurements | None = None
        self.verdict: Verdict | None = None
        self.result: FrameResult | None = None

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time one stage; keep its failure instead of raising (the per-frame boundary)."""
        start = time.perf_counter()
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - the per-frame boundary: one bad frame never stops the run
            self.failures[name] = exc
        else:
            self.timings_ms[name] = _ms_since(start)

    def timings_before(self, stage: str | None) -> dict[str, float]:
        """The timings of the stages before `stage` (all of them for None), in stage order."""
        names = _STAGES if stage is None else _STAGES[:_STAGES.index(stage)]
        return {name: self.timings_ms[name] for name in names if name in self.timings_ms}


@contextlib.contextmanager
def _kernel_resources() -> Iterator[None]:
    """`kernels.CudaUnavailableError` (the kernels know nothing of inspectd) as a `KernelResourceError`."""
    try:
        yield
    except kernels.CudaUnavailableError as exc:
        raise KernelResourceError(str(exc)) from exc


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)
