"""The one interface every segmentation engine implements (classical today, U-Net next).

Modelled on anomalib's base inferencer (load / pre_process / forward / post_process), but
every engine inherits this class and `tests/analysis/test_engines.py` walks the registry
to prove it, so no engine drifts off the interface unnoticed.

`segment()` is the template: it checks the input, runs the three hooks and checks that the
result is a uint8 class-index mask (0 melted, 1 unmelted, 2 pore) of the input's size.
`segment_assessed()` runs the same template and adds the engine's `confidence` (0..1, the
`confidence` hook, given the forward output) as a `Segmentation`; the analyzer uses it, while
`segment()` stays the cheap mask-only call that evaluation, benchmarks and tests use.
`envelope_path` says where the engine's training envelope lies (`inspectd.analysis.ood`).

Example:
    >>> import numpy as np
    >>> from inspectd.config import SegmentConfig
    >>> from inspectd.analysis.engines.registry import create_engine
    >>> engine = create_engine(SegmentConfig(engine="classical"))
    >>> engine.load()
    >>> engine.segment(np.zeros((32, 48), np.uint8)).shape
    (32, 48)
    >>> engine.segment_assessed(np.zeros((32, 48), np.uint8)).confidence
    0.0
"""

from __future__ import annotations

import abc
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from inspectd.errors import EngineError

if TYPE_CHECKING:  # the full `segment:` model is built from the engine registry
    from pydantic import BaseModel

    from inspectd.config import SegmentFields as SegmentConfig

logger = logging.getLogger(__name__)

_WARM_UP_SHAPE = (64, 96)
_INPUT_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
N_CLASSES = 3


@dataclass(frozen=True)
class Segmentation:
    """A mask and how sure the engine is of it: `confidence` in [0, 1], None when the engine cannot say."""

    mask: np.ndarray
    confidence: float | None = None


