"""`inspectd synth`: write synthetic coating micrographs with ground-truth masks."""

from __future__ import annotations

import argparse
import dataclasses

from inspectd import synth


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (width, height)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        msg = f"size must look like 2560x1920 (width x height), got {text!r}"
        raise argparse.ArgumentTypeError(msg) from exc
    if width < 16 or height < 16:
        msg = f"size must be at least 16x16, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return width, height


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("synth", help="generate synthetic micrographs with class-index masks")
    parser.add_argument("--n", type=int, default=8, help="number of images (default: %(default)s)")
    parser.add_argument("--size", type=parse_size, default=(1024, 768), metavar="WxH",
                        help="frame size, width x height (default: 1024x768)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--masks-dir", default=None, help="write masks here as <stem>.png (default: beside images)")
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), default=8)
    parser.add_argument("--unmelted-fraction", type=float, default=None, help="target unmelted area fraction 0..1")
    parser.add_argument("--pore-fraction", type=float, default=None, help="target pore area fraction 0..1")
    parser.add_argument("--vary", action="store_true", help="draw each image's parameters around the given ones")
    return parser


def run(args: argparse.Namespace) -> int:
    overrides = {"bit_depth": args.bit_depth}
    if args.unmelted_fraction is not None:
        overrides["unmelted_fraction"] = args.unmelted_fraction
    if args.pore_fraction is not None:
        overrides["pore_fraction"] = args.pore_fraction
    params = dataclasses.replace(synth.SynthParams(), **overrides)
    width, height = args.size
    paths = synth.write_dataset(args.out, args.n, height, width, args.seed, params=params, vary=args.vary,
                                masks_dir=args.masks_dir)
    print(f"wrote {len(paths)} image(s) with masks and sidecar JSON to {args.out}")
    return 0
