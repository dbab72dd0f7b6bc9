"""`inspectd quantize`: an fp32 ONNX U-Net -> int8 (static, QDQ), checked against the fp32 file.

Calibration tiles come from `--calib` (micrographs like the line's, or `inspectd synth`
output), enhanced with the config's preprocessing. With `--card`, the model card gains an
`int8` section (file, sha256, calibration, agreement with fp32, and `--metrics` if given).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from inspectd import config
from inspectd.errors import ConfigError, EngineError

EXIT_OK, EXIT_USAGE, EXIT_ERROR = 0, 2, 3


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "quantize",
        description="Fails (exit 3) when the int8 model's masks disagree with the fp32 model's on more than "
                    "2 %% of the pixels of the first calibration frames (inspectd.training.quantize.MIN_AGREEMENT).",
    )
    parser.add_argument("--onnx", required=True, help="the fp32 model (e.g. from inspectd export)")
    parser.add_argument("--calib", required=True, help="folder of micrographs to draw calibration tiles from")
    parser.add_argument("--out", required=True, help="the int8 .onnx file to write")
    parser.add_argument("--tiles", type=int, default=None, help="calibration tiles (default: 64)")
    parser.add_argument("--tile", type=int, default=None, help="tile side, px (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="tile positions (default: %(default)s)")
    parser.add_argument("--card", default=None, help="model card JSON to add the `int8` section to")
    parser.add_argument("--metrics", default=None, help="held-out metrics JSON of the int8 file, for the card")
    parser.add_argument("--config", default=None, help="config whose preprocessing the pipeline uses")
    return parser


def run(args: argparse.Namespace) -> int:
    from inspectd.training.quantize import DEFAULT_TILE_PX, DEFAULT_TILES, quantize_model

    try:
        cfg = config.load(args.config)
        metrics = json.loads(Path(args.metrics).read_text(encoding="utf-8")) if args.metrics else None
        card = json.loads(Path(args.card).read_text(encoding="utf-8")) if args.card else None
    except ConfigError as exc:
        print(f"inspectd quantize: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError) as exc:
        print(f"inspectd quantize: could not read --card / --metrics: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = quantize_model(args.onnx, args.calib, args.out, preprocess_cfg=cfg.preprocess,
                                n_tiles=args.tiles or DEFAULT_TILES, tile_px=args.tile or DEFAULT_TILE_PX,
                                seed=args.seed)
    except EngineError as exc:
        print(f"inspectd quantize: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if card is not None:
        card["int8"] = {**result.record, "heldout": metrics}
        Path(args.card).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {result.path} ({result.path.stat().st_size / 1e6:.1f} MB, sha256 {result.sha256[:16]}...); "
          f"masks agree with the fp32 model on {result.agreement:.2%} of the pixels"
          + (f"; card {args.card}" if card is not None else ""))
    return EXIT_OK
