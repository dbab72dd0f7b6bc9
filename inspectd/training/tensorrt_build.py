"""Build and serialise a TensorRT engine ("plan") from the U-Net ONNX model.

UNTESTED ON A GPU: written against the TensorRT 10 Python API (`Builder`,
`create_network`, `OnnxParser.parse_from_file`, `IOptimizationProfile.set_shape`,
`BuilderConfig.set_memory_pool_limit`, `build_serialized_network`) and checked here only for
clean import, the not-installed path and the calibration data (`calibration_batches`, pure
numpy). `tests/unet/test_tensorrt.py` has a GPU-marked test that builds and runs a plan.

Why these choices:
- Dynamic shapes with one optimisation profile: batch 1..`max_batch`, square tiles
  `min_tile_px`..`tile_px`, optimised for a full batch of full tiles, which is what the
  engine sends (`UnetEngine` runs fixed `tile_px` tiles on TensorRT).
- `fp16` halves memory traffic at no measurable accuracy cost for a segmentation argmax;
  `int8` needs calibration: tiles cut from a folder of the user's own micrographs, enhanced
  and normalised exactly like inference (`inspectd.analysis.preprocess.enhance`,
  `inspectd.analysis.engines.unet_contract.normalise`), through `IInt8EntropyCalibrator2` (deprecated in
  TensorRT 10 in favour of explicit Q/DQ models, still supported), with a calibration cache
  beside the plan so a rebuild does not recalibrate.
- A plan is tied to the TensorRT version and the GPU model: build it on the target machine.

Example:
    >>> import tempfile
    >>> try:
    ...     build_engine_plan(Path("model.onnx"), Path(tempfile.mkdtemp()) / "x.plan")
    ... except EngineError as exc:  # without TensorRT: "tensorrt is not installed (...)"
    ...     print("refused")
    refused
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inspectd.analysis.engines import tiling
from inspectd.analysis.engines import unet_contract as contract
from inspectd.analysis.engines.tensorrt_runtime import device_memory, require_tensorrt
from inspectd.config import PreprocessConfig
from inspectd.data.labelled import calibration_images, enhanced_images
from inspectd.errors import EngineError

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class BuildOptions:
    """What `inspectd build-engine` asks for."""

    fp16: bool = True
    int8: bool = False
    calib_dir: Path | None = None
    tile_px: int = 512
    min_tile_px: int = 64
    max_batch: int = 4
    workspace_mib: int = 2048
    max_calibration_tiles: int = 512

    def check(self) -> None:
        problems = []
        for name in ("tile_px", "min_tile_px"):
            value = getattr(self, name)
            if value <= 0 or value % contract.INPUT_MULTIPLE:
                problems.append(f"{name} must be a positive multiple of {contract.INPUT_MULTIPLE}, got {value}")
        if self.min_tile_px > self.tile_px:
            problems.append(f"min_tile_px {self.min_tile_px} is larger than tile_px {self.tile_px}")
        if self.max_batch < 1:
            problems.append(f"max_batch must be >= 1, got {self.max_batch}")
        if self.int8 and self.calib_dir is None:
            problems.append("int8 needs a folder of calibration images (--calib DIR)")
        if problems:
            raise EngineError("; ".join(problems))


def calibration_tiles(calib_dir: Path, tile_px: int, preprocess_cfg: PreprocessConfig,
                      max_tiles: int = 512) -> Iterator[np.ndarray]:
    """Normalised float32 `[tile_px, tile_px]` tiles of every image in `calib_dir`, as inference sees them.

    Each image is decoded, enhanced and cut into non-overlapping tiles (reflect-padded at the
    edges, like inference); unreadable files are skipped with a warning.
    """
    produced = 0
    for enhanced in enhanced_images(calibration_images(calib_dir), preprocess_cfg):
        plan = tiling.plan_tiles(*enhanced.shape, tile_px, 0, fixed_tile_hw=(tile_px, tile_px))
        normalised = contract.normalise(tiling.pad_frame(enhanced, plan))[0, 0]
        for tile in tiling.extract_tiles(normalised, plan):
            yield np.ascontiguousarray(tile)
            produced += 1
            if produced >= max_tiles:
                return


def calibration_batches(calib_dir: Path, tile_px: int, batch_size: int, preprocess_cfg: PreprocessConfig,
                        max_tiles: int = 512) -> list[np.ndarray]:
    """Full `[batch_size, 1, tile_px, tile_px]` batches (the last one filled by repeating tiles).

    Example:
        >>> import tempfile, cv2, numpy as np
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = cv2.imwrite(str(folder / "a.png"), np.full((100, 150), 90, np.uint8))
        >>> [b.shape for b in calibration_batches(folder, 64, 4, PreprocessConfig())]
        [(4, 1, 64, 64), (4, 1, 64, 64)]
    """
    tiles = list(calibration_tiles(calib_dir, tile_px, preprocess_cfg, max_tiles))
    if not tiles:
        msg = f"no calibration image could be read in {calib_dir} (PNG, TIFF, BMP or JPEG)"
        raise EngineError(msg)
    n_batches = -(-len(tiles) // batch_size)
    filled = [tiles[i % len(tiles)] for i in range(n_batches * batch_size)]
    return [np.stack(filled[i:i + batch_size])[:, None] for i in range(0, len(filled), batch_size)]


def _make_calibrator(trt: Any, batches: list[np.ndarray], cache_path: Path) -> Any:
    """An `IInt8EntropyCalibrator2` feeding `batches` from one device buffer."""
    memory = device_memory()

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = batches
            self.index = 0
            memory.enter()
            try:
                self.stream = memory.new_stream()
                self.device = memory.alloc_device(batches[0].nbytes)
                self.host = memory.alloc_pinned(batches[0].shape, np.float32)
            finally:
                memory.leave()

        def get_batch_size(self) -> int:
            return int(self.batches[0].shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= len(self.batches):
                return None
            np.copyto(self.host, self.batches[self.index])
            self.index += 1
            memory.enter()
            try:
                memory.to_device(self.device[1], self.host, self.stream)
                memory.synchronize(self.stream)
            finally:
                memory.leave()
            return [self.device[1]]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            cache_path.write_bytes(bytes(cache))

    return _Calibrator()


def build_engine_plan(onnx_path: Path, out_path: Path, options: BuildOptions | None = None,
                      preprocess_cfg: PreprocessConfig | None = None) -> Path:
    """Parse the ONNX model, build a TensorRT engine with `options` and write it to `out_path`.

    Raises `EngineError` (one line where possible) when TensorRT is missing, the model does
    not parse, or the build fails.
    """
    options = options or BuildOptions()
    options.check()
    trt = require_tensorrt()
    if not onnx_path.is_file():
        msg = f"ONNX model {onnx_path} does not exist"
        raise EngineError(msg)
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    # TensorRT 10 networks are always explicit-batch (the flag is deprecated); 8.x needs it.
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        msg = f"TensorRT cannot parse {onnx_path}: {errors or 'unknown parser error'}"
        raise EngineError(msg)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape(
        contract.INPUT_NAME,
        (1, 1, options.min_tile_px, options.min_tile_px),
        (options.max_batch, 1, options.tile_px, options.tile_px),
        (options.max_batch, 1, options.tile_px, options.tile_px),
    )
    config.add_optimization_profile(profile)
    if options.fp16:
        if getattr(builder, "platform_has_fast_fp16", True) is False:  # deprecated in TensorRT 10
            logger.warning("this GPU has no fast fp16; building with --fp16 anyway")
        config.set_flag(trt.BuilderFlag.FP16)
    if options.int8:
        batches = calibration_batches(options.calib_dir, options.tile_px, options.max_batch,
                                      preprocess_cfg or PreprocessConfig(), options.max_calibration_tiles)
        logger.info("int8 calibration on %d batch(es) of %d tiles from %s", len(batches), options.max_batch,
                    options.calib_dir)
        config.set_flag(trt.BuilderFlag.INT8)
        calibrator = _make_calibrator(trt, batches, out_path.with_suffix(".calib"))  # alive until the build ends
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)

    logger.info("building TensorRT engine from %s (fp16 %s, int8 %s, tiles %d..%d px, batch <= %d)", onnx_path,
                options.fp16, options.int8, options.min_tile_px, options.tile_px, options.max_batch)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        msg = f"TensorRT could not build an engine from {onnx_path} (see the TensorRT messages above)"
        raise EngineError(msg)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(bytes(memoryview(serialized)))
    return out_path
