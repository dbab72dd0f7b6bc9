#!/usr/bin/env python3
"""Held-out metrics of an exported U-Net (ONNX Runtime) against the classical engine.

Used by `scripts/train_bundled_model.sh` to fill the model card's `heldout` section; the
general tool is `inspectd evaluate`. For each image + mask pair (matched by stem, mask
convention detected as in training): decode, enhance with the pipeline's CLAHE, then
- U-Net at each working scale: the U-Net engine as the daemon runs it (default tiles;
  INTER_AREA down when scale < 1, mask back with nearest neighbour);
- the classical engine with the default config.
IoU per class is computed (`inspectd.data.scores`) on the confusion matrix summed over all
images; fractions are per image. Also times ONNX Runtime on a 512x512 tile with 2 threads (min of repeats).

    python scripts/heldout_metrics.py --onnx model.onnx --images DIR --masks DIR --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from inspectd.analysis.decode import decode_file
from inspectd.analysis.engines import unet_contract as contract
from inspectd.analysis.engines.registry import create_engine
from inspectd.analysis.preprocess import enhance
from inspectd.config import PreprocessConfig, SegmentConfig, UnetConfig
from inspectd.data.labelled import (
    MaskConvention,
    detect_set_convention,
    find_pairs,
    read_mask,
    to_class_index,
)
from inspectd.data.scores import confusion_matrix, iou_per_class, pixel_accuracy
from inspectd.types import CLASS_NAMES

N_CLASSES = contract.N_CLASSES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--masks", required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--scales", default="1.0,0.5,0.25", help="U-Net working scales (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    args = parser.parse_args(argv)

    scales = [float(s) for s in args.scales.split(",")]
    pairs = find_pairs(args.images, args.masks)
    convention = detect_set_convention(pairs)
    if convention is MaskConvention.MIXED:
        print(f"heldout_metrics: masks mix {convention.describe()}; score one convention at a time", file=sys.stderr)
        return 2
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(args.onnx, options, providers=["CPUExecutionProvider"])
    engines = {"classical": create_engine(SegmentConfig(engine="classical"))}
    for scale in scales:
        unet_cfg = UnetConfig(model=args.onnx, scale=scale, intra_op_threads=args.threads)
        engines[f"unet@{scale:g}"] = create_engine(SegmentConfig(engine="unet", backend="cpu", unet=unet_cfg))
    for engine in engines.values():
        engine.load()
    confusion = {name: np.zeros((N_CLASSES, N_CLASSES), np.int64) for name in engines}
    fraction_errors = {name: {"unmelted_pct": [], "porosity_pct": []} for name in engines}
    for pair in pairs:
        truth = to_class_index(read_mask(pair.mask_path), convention)
        enhanced = enhance(decode_file(pair.image_path)[0].pixels, PreprocessConfig())
        for name, engine in engines.items():
            predicted = engine.segment(enhanced)
            confusion[name] += confusion_matrix(predicted, truth, N_CLASSES)
            for key, cls in (("unmelted_pct", 1), ("porosity_pct", 2)):
                error = 100.0 * (np.count_nonzero(predicted == cls) - np.count_nonzero(truth == cls)) / truth.size
                fraction_errors[name][key].append(error)
        print(f"{pair.sample_id}: " + ", ".join(
            f"{name} IoU(unmelted) {iou_per_class(confusion[name])[1]:.3f}" for name in engines), file=sys.stderr)

    report = {
        "images": len(pairs),
        "images_dir": str(args.images),
        "mask_convention": convention.value,
        "method": "IoU per class on the confusion matrix summed over all held-out images; "
                  "U-Net = the U-Net engine (ONNX Runtime, default tiles) at the given working scale "
                  "(INTER_AREA down, nearest-neighbour mask back up below 1); classical = default config",
        "engines": {},
        "onnxruntime_ms_per_512x512_tile": tile_latency_ms(session),
        "latency_threads": args.threads,
        "machine": {"cpu": _cpu_model(), "python": platform.python_version(), "onnxruntime": ort.__version__},
    }
    for name in engines:
        ious = iou_per_class(confusion[name])
        report["engines"][name] = {
            **{f"iou_{CLASS_NAMES[c]}": round(float(ious[c]), 4) for c in range(N_CLASSES)},
            "iou_mean": round(float(np.nanmean(ious)), 4),
            "pixel_accuracy": round(pixel_accuracy(confusion[name]), 4),
            **{f"mean_abs_error_{k}": round(float(np.mean(np.abs(v))), 3) for k, v in fraction_errors[name].items()},
        }
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for name, metrics in report["engines"].items():
        print(f"{name:10s} " + " ".join(f"{k}={v}" for k, v in metrics.items()))
    print(f"ONNX Runtime, {args.threads} threads: {report['onnxruntime_ms_per_512x512_tile']:.1f} ms per 512x512 tile")
    return 0


def tile_latency_ms(session: ort.InferenceSession, repeats: int = 15) -> float:
    tile = np.random.default_rng(0).standard_normal((1, 1, 512, 512), dtype=np.float32)
    output_names = [session.get_outputs()[0].name]
    for _ in range(3):
        session.run(output_names, {contract.INPUT_NAME: tile})
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(output_names, {contract.INPUT_NAME: tile})
        times.append(time.perf_counter() - started)
    return round(1000.0 * min(times), 2)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
