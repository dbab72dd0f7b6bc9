"""`inspectd build-engine --onnx X --fp16 [--int8 --calib DIR] --out X.plan`: a TensorRT plan for the U-Net.

Build on the machine that will run it (a plan is tied to the GPU model and the TensorRT
version), then set `segment.unet.engine_plan: X.plan` and `segment.backend: tensorrt`
(or `auto`). Without TensorRT this prints one line and exits 2.

Exit codes: 0 built; 2 usage error, TensorRT missing, model or build error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inspectd import config
from inspectd.errors import EngineError

EXIT_OK, EXIT_USAGE = 0, 2


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "build-engine",
        description="Exit code: 0 built, 2 usage error, TensorRT missing, or build error.",
    )
    parser.add_argument("--onnx", default=None, help="ONNX model (default: the bundled unet-coating-v3.onnx)")
    parser.add_argument("--out", required=True, help="plan file to write, e.g. unet.plan")
    parser.add_argument("--fp16", action="store_true", help="allow fp16 kernels (recommended)")
    parser.add_argument("--int8", action="store_true", help="allow int8 kernels, calibrated on --calib images")
    parser.add_argument("--calib", default=None, metavar="DIR", help="folder of micrographs for int8 calibration")
    parser.add_argument("--tile-px", type=int, default=512, help="largest (and optimal) tile side (default: %(default)s)")
    parser.add_argument("--min-tile-px", type=int, default=64, help="smallest tile side (default: %(default)s)")
    parser.add_argument("--max-batch", type=int, default=4, help="most tiles per call (default: %(default)s)")
    parser.add_argument("--workspace-mib", type=int, default=2048, help="builder workspace (default: %(default)s)")
    parser.add_argument("--config", default=None, help="YAML config (its preprocess section shapes calibration)")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.int8 and not args.calib:
        print("inspectd build-engine: --int8 needs --calib DIR (a folder of micrographs)", file=sys.stderr)
        return EXIT_USAGE
    # Imported here: the TensorRT builder module is only needed by this command.
    from inspectd.analysis.engines.unet import bundled_model_path
    from inspectd.training.tensorrt_build import BuildOptions, build_engine_plan

    cfg = config.load(args.config)
    options = BuildOptions(
        fp16=args.fp16,
        int8=args.int8,
        calib_dir=Path(args.calib) if args.calib else None,
        tile_px=args.tile_px,
        min_tile_px=args.min_tile_px,
        max_batch=args.max_batch,
        workspace_mib=args.workspace_mib,
    )
    onnx_path = Path(args.onnx) if args.onnx else bundled_model_path()
    try:
        plan_path = build_engine_plan(onnx_path, Path(args.out), options, cfg.preprocess)
    except EngineError as exc:
        print(f"inspectd build-engine: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {plan_path} (set segment.unet.engine_plan: {plan_path})")
    return EXIT_OK
