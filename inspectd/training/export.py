"""Checkpoint -> ONNX (dynamic batch, height, width) + a model card JSON beside it.

Why the check: an export that silently changes the numbers (an op lowered differently, a
BatchNorm left in training mode) would only show as worse masks on the line. So every
export runs the torch model and ONNX Runtime on the same random input of a non-square size
(and batch 2) and refuses the file if any output differs by 1e-4 or more.

A guided U-Net (`output_stride` > 1) is exported without its full-resolution step: the
file returns the coarse pairs (`affine`), and the engine applies them to the frame with
`kernels.guided_argmax`, which is checked against `guided_logits` in the tests.

Why the legacy TorchScript exporter (`dynamo=False`): it needs no `onnxscript`, folds each
BatchNorm into its conv, and writes the same bytes for the same weights.

The model card records what a user needs to trust and reproduce the file: architecture,
parameters, GFLOPs per 512x512 tile, the input contract, the preprocessing, the data and
command that trained it, validation and held-out metrics, the sha256 of the .onnx, and the
out-of-distribution `envelope` (`inspectd.analysis.ood`): the range of frame statistics over the
training images (or the `envelope_images` given), against which the engine flags every
frame on the line. Without images the card's envelope is null and the engine falls back
to the classical envelope, with a warning.

Example:
    >>> import tempfile; from pathlib import Path
    >>> from inspectd.training.model import UNet
    >>> path = Path(tempfile.mkdtemp()) / "tiny.onnx"
    >>> model = UNet(widths=(4, 8, 16), output_stride=1).eval()
    >>> export_onnx(model, path)
    >>> verify_onnx(model, path) < 1e-4
    True
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import warnings
from collections.abc import Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from inspectd.analysis.engines import unet_contract as contract
from inspectd.analysis.engines.unet import file_sha256
from inspectd.config import PreprocessConfig
from inspectd.errors import EngineError
from inspectd.training.envelopes import envelope_from_images
from inspectd.training.model import UNet, count_parameters, multiply_accumulates
from inspectd.training.train import contract_record, load_checkpoint

logger = logging.getLogger(__name__)

OPSET = 17
TOLERANCE = 1e-4
CARD_FORMAT = "inspectd-model-card/1"
# Batch 2, non-square, not a power of two: catches fixed-size and transposed-axis exports.
VERIFY_SHAPE = (2, 1, 96, 160)


@dataclass(frozen=True)
class ExportResult:
    """Where the files went and what the parity check measured."""

    onnx_path: Path
    card_path: Path | None
    sha256: str
    max_abs_diff: float
    card: dict[str, Any]


class _CoarsePairs(torch.nn.Module):
    """What a guided U-Net's ONNX file computes: `UNet.affine`."""

    def __init__(self, model: UNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.affine(image)


def exported_module(model: UNet) -> tuple[torch.nn.Module, str]:
    """The module that goes into the ONNX file and its output name (`logits`, or `affine` if guided)."""
    if model.output_stride == 1:
        return model, contract.OUTPUT_NAME
    # In the model's own mode: the exporter restores the wrapper's mode afterwards, and a
    # fresh module is in training mode, which would leave the model training (BatchNorm
    # statistics updated by the next forward pass).
    return _CoarsePairs(model).train(model.training), contract.AFFINE_OUTPUT_NAME


def export_onnx(model: UNet, onnx_path: str | Path, opset: int = OPSET) -> None:
    """Write `model` (switched to eval mode) as ONNX with dynamic batch, height and width."""
    if opset < 17:
        msg = f"opset {opset} is too old; use >= 17"
        raise ValueError(msg)
    model.eval()
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    size = 2 * model.downsampling
    dynamic = {0: "batch", 2: "height", 3: "width"}
    module, output_name = exported_module(model)
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            module,
            (torch.zeros(1, model.in_channels, size, size),),
            str(onnx_path),
            input_names=[contract.INPUT_NAME],
            output_names=[output_name],
            dynamic_axes={contract.INPUT_NAME: dynamic, output_name: dynamic},
            opset_version=opset,
            do_constant_folding=True,
            training=torch.onnx.TrainingMode.EVAL,
            dynamo=False,
        )
    logger.info("exported %s (%d bytes, opset %d)", onnx_path, onnx_path.stat().st_size, opset)


def verify_onnx(model: UNet, onnx_path: str | Path, shape: tuple[int, ...] = VERIFY_SHAPE,
                seed: int = 0) -> float:
    """Max |torch - ONNX Runtime| over the outputs of one random input; EngineError if >= 1e-4."""
    inputs = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    model.eval()
    module, output_name = exported_module(model)
    with torch.no_grad():
        expected = module(torch.from_numpy(inputs)).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (actual,) = session.run([output_name], {contract.INPUT_NAME: inputs})
    if actual.shape != expected.shape:
        msg = f"{onnx_path}: ONNX Runtime gave '{output_name}' of shape {actual.shape}, torch {expected.shape}"
        raise EngineError(msg)
    max_abs_diff = float(np.max(np.abs(actual - expected)))
    if not max_abs_diff < TOLERANCE:
        msg = (f"{onnx_path}: ONNX Runtime and torch differ by up to {max_abs_diff:.3g} on a "
               f"{list(shape)} input (tolerance {TOLERANCE}); the export is not trusted")
        raise EngineError(msg)
    return max_abs_diff