class SegmentationEngine(abc.ABC):
    """Enhanced grey frame (uint8 or uint16, H x W) -> uint8 class-index mask (H x W).

    Subclasses set `KEY` (the `segment.engine` config value) and implement `forward`;
    heavy set-up (model files, sessions, JIT) belongs in `_load`, which `load()` runs once.
    An engine with settings names its pydantic section in `config_class`: it is read from
    `segment.<KEY>` and the engine finds it as `segment_cfg.<KEY>` (`settings`).
    """

    KEY: ClassVar[str] = ""
    config_class: ClassVar[type[BaseModel] | None] = None

    def __init__(self, segment_cfg: SegmentConfig) -> None:
        self.segment_cfg = segment_cfg
        self._loaded = False
        self._load_lock = threading.Lock()

    # ------------------------------------------------------------------ public interface

    @property
    def settings(self) -> Any:
        """This engine's own section of `segment:` (None for an engine without `config_class`)."""
        return getattr(self.segment_cfg, self.KEY, None) if self.config_class is not None else None

    @property
    def name(self) -> str:
        """The engine's registry key, recorded in every verdict."""
        return self.KEY

    @property
    def backend(self) -> str:
        """Where this engine actually runs ("cpu", "cuda", "tensorrt"), not what was asked."""
        return "cpu"

    @property
    def model_hash(self) -> str | None:
        """sha256 of the model file, or None for engines without one (classical)."""
        return None

    def load(self) -> None:
        """Heavy initialisation, once; later calls return at once (thread-safe)."""
        if self._loaded:
            return
        with self._load_lock:
            if not self._loaded:
                self._load()
                self._loaded = True
                logger.info("engine %s loaded (backend %s)", self.name, self.backend)

    def warm_up(self) -> None:
        """Run a small dummy frame of each input dtype so JIT and engine builds happen before READY."""
        self.load()
        rng = np.random.default_rng(0)
        for dtype in _INPUT_DTYPES:
            top = np.iinfo(dtype).max
            dummy = rng.integers(0, top, size=_WARM_UP_SHAPE, dtype=dtype, endpoint=True)
            self.segment(dummy)
        logger.debug("engine %s warmed up", self.name)

    @property
    def envelope_path(self) -> Path | None:
        """The engine's training envelope (`inspectd.analysis.ood`): an envelope JSON or a model card with one; None: none."""
        return None

    def segment(self, enhanced: np.ndarray) -> np.ndarray:
        """Class-index mask (uint8, values in {0, 1, 2}) of the same height and width."""
        return self._run(_check_input(enhanced))[1]

    def segment_assessed(self, enhanced: np.ndarray) -> Segmentation:
        """`segment`'s mask with the engine's confidence in it (the `confidence` hook)."""
        image = _check_input(enhanced)
        raw, mask = self._run(image)
        confidence = self.confidence(raw, image, mask)
        if confidence is not None:
            confidence = _checked_confidence(self.name, confidence)
        return Segmentation(mask, confidence)

    def _run(self, image: np.ndarray) -> tuple[Any, np.ndarray]:
        """The template on an input `_check_input` returned: (forward's raw output, the checked mask)."""
        self.load()
        prepared = self.pre_process(image)
        raw = self.forward(prepared)
        mask = self.post_process(raw, image)
        if mask.shape != image.shape or mask.dtype != np.uint8:
            msg = (f"engine {self.name} returned a {mask.dtype} mask of shape {mask.shape} "
                   f"for a {image.shape} frame; expected uint8 of the same shape")
            raise EngineError(msg)
        return raw, mask

    @property
    def takes_device_frames(self) -> bool:
        """True when `segment_device` keeps a frame that is already on the GPU there."""
        return False

    def segment_device(self, enhanced: Any) -> np.ndarray:
        """The mask of an enhanced frame held in a CUDA device array (numba, CuPy, PyTorch).

        Engines that cannot read device memory (this default) segment a host copy.
        """
        import kernels

        return self.segment(kernels.to_host(enhanced))

    def segment_device_assessed(self, enhanced: Any) -> Segmentation:
        """`segment_device` with the confidence; by default both from a host copy (`segment_assessed`)."""
        import kernels

        return self.segment_assessed(kernels.to_host(enhanced))

    # ------------------------------------------------------------------ hooks

    def _load(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Override for heavy set-up; runs once under a lock."""

    def pre_process(self, image: np.ndarray) -> Any:
        """Turn the validated enhanced frame into the engine's input (identity by default)."""
        return image

    @abc.abstractmethod
    def forward(self, prepared: Any) -> Any:
        """The engine proper: prepared input -> raw output."""

    def post_process(self, raw: Any, image: np.ndarray) -> np.ndarray:
        """Raw output -> uint8 class-index mask of `image`'s shape (identity by default)."""
        return raw

    def confidence(self, raw: Any, image: np.ndarray, mask: np.ndarray) -> float | None:
        """How sure the engine is of `mask`, in [0, 1], from `forward`'s raw output and the frame.

        None by default: an engine that cannot say. Only `segment_assessed` calls it, so
        `segment` never pays for it.
        """
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, backend={self.backend!r})"


def _checked_confidence(engine_name: str, confidence: float) -> float:
    value = float(confidence)
    if not 0.0 <= value <= 1.0:  # NaN fails too
        msg = f"engine {engine_name} reported confidence {value}, outside [0, 1]"
        raise EngineError(msg)
    return value


def _check_input(enhanced: np.ndarray) -> np.ndarray:
    if not isinstance(enhanced, np.ndarray):
        msg = f"engine input must be a numpy array, got {type(enhanced).__name__}"
        raise EngineError(msg)
    if enhanced.ndim != 2 or enhanced.dtype not in _INPUT_DTYPES or min(enhanced.shape) < 1:
        msg = f"engine input must be a non-empty 2-D uint8 or uint16 image, got {enhanced.dtype} {enhanced.shape}"
        raise EngineError(msg)
    return np.ascontiguousarray(enhanced)
