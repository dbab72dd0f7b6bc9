"""A finished training run -> the files a station runs: `model.onnx`, its card `model.json`, and
`model.int8.onnx` when the int8 twin agrees with it.

Why here and not left to `inspectd export` / `inspectd quantize`: a user who fine-tunes on
their own fields wants a model they can point `inspectd analyze --model` at, not a
checkpoint and two more commands. Both steps keep their checks: the ONNX file must match
torch to 1e-4 (`export.verify_onnx`), and the int8 file is written only when its masks
agree with fp32 on `quantize.MIN_AGREEMENT` of the pixels of the training images;
otherwise the card says why there is none.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inspectd.analysis.engines.unet import file_sha256
from inspectd.errors import EngineError
from inspectd.training.export import export_checkpoint
from inspectd.training.quantize import quantize_model
from inspectd.training.train import BEST_NAME, TrainSettings

logger = logging.getLogger(__name__)

MODEL_NAME, CARD_NAME, INT8_NAME = "model.onnx", "model.json", "model.int8.onnx"


@dataclass(frozen=True)
class ReleasedModel:
    """What `write_model` wrote; `int8_path` is None when the int8 twin was refused."""

    onnx_path: Path
    card_path: Path
    int8_path: Path | None
    int8_note: str
    card: dict[str, Any]


def write_model(settings: TrainSettings, heldout_metrics: dict[str, Any] | None = None) -> ReleasedModel:
    """Export `best.pt` of `settings.out_dir` with its card, then try the int8 twin."""
    out_dir = Path(settings.out_dir)
    onnx_path, card_path = out_dir / MODEL_NAME, out_dir / CARD_NAME
    exported = export_checkpoint(out_dir / BEST_NAME, onnx_path, card_path=card_path,
                                 heldout_metrics=heldout_metrics, training_command=settings.command)
    card = dict(exported.card)
    if settings.init_model is not None:
        init = Path(settings.init_model)
        card["init"] = {"model": str(init), "sha256": file_sha256(init),
                        "method": "fine-tuned from this file's weights (inspectd.training.onnx_import); "
                                  "BatchNorm statistics kept from it"}
    int8_path: Path | None = out_dir / INT8_NAME
    try:
        quantized = quantize_model(onnx_path, settings.images_dir, int8_path, preprocess_cfg=settings.preprocess)
        card["int8"] = {**quantized.record, "heldout": None}
        note = f"int8 twin agrees with fp32 on {quantized.agreement:.2%} of the pixels"
    except EngineError as exc:
        int8_path = None
        card["int8"] = {"written": False, "reason": str(exc)}
        note = f"no int8 twin: {exc}"
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s and %s; %s", onnx_path, card_path, note)
    return ReleasedModel(onnx_path, card_path, int8_path, note, card)
