"""The U-Net engine (`segment.engine: unet`): tiled full-resolution inference of an ONNX model.

What it does with an enhanced frame (uint8/uint16, any size, e.g. 2560x1920):
1. optionally downscales it by `segment.unet.scale` (< 1 trades accuracy on small pores
   for speed; 1.0, the default, never resizes: the seed's down-resizing lost small pores);
2. reflect-pads it to multiples of 16, normalises it exactly as training did
   (`inspectd.analysis.engines.unet_contract.normalise`), cuts it into overlapping tiles of at most
   `tile_px` (`tiling.plan_tiles`), runs the tiles in batches through the runner, and
   blends the logits with linear feathers (`tiling.TileBlender`);
3. takes the argmax as the class-index mask (0 melted, 1 unmelted, 2 pore), resized back
   with nearest-neighbour when it was downscaled. A guided U-Net (output `affine`, the
   bundled v2 and v3 models) returns coarse per-class pairs at 1/stride instead of logits; they
   are blended on the coarse grid (`TilePlan.coarse`) and `kernels.guided_argmax` turns
   them and the full-resolution frame into the mask in one pass.
4. `segment_assessed` (the analyzer's call) adds the confidence: the mean top-two softmax
   margin, on the coarse grid for a guided U-Net (`confidence.guided_margin`, ~2 ms per
   2560x1920 frame), on every 4th pixel of a logits model's output (`confidence.logits_margin`).

A frame already on the GPU (`segment_device`, the analyzer's device flow after the CUDA
CLAHE) takes the same steps there (`unet_device`): tiles, network, blend and argmax read and
write device memory and only the mask comes back.

Where it runs (`segment.backend`, decided once at `load()` and logged once; `backend`
then says what is really used):
- `auto`: a TensorRT plan (`segment.unet.engine_plan`) when one is configured and TensorRT,
  cupy/pycuda and a GPU are usable; else ONNX Runtime's CUDA provider when present; else
  the CPU. A configured plan that cannot be used is one warning line, then the fallback.
- `cpu`, `cuda`: ONNX Runtime on that provider (`cuda` without it is an `EngineError`).
- `tensorrt`: the plan through `tensorrt_runtime` (untested on a GPU here), or without a
  plan ONNX Runtime's TensorRT provider; anything missing is an `EngineError`, one line.

Every model problem (missing file, not ONNX, wrong input/output names or shapes, a model
that does not return `[N,3,H,W]` for `[N,1,H,W]`) is an `EngineError` from `load()`: the
model is probed once there, so it fails at start-up, never on a frame.

`model_hash` is the sha256 of the file that runs (the ONNX model, or the plan on TensorRT).

Example:
    >>> from inspectd.config import SegmentConfig
    >>> engine = UnetEngine(SegmentConfig(engine="unet", unet=UnetConfig(model="/nonexistent.onnx")))
    >>> try:
    ...     engine.load()
    ... except EngineError as exc:
    ...     print(str(exc))
    U-Net model /nonexistent.onnx does not exist
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
from pydantic import Field, model_validator

import kernels
from inspectd.analysis.confidence import LOGITS_MARGIN_STEP, guided_margin, logits_margin
from inspectd.analysis.engines import tiling, unet_device
from inspectd.analysis.engines import unet_contract as contract
from inspectd.analysis.engines.base import Segmentation, SegmentationEngine
from inspectd.analysis.engines.cpu_int8 import int8_dot_product
from inspectd.analysis.engines.runtime import open_runtime
from inspectd.config import GraphOptimization, ModelPrecision, SegmentFields, StrictModel
from inspectd.errors import EngineError

logger = logging.getLogger(__name__)

BUNDLED_MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
# Tiles per network call. On 2 CPU cores it made no measurable difference (v1, the 0.93
# M-parameter full-resolution U-Net: 2.8-3.2 CPU-seconds per 2560x1920 frame with 1, 2 or 4
# tiles per call); a GPU gains from the larger batch. Activations stay small: 4 tiles of
# 1024x1024 are 67 MB per 16-channel layer at full resolution (v1), 4 MB at 1/4 (v2).
TILES_PER_RUN = 4
# ...and at most this many input pixels per call (at least one tile): ONNX Runtime's working
# memory grows with the batch (~145 MB for one 2560x1920 input, v3 int8), so the large tiles
# of a large frame (4096x4096: 4 tiles of 2080x2080) go one per call instead of 17 M pixels at once.
BATCH_PIXELS = 4 * 1024 * 1024
# Probe input at load: small, but deep enough for every layout the contract allows.
_PROBE_SIDE_PX = contract.INPUT_MULTIPLE


class TileRunner(Protocol):
    """What the engine needs from ONNX Runtime or TensorRT."""

    backend: str
    max_batch: int | None
    output_name: str  # contract.OUTPUT_NAME or contract.AFFINE_OUTPUT_NAME

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def run_device(self, batch: object, out: object) -> None: ...

    def describe(self) -> str: ...


def bundled_model_path(precision: str = "fp32") -> Path:
    """Where the shipped model lives: `inspectd/models/unet-coating-v3.onnx`, or its int8 twin.

    >>> bundled_model_path().name, bundled_model_path("int8").name
    ('unet-coating-v3.onnx', 'unet-coating-v3.int8.onnx')
    """
    return BUNDLED_MODELS_DIR / (contract.BUNDLED_INT8_MODEL if precision == "int8" else contract.BUNDLED_MODEL)


def bundled_precision(requested: str, backend: str, cpu_has_int8_dot_product: bool) -> str:
    """fp32 or int8 for the bundled model: `auto` is int8 on a CPU with 8-bit dot-product
    instructions (`cpu_int8`: where ONNX Runtime's int8 convolutions are the faster ones),
    fp32 on other CPUs and on a GPU (TensorRT and the CUDA provider build their own reduced
    precision from the fp32 graph).

    >>> bundled_precision("auto", "cpu", True), bundled_precision("auto", "cpu", False)
    ('int8', 'fp32')
    >>> bundled_precision("auto", "cuda", True), bundled_precision("int8", "cpu", False)
    ('fp32', 'int8')
    """
    if requested != "auto":
        return requested
    return "int8" if backend == "cpu" and cpu_has_int8_dot_product else "fp32"


@functools.cache
def _log_precision_once(precision: str, cpu_reason: str) -> None:
    logger.info("segment.unet.precision auto: the %s model on the CPU (%s)", precision, cpu_reason)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (the `model_hash` recorded in verdicts).

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "empty.onnx"; _ = path.write_bytes(b"")
    >>> file_sha256(path)[:16]
    'e3b0c44298fc1c14'
    """
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class UnetOutput:
    """`UnetEngine.forward`'s raw output: the mask and what its confidence is computed from.

    `blended`: a guided U-Net's blended coarse pairs, or the `TileBlender` of a logits model
    (its margin is sampled from it only when asked); `frame`: the frame the network saw
    (downscaled when `scale` < 1).
    """

    mask: np.ndarray
    blended: np.ndarray | tiling.TileBlender
    frame: np.ndarray
    output_stride: int


def output_confidence(output: UnetOutput) -> float:
    """The mean top-two softmax margin of a `UnetOutput` (see `inspectd.analysis.confidence`)."""
    if output.output_stride > 1:
        return guided_margin(output.blended, output.frame, output.output_stride, mean=contract.NORM_MEAN,
                             std=contract.NORM_STD)
    # Only the sampled pixels are divided by their weights: a full-resolution mean would cost 60 MB.
    blender = output.blended
    height, width = blender.plan.frame_hw
    step = LOGITS_MARGIN_STEP
    logits = blender.sum[:, :height:step, :width:step] / blender.weight_sum[:height:step, :width:step]
    return logits_margin(logits, step=1)


class UnetConfig(StrictModel):
    """The U-Net engine: ONNX Runtime on the CPU (CUDA provider when present), TensorRT on a GPU."""

    model: Path | None = Field(
        None, description="ONNX model; null = the bundled inspectd/models/unet-coating-v3 (see precision)."
    )
    precision: ModelPrecision = Field(
        ModelPrecision.AUTO,
        description="Which bundled file runs when model is null: int8 (same held-out IoU; half the time of "
        "fp32 on a CPU with VNNI, AMX-INT8 or Arm dotprod, no faster without), fp32, or auto (int8 on such a "
        "CPU, fp32 on other CPUs and on a GPU). A given model runs as is.",
    )
    engine_plan: Path | None = Field(
        None, description="Serialised TensorRT engine (inspectd build-engine) used when backend is tensorrt."
    )
    tile_px: int = Field(2560, ge=64, le=4096, description="Square inference tile, pixels (a multiple of 32).")
    overlap_px: int = Field(64, ge=0, le=1024, description="Overlap between tiles, blended linearly, pixels.")
    scale: float = Field(
        1.0, gt=0.0, le=1.0, description="Internal working scale (1.0 = full resolution; the mask is resized back)."
    )
    intra_op_threads: int = Field(0, ge=0, le=256, description="ONNX Runtime intra-op threads per inference (0 = one "
                                  "per core; with several pipeline workers, the cores shared out among them).")
    graph_optimization: GraphOptimization = Field(GraphOptimization.ALL, description="ONNX Runtime graph optimisation.")

    @model_validator(mode="after")
    def _verify_tiles(self) -> UnetConfig:
        if self.tile_px % contract.INPUT_MULTIPLE:
            msg = f"tile_px must be a multiple of 32, got {self.tile_px}"
            raise ValueError(msg)
        if self.overlap_px * 2 >= self.tile_px:
            msg = f"overlap_px ({self.overlap_px}) must be less than half of tile_px ({self.tile_px})"
            raise ValueError(msg)
        return self


class UnetEngine(SegmentationEngine):
    """Tiled U-Net segmentation on a U-Net runtime: ONNX Runtime (CPU/CUDA) or a TensorRT plan."""

    KEY = "unet"
    config_class = UnetConfig

    def __init__(self, segment_cfg: SegmentFields) -> None:
        super().__init__(segment_cfg)
        self.cfg: UnetConfig = self.settings
        self._runner: TileRunner | None = None
        self._model_path: Path | None = None
        self._model_hash: str | None = None
        self._fixed_tile_hw: tuple[int, int] | None = None
        self._tile_px = self.cfg.tile_px
        self._overlap_px = self.cfg.overlap_px
        self._tiles_per_run = TILES_PER_RUN
        self._output_stride = 1  # > 1: a guided U-Net (set by the probe at load)

    # ------------------------------------------------------------------ properties

    @property
    def backend(self) -> str:
        return self._runner.backend if self._runner is not None else "unloaded"

    @property
    def model_hash(self) -> str | None:
        return self._model_hash

    @property
    def model_path(self) -> Path | None:
        """The file that runs: the ONNX model, or the TensorRT plan."""
        return self._model_path

    @property
    def envelope_path(self) -> Path | None:
        """The model card beside the ONNX model, where `inspectd export` writes the envelope:
        `<model>.json`, or for an int8 twin `<model>.int8.onnx` its fp32 model's card
        (the bundled card for the bundled files and for a plan built from them)."""
        model = Path(self.cfg.model) if self.cfg.model is not None else bundled_model_path("fp32")
        for card in (model.with_suffix(".json"), model.with_name(model.name.removesuffix(".int8.onnx") + ".json")):
            if card.is_file():
                return card
        return None

    @property
    def output_stride(self) -> int:
        """1 for a logits model; the coarse grid's stride for a guided U-Net."""
        return self._output_stride

    @property
    def tile_px(self) -> int:
        return self._fixed_tile_hw[0] if self._fixed_tile_hw else self._tile_px

    # ------------------------------------------------------------------ loading

    def _load(self) -> None:
        opened = open_runtime(self, self.segment_cfg.backend.value)
        runner, self._model_path, self._fixed_tile_hw = opened.runner, opened.model_path, opened.fixed_tile_hw
        if runner.max_batch is not None:
            self._tiles_per_run = max(1, min(TILES_PER_RUN, runner.max_batch))
        if self._fixed_tile_hw is not None:
            self._overlap_px = min(self.cfg.overlap_px, (min(self._fixed_tile_hw) - 1) // 2)
        self._runner = runner
        self._probe()
        self._model_hash = file_sha256(self._model_path)
        logger.info("U-Net engine: %s, model %s (sha256 %s, %s), tiles <= %d px with %d px overlap, scale %.2f",
                    runner.describe(), self._model_path, self._model_hash[:12],
                    f"guided, output stride {self._output_stride}" if self._output_stride > 1 else "logits",
                    self.tile_px, self._overlap_px, self.cfg.scale)

    def bundled_onnx_path(self, backend: str) -> Path:
        """The bundled model for `backend` (cpu | cuda | tensorrt) at `segment.unet.precision`."""
        requested_precision = self.cfg.precision.value
        has_dot_product, cpu_reason = int8_dot_product()
        precision = bundled_precision(requested_precision, backend, has_dot_product)
        if requested_precision == "auto" and backend == "cpu":
            _log_precision_once(precision, cpu_reason)
        path = bundled_model_path(precision)
        if not path.is_file():
            msg = (f"the bundled U-Net model {path} is missing (a source checkout without the trained model?); "
                   "set segment.unet.model to an ONNX file")
            raise EngineError(msg)
        return path

    def _probe(self) -> None:
        """One tiny inference at load, so a model with the right names but wrong output fails now."""
        probe_hw = self._fixed_tile_hw or (_PROBE_SIDE_PX, _PROBE_SIDE_PX)
        batch = np.zeros((1, 1, *probe_hw), np.float32)
        try:
            logits = np.asarray(self._runner.run(batch))
        except EngineError:
            raise
        except Exception as exc:  # a runtime's own error: the model cannot run on this input
            msg = f"U-Net model {self._model_path} fails on a {probe_hw} probe tile: {str(exc).strip().splitlines()[0]}"
            raise EngineError(msg) from exc
        output_name = self._runner.output_name
        if output_name == contract.OUTPUT_NAME:
            stride = 1
        else:  # guided: the output stride is read from the shapes
            stride = probe_hw[0] // logits.shape[2] if logits.ndim == 4 and logits.shape[2] else 0
        expected = (1, contract.output_channels(output_name), probe_hw[0] // max(stride, 1),
                    probe_hw[1] // max(stride, 1))
        if stride < 1 or probe_hw[0] % stride or logits.shape != expected:
            needs = str(list(expected)) if stride == 1 else "[1, 6, H/s, W/s] (s the output stride)"
            msg = (f"U-Net model {self._model_path} returned '{output_name}' of shape {list(logits.shape)} for a "
                   f"{list(batch.shape)} input; the contract needs {needs}")
            raise EngineError(msg)
        self._output_stride = stride

    def warm_up(self) -> None:
        """Load, then run one full-size tile (so session arenas and kernels are ready before READY)."""
        self.load()
        side = self.tile_px
        dummy = np.random.default_rng(0).integers(0, 256, size=(side, side), dtype=np.uint8)
        self.segment(dummy)
        logger.debug("U-Net engine warmed up on a %dx%d tile", side, side)

    # ------------------------------------------------------------------ inference

    def forward(self, prepared: np.ndarray) -> UnetOutput:
        height, width = prepared.shape
        scale = self.cfg.scale
        if scale >= 1.0:
            return self._full_resolution(prepared)
        small_hw = (max(1, round(height * scale)), max(1, round(width * scale)))
        small = cv2.resize(prepared, (small_hw[1], small_hw[0]), interpolation=cv2.INTER_AREA)
        output = self._full_resolution(small)
        return replace(output, mask=cv2.resize(output.mask, (width, height), interpolation=cv2.INTER_NEAREST))

    def post_process(self, raw: UnetOutput, image: np.ndarray) -> np.ndarray:
        return raw.mask

    def confidence(self, raw: UnetOutput, image: np.ndarray, mask: np.ndarray) -> float:
        """Mean top-two softmax margin (module docstring, step 4)."""
        return output_confidence(raw)

    def segment_full_resolution(self, enhanced: np.ndarray) -> np.ndarray:
        """uint8 class-index mask of `enhanced` by blended tiles, at the frame's own resolution."""
        return self._full_resolution(enhanced).mask

    def _full_resolution(self, enhanced: np.ndarray) -> UnetOutput:
        blender = self._blend(enhanced)
        if self._output_stride == 1:
            return UnetOutput(blender.argmax(), blender, enhanced, 1)
        pairs = blender.blended()
        # Where the network ran on a GPU, its CUDA twin may run there too (auto: if usable).
        mask = kernels.guided_argmax(pairs, enhanced, self._output_stride, mean=contract.NORM_MEAN,
                                     std=contract.NORM_STD, backend="cpu" if self.backend == "cpu" else "auto")
        return UnetOutput(mask, pairs, enhanced, self._output_stride)

    @property
    def takes_device_frames(self) -> bool:
        """Full-resolution inference (`scale` 1) reads a device frame in place; a downscale is done on the host."""
        return self.cfg.scale >= 1.0

    def segment_device(self, enhanced: object) -> np.ndarray:
        """The mask of a 2-D uint8/uint16 CUDA device frame, computed on the GPU (`unet_device`).

        Only the mask comes back. With ONNX Runtime on the CPU (tests, the simulator) the
        tiles pass through host memory; the mask is the one `segment` gives either way.
        """
        if not self.takes_device_frames:
            return super().segment_device(enhanced)
        frame = self._device_frame(enhanced)
        plan = self._plan(*frame.shape)
        return unet_device.segment_device(frame, self._runner, plan, self._output_stride,
                                          self._tiles_per_call(plan))

    def segment_device_assessed(self, enhanced: object) -> Segmentation:
        """`segment_device` with the confidence: the blended output (a guided U-Net's coarse pairs,
        7 MB for a 2560x1920 frame; a logits model's full-resolution logits, 59 MB) and, for a
        guided U-Net, the frame come back to the host, where the margin is taken as in `segment_assessed`."""
        if not self.takes_device_frames:
            return super().segment_device_assessed(enhanced)
        from kernels import cuda_device

        frame = self._device_frame(enhanced)
        plan = self._plan(*frame.shape)
        mask, blended = unet_device.segment_device_with_output(
            frame, self._runner, plan, self._output_stride, self._tiles_per_call(plan))
        stride = self._output_stride
        if stride > 1:
            confidence = guided_margin(blended, cuda_device.to_host(frame), stride, mean=contract.NORM_MEAN,
                                       std=contract.NORM_STD)
        else:
            confidence = logits_margin(blended[:, :mask.shape[0], :mask.shape[1]])
        return Segmentation(mask, confidence)

    def _device_frame(self, enhanced: object):
        from kernels import cuda_device

        self.load()
        frame = cuda_device.import_device_array(enhanced)
        if len(frame.shape) != 2 or np.dtype(frame.dtype) not in (np.uint8, np.uint16) or min(frame.shape) < 1:
            msg = f"engine input must be a non-empty 2-D uint8 or uint16 image, got {frame.dtype} {tuple(frame.shape)}"
            raise EngineError(msg)
        return frame

    def blended_logits(self, enhanced: np.ndarray) -> np.ndarray:
        """Feather-blended model output of a 2-D enhanced frame (no scaling), float32.

        Logits `[3, H, W]`; for a guided U-Net its coarse pairs `[6, ceil(H/s), ceil(W/s)]`.
        """
        blender = self._blend(enhanced)
        height, width = blender.plan.frame_hw
        return blender.sum[:, :height, :width] / blender.weight_sum[:height, :width]

    def _blend(self, enhanced: np.ndarray) -> tiling.TileBlender:
        self.load()
        plan = self._plan(*enhanced.shape)
        stride = self._output_stride
        blender = tiling.TileBlender(plan.coarse(stride), contract.output_channels(self._runner.output_name))
        # Each tile is normalised straight into the batch the network reads: no normalised
        # frame (20 MB of float32 for 2560x1920) and no stacking copy of its tiles.
        tiles = list(tiling.extract_tiles(tiling.pad_frame(enhanced, plan), plan))
        per_call = self._tiles_per_call(plan)
        batch_buffer = np.empty((min(per_call, plan.n_tiles), 1, *plan.tile_hw), np.float32)
        for start in range(0, plan.n_tiles, per_call):
            run_tiles = tiles[start:start + per_call]
            batch = batch_buffer[:len(run_tiles)]
            for slot, tile in enumerate(run_tiles):
                contract.normalise_into(tile, batch[slot, 0])
            logits = self._runner.run(batch)
            for offset, tile_logits in enumerate(logits):
                y, x = blender.plan.origins[start + offset]
                blender.add(tile_logits, y, x)
        return blender

    def _tiles_per_call(self, plan: tiling.TilePlan) -> int:
        """Tiles per network call for `plan`: the runner's batch limit, and `BATCH_PIXELS` of input."""
        return max(1, min(self._tiles_per_run, BATCH_PIXELS // (plan.tile_hw[0] * plan.tile_hw[1])))

    def _plan(self, height: int, width: int) -> tiling.TilePlan:
        return tiling.plan_tiles(height, width, self._tile_px, self._overlap_px, fixed_tile_hw=self._fixed_tile_hw,
                                 multiple=contract.INPUT_MULTIPLE)
