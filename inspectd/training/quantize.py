"""fp32 ONNX U-Net -> int8 (static, QDQ) with ONNX Runtime's quantiser, checked against the fp32 file.

Why: on the station's CPU the U-Net is most of a frame's time, and ONNX Runtime's int8
convolutions (VNNI on current x86) run the bundled guided U-Net in half the fp32 time
with the same held-out IoU. Static quantisation needs activation ranges, so calibration
tiles are drawn (seeded) from real or generated micrographs, enhanced exactly as the
pipeline does before the model sees them.

Weights are quantised to 7 bits (`reduce_range`): on x86 CPUs without VNNI, ONNX Runtime
multiplies uint8 activations by int8 weights with AVX2's `vpmaddubsw`, whose int16 pair
sums saturate at full 8-bit range. Quantised in 8 bits, the bundled model agreed with fp32
on 99.8 % of the pixels on a VNNI CPU but on 96.8 % on an AVX2 AMD Zen 3 (unmelted IoU 0.74
on an unseen frame). In 7 bits the sums cannot saturate, and on that Zen 3 the held-out
IoU is the VNNI figure again.

The check: the int8 and fp32 files segment the same calibration frames through the U-Net
engine, and the int8 file is refused when fewer than `MIN_AGREEMENT` of the pixels get
the same class. Needs `onnx` (the [train] or [dev] extra) to write the file; running it
needs only onnxruntime.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from inspectd.analysis.engines import unet_contract as contract
from inspectd.analysis.engines.registry import create_engine
from inspectd.analysis.engines.unet import file_sha256
from inspectd.config import PreprocessConfig, SegmentConfig, UnetConfig
from inspectd.data.labelled import IMAGE_SUFFIXES, calibration_images, enhanced_images
from inspectd.data.scores import confusion_matrix, pixel_accuracy
from inspectd.errors import EngineError

logger = logging.getLogger(__name__)

# Ops quantised: every conv (ReLU fused) and the ops between them, so activations stay
# int8 from the stem to the head instead of converting at each skip/upsample/pool.
QUANTISED_OPS = ("Conv", "Add", "MaxPool", "Resize")
MIN_AGREEMENT = 0.98
DEFAULT_TILES = 64
DEFAULT_TILE_PX = 256
CHECK_FRAMES = 4


@dataclass(frozen=True)
class QuantizeResult:
    """The int8 file and what was measured while making it."""

    path: Path
    sha256: str
    agreement: float  # share of pixels with the fp32 model's class on the check frames
    record: dict[str, Any]  # for the model card's `int8` section


def calibration_frames(folder: str | Path, preprocess_cfg: PreprocessConfig) -> tuple[int, list[np.ndarray]]:
    """(how many images `folder` holds, the readable ones enhanced as the pipeline does)."""
    folder = Path(folder)
    if not folder.is_dir():
        msg = f"calibration folder {folder} does not exist"
        raise EngineError(msg)
    paths = calibration_images(folder)
    if not paths:
        msg = f"calibration folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})"
        raise EngineError(msg)
    frames = list(enhanced_images(paths, preprocess_cfg))
    if not frames:
        msg = f"no calibration image could be read in {folder}"
        raise EngineError(msg)
    return len(paths), frames


def calibration_tiles(frames: list[np.ndarray], n_tiles: int, tile_px: int, seed: int) -> list[np.ndarray]:
    """`n_tiles` normalised `[1, 1, tile, tile]` inputs, round-robin over frames at seeded positions.

    >>> frames = [np.zeros((300, 400), np.uint8)]
    >>> [t.shape for t in calibration_tiles(frames, 2, 256, seed=0)]
    [(1, 1, 256, 256), (1, 1, 256, 256)]
    """
    rng = np.random.default_rng(seed)
    tiles = []
    for index in range(n_tiles):
        frame = frames[index % len(frames)]
        side_y, side_x = min(tile_px, frame.shape[0]), min(tile_px, frame.shape[1])
        y = int(rng.integers(0, frame.shape[0] - side_y + 1))
        x = int(rng.integers(0, frame.shape[1] - side_x + 1))
        crop = frame[y:y + side_y, x:x + side_x]
        if crop.shape != (tile_px, tile_px):  # a frame smaller than a tile: reflect it up
            crop = np.pad(crop, ((0, tile_px - side_y), (0, tile_px - side_x)), mode="reflect")
        tiles.append(contract.normalise(crop))
    return tiles


def quantize_model(
    onnx_path: str | Path,
    calibration_dir: str | Path,
    out_path: str | Path,
    *,
    preprocess_cfg: PreprocessConfig | None = None,
    n_tiles: int = DEFAULT_TILES,
    tile_px: int = DEFAULT_TILE_PX,
    seed: int = 0,
) -> QuantizeResult:
    """Write the int8 (QDQ) version of `onnx_path` to `out_path` and check it; `EngineError` on failure."""
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError as exc:  # onnxruntime.quantization imports onnx
        msg = f"int8 quantisation needs the onnx package (the [train] extra): {exc}"
        raise EngineError(msg) from exc
    if n_tiles < 1 or tile_px < contract.INPUT_MULTIPLE or tile_px % contract.INPUT_MULTIPLE:
        msg = f"need >= 1 tiles of a positive multiple of {contract.INPUT_MULTIPLE} px, got {n_tiles} x {tile_px}"
        raise EngineError(msg)
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    preprocess_cfg = preprocess_cfg or PreprocessConfig()
    n_images, frames = calibration_frames(calibration_dir, preprocess_cfg)
    tiles = calibration_tiles(frames, n_tiles, tile_px, seed)

    class _Tiles(CalibrationDataReader):
        def __init__(self) -> None:
            self._inputs = iter(tiles)

        def get_next(self) -> dict[str, np.ndarray] | None:
            tile = next(self._inputs, None)
            return None if tile is None else {contract.INPUT_NAME: tile}

    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _quiet_preprocessing_advice():
            quantize_static(str(onnx_path), str(out_path), _Tiles(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        reduce_range=True,
                        op_types_to_quantize=list(QUANTISED_OPS))
    except Exception as exc:  # the quantiser's own errors: not ONNX, unsupported graph, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        msg = f"ONNX Runtime could not quantise {onnx_path}: {reason}"
        raise EngineError(msg) from exc
    lookup_requantize_file(out_path)
    agreement = mask_agreement(onnx_path, out_path, frames[:CHECK_FRAMES])
    if agreement < MIN_AGREEMENT:
        out_path.unlink(missing_ok=True)
        msg = (f"the int8 model agrees with {onnx_path.name} on only {agreement:.4f} of the pixels of "
               f"{min(len(frames), CHECK_FRAMES)} calibration frames (needs {MIN_AGREEMENT}); not written")
        raise EngineError(msg)
    digest = file_sha256(out_path)
    record = {
        "file": {"name": out_path.name, "sha256": digest, "bytes": out_path.stat().st_size},
        "method": "onnxruntime.quantization.quantize_static: QDQ, uint8 activations (MinMax ranges), int8 "
                  f"per-channel weights in 7 bits (reduce_range), ops {', '.join(QUANTISED_OPS)}; {LOOKUP_METHOD}",
        "calibration": {"images_dir": str(calibration_dir), "images": n_images, "tiles": n_tiles,
                        "tile_px": tile_px, "seed": seed},
        "agreement_with_fp32": round(agreement, 5),
        "agreement_frames": min(len(frames), CHECK_FRAMES),
        "onnxruntime": ort.__version__,
    }
    logger.info("int8 model %s: %.4f of pixels agree with %s", out_path, agreement, onnx_path.name)
    return QuantizeResult(out_path, digest, agreement, record)


LOOKUP_METHOD = "each DequantizeLinear-Relu-QuantizeLinear requantisation as one QLinearLeakyRelu (alpha 0) lookup"


def lookup_requantize(model: Any) -> int:
    """Replace each DequantizeLinear -> Relu -> QuantizeLinear chain of a QDQ `onnx.ModelProto` by one
    `com.microsoft.QLinearLeakyRelu` with alpha 0, in place; returns how many were replaced.

    Why: the quantiser gives every conv an output range of its own and its ReLU another, so
    ONNX Runtime fuses the conv into a `QLinearConv` but then converts each of its outputs to
    float and back (two full passes over every activation: 40 % of the bundled int8 U-Net's
    time). `QLinearLeakyRelu` does the same conversion through a 256-entry table that ONNX
    Runtime builds with the same dequantise, ReLU and quantise arithmetic, so the model's
    output is bit for bit the same (checked in tests over all 256 input codes), one uint8 pass
    instead of two float ones. Only per-tensor scales qualify; anything else is left as it is.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    scalars = {i.name: numpy_helper.to_array(i) for i in graph.initializer if int(np.prod(i.dims)) == 1}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producer = {name: node for node in graph.node for name in node.output}
    graph_outputs = {o.name for o in graph.output}
    replaced = 0
    for relu in [n for n in graph.node if n.op_type == "Relu" and n.domain in ("", "ai.onnx")]:
        dequantize = producer.get(relu.input[0])
        users = consumers.get(relu.output[0], [])
        if (dequantize is None or dequantize.op_type != "DequantizeLinear" or len(users) != 1
                or users[0].op_type != "QuantizeLinear" or relu.output[0] in graph_outputs
                or len(consumers[dequantize.output[0]]) != 1 or dequantize.output[0] in graph_outputs):
            continue
        quantize = users[0]
        if any(len(n.input) != 3 or n.input[1] not in scalars or n.input[2] not in scalars
               for n in (dequantize, quantize)):
            continue
        if scalars[dequantize.input[2]].dtype != scalars[quantize.input[2]].dtype:
            continue
        lookup = helper.make_node(
            "QLinearLeakyRelu", [*dequantize.input, quantize.input[1], quantize.input[2]], [quantize.output[0]],
            name=f"{relu.name or quantize.output[0]}_lookup", domain="com.microsoft", alpha=0.0)
        position = list(graph.node).index(dequantize)
        for node in (dequantize, relu, quantize):
            graph.node.remove(node)
        graph.node.insert(position, lookup)
        replaced += 1
    if replaced and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return replaced