def architecture_summary(model: UNet) -> str:
    """One sentence on the layout, for the model card.

    >>> architecture_summary(UNet(widths=(4, 8, 16), output_stride=1))[:40]
    'U-Net: 3 levels (2 max-pools), two 3x3 c'
    """
    levels, pools = len(model.widths), len(model.widths) - 1
    folded = "; BatchNorm folded into the convs in the ONNX file"
    if model.output_stride == 1:
        return (f"U-Net: {levels} levels ({pools} max-pools), two 3x3 conv+BN+ReLU per encoder level, decoder "
                "levels 1x1 narrow -> bilinear x2 -> concat skip -> 3x3 conv+BN+ReLU, 1x1 head" + folded)
    stride = model.output_stride
    return (f"guided U-Net: {stride}x{stride} stride-{stride} conv stem, then {levels} levels at 1/{stride} "
            f"({pools} max-pools; 3x3 conv+BN+ReLU, two per level below the first), decoder levels 1x1 narrow -> "
            "bilinear x2 -> add skip -> 3x3 conv+BN+ReLU, 1x1 head to 3 per-class (a, b) pairs; full-resolution "
            f"logit = a + b * image with (a, b) upsampled {stride}x bilinearly" + folded)


def export_checkpoint(
    checkpoint_path: str | Path,
    onnx_path: str | Path,
    card_path: str | Path | None = None,
    heldout_metrics: dict[str, Any] | None = None,
    training_command: str | None = None,
    write_card: bool = True,
    envelope_images: Sequence[str | Path] | None = None,
) -> ExportResult:
    """`inspectd export`: checkpoint -> verified ONNX + model card (default: same stem, .json).

    `envelope_images`: image files or folders for the card's envelope; None = the training
    images the checkpoint names (`data.images_dir`), when that folder is still there.
    """
    model, checkpoint = load_checkpoint(checkpoint_path)
    onnx_path = Path(onnx_path)
    export_onnx(model, onnx_path)
    max_abs_diff = verify_onnx(model, onnx_path)
    digest = file_sha256(onnx_path)
    card = model_card(model, checkpoint, onnx_path, digest, max_abs_diff, heldout_metrics,
                      training_command)
    if write_card:
        card["envelope"] = card_envelope(checkpoint, envelope_images)
    written = None
    if write_card:
        written = Path(card_path) if card_path else onnx_path.with_suffix(".json")
        written.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return ExportResult(onnx_path, written, digest, max_abs_diff, card)


def card_envelope(checkpoint: dict[str, Any], envelope_images: Sequence[str | Path] | None) -> dict[str, Any] | None:
    """The out-of-distribution envelope of the images a model was trained on, enhanced as it was trained."""
    if envelope_images is None:
        images_dir = checkpoint.get("data", {}).get("images_dir")
        if not images_dir or not Path(images_dir).is_dir():
            logger.warning("the model card gets no out-of-distribution envelope: the training images (%s) are not "
                           "here; pass --envelope-images", images_dir or "not recorded")
            return None
        envelope_images = [images_dir]
    preprocess = PreprocessConfig.model_validate(checkpoint.get("preprocess") or {})
    return envelope_from_images(envelope_images, preprocess,
                                sources=[f"training images: {', '.join(map(str, envelope_images))}"])


def model_card(
    model: UNet,
    checkpoint: dict[str, Any],
    onnx_path: Path,
    sha256: str,
    max_abs_diff: float,
    heldout_metrics: dict[str, Any] | None = None,
    training_command: str | None = None,
) -> dict[str, Any]:
    """The card's content (see the module docstring); JSON-able."""
    macs = multiply_accumulates(model, 512, 512)
    data = dict(checkpoint.get("data", {}))
    train_ids, val_ids = data.pop("train_ids", []), data.pop("val_ids", [])
    data.update(n_train_images=len(train_ids), n_val_images=len(val_ids))
    train_settings = checkpoint.get("train", {})
    return {
        "format": CARD_FORMAT,
        "name": onnx_path.stem,
        "created_utc": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "file": {"name": onnx_path.name, "sha256": sha256, "bytes": onnx_path.stat().st_size,
                 "opset": OPSET, "dynamic_axes": ["batch", "height", "width"]},
        "architecture": {
            **model.architecture(),
            "summary": architecture_summary(model),
            "parameters": count_parameters(model),
            "gmacs_per_512x512": round(macs / 1e9, 3),
            "gflops_per_512x512": round(2 * macs / 1e9, 3),
        },
        "contract": contract_record(model.output_stride),
        "preprocess": checkpoint.get("preprocess"),
        "training": {
            "command": training_command or train_settings.get("command"),
            "train_command": train_settings.get("command"),
            "settings": train_settings,
            "data": data,
            "best_epoch": checkpoint.get("epoch"),
            "versions": checkpoint.get("versions"),
        },
        "validation": checkpoint.get("metrics"),
        "calibration": checkpoint.get("calibration"),
        "heldout": heldout_metrics,
        "export_check": {"max_abs_diff": max_abs_diff, "tolerance": TOLERANCE,
                         "input_shape": list(VERIFY_SHAPE), "onnxruntime": ort.__version__,
                         "torch": torch.__version__},
    }
