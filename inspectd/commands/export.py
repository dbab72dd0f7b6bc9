"""`inspectd export`: a training checkpoint -> verified ONNX + model card (needs the [train] extra).

torch is imported only when the command runs, so the rest of the CLI works without it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from inspectd.errors import EngineError, ImageDecodeError

EXIT_OK, EXIT_USAGE, EXIT_ERROR = 0, 2, 3
TRAIN_EXTRA_HINT = "pip install torch==2.13.0 && pip install -e '.[train]'"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        description="Fails (exit 3) when ONNX Runtime and torch disagree by 1e-4 or more on a random input.",
    )
    parser.add_argument("--checkpoint", required=True, help="best.pt / last.pt from inspectd train")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--card", default=None,
                        help="model card JSON to write (default: beside --out, same stem, .json)")
    parser.add_argument("--no-card", action="store_true", help="write no model card")
    parser.add_argument("--metrics", default=None,
                        help="JSON file of held-out metrics to record in the card (e.g. from inspectd evaluate)")
    parser.add_argument("--training-command", default=None,
                        help="the command line(s) that produced the training data and checkpoint, for the card")
    parser.add_argument("--envelope-images", action="append", default=None, metavar="PATH",
                        help="image file or folder for the card's out-of-distribution envelope (repeatable; "
                        "default: the checkpoint's training images folder)")
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401  (the [train] extra)
    except ImportError:
        print(f"inspectd export needs torch (the [train] extra): {TRAIN_EXTRA_HINT}", file=sys.stderr)
        return EXIT_USAGE
    from inspectd.training.export import export_checkpoint

    heldout = None
    if args.metrics:
        try:
            heldout = json.loads(Path(args.metrics).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            print(f"inspectd export: could not read --metrics {args.metrics}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        result = export_checkpoint(args.checkpoint, args.out, card_path=args.card, heldout_metrics=heldout,
                                   training_command=args.training_command, write_card=not args.no_card,
                                   envelope_images=args.envelope_images)
    except (EngineError, ImageDecodeError, ValueError) as exc:
        print(f"inspectd export: {exc}", file=sys.stderr)
        return EXIT_ERROR
    arch = result.card["architecture"]
    print(f"wrote {result.onnx_path} ({result.onnx_path.stat().st_size / 1e6:.1f} MB, sha256 {result.sha256[:16]}..., "
          f"{arch['parameters'] / 1e6:.2f} M parameters, {arch['gflops_per_512x512']:.2f} GFLOPs/512x512); "
          f"ONNX Runtime vs torch max |diff| {result.max_abs_diff:.2e}"
          + (f"; card {result.card_path}" if result.card_path else "")
          + (f" with an out-of-distribution envelope of {result.card['envelope']['n_frames']} frames"
             if result.card.get("envelope") else ""))
    return EXIT_OK