def lookup_requantize_file(path: Path) -> int:
    """`lookup_requantize` on the ONNX file at `path`, rewritten in place when anything changed."""
    import onnx

    model = onnx.load(str(path))
    replaced = lookup_requantize(model)
    if replaced:
        onnx.save(model, str(path))
    return replaced


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet_preprocessing_advice() -> Iterator[None]:
    """Drop the quantiser's root-logger advice to run its shape pre-processing first.

    Its symbolic shape inference cannot resolve the dynamic H/W, and with the inference
    skipped the pre-processed graph ran no faster here (75 vs 76 ms per 2560x1920 frame).
    """
    advice_filter = _DropAdvice()
    root = logging.getLogger()
    root.addFilter(advice_filter)
    try:
        yield
    finally:
        root.removeFilter(advice_filter)


def mask_agreement(reference_path: Path, candidate_path: Path, frames: list[np.ndarray]) -> float:
    """Share of pixels where two models' U-Net engine masks agree over `frames` (whole frames, tiled)."""

    def engine(path: Path):
        return create_engine(SegmentConfig(engine="unet", backend="cpu", unet=UnetConfig(model=path)))

    reference, candidate = engine(reference_path), engine(candidate_path)
    confusion = np.zeros((contract.N_CLASSES, contract.N_CLASSES), np.int64)
    for frame in frames:
        confusion += confusion_matrix(candidate.segment(frame), reference.segment(frame), contract.N_CLASSES)
    return pixel_accuracy(confusion)
