"""`inspectd synth`: write synthetic coating micrographs with ground-truth masks, or compare
synthetic frames with real ones (`--compare REAL...`).

Generators: `--generator v3` (default; large grainy particles in a streaky lamellar matrix,
`inspectd/data/synth/realistic.py`) or `v2` (the generator the bundled model was trained on;
pass it to reproduce older data sets). `--vary` draws each frame's parameters.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from inspectd.analysis.decode import decode_file
from inspectd.data import synth
from inspectd.errors import ImageDecodeError

EXIT_OK, EXIT_USAGE = 0, 2
DEFAULT_N = 8
DEFAULT_COMPARE_N = 32


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
    parser = subparsers.add_parser(
        "synth",
        description="Write N synthetic frames with masks and sidecar JSON (--out), or, with "
                    "--compare REAL..., print how far v2 and v3 frames are from real micrographs.",
    )
    parser.add_argument("--n", type=int, default=None,
                        help=f"number of images (default: {DEFAULT_N}; with --compare: "
                             f"{DEFAULT_COMPARE_N} frames per generator)")
    parser.add_argument("--size", type=parse_size, default=(1024, 768), metavar="WxH",
                        help="frame size, width x height (default: 1024x768)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--out", default=None, help="output folder (required unless --compare)")
    parser.add_argument("--generator", choices=synth.GENERATORS, default="v3",
                        help="v3: realistic, widely randomised (default); v2: the older lamellar generator")
    parser.add_argument("--masks-dir", default=None, help="write masks here as <stem>.png (default: beside images)")
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), default=8)
    parser.add_argument("--unmelted-fraction", type=float, default=None, help="target unmelted area fraction 0..1")
    parser.add_argument("--pore-fraction", type=float, default=None, help="target pore area fraction 0..1")
    parser.add_argument("--enhance", action=argparse.BooleanOptionalAction, default=None,
                        help="CLAHE-enhanced (--enhance) or raw camera (--no-enhance) frames; default: "
                             "v2 raw, v3 enhanced, v3 with --vary drawn per frame")
    parser.add_argument("--vary", action="store_true", help="draw each image's parameters around the given ones")
    parser.add_argument("--compare", nargs="+", default=None, metavar="REAL",
                        help="real micrographs (already CLAHE-enhanced, like the seed project's tiles): "
                             "print distances of v2 and v3 frames to them and exit")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.compare:
        return _run_compare(args)
    if args.out is None:
        print("inspectd synth: --out is required (or use --compare REAL...)", file=sys.stderr)
        return EXIT_USAGE
    n = DEFAULT_N if args.n is None else args.n
    overrides: dict[str, object] = {"bit_depth": args.bit_depth}
    if args.generator == "v2":
        if args.unmelted_fraction is not None:
            overrides["unmelted_fraction"] = args.unmelted_fraction
        base: synth.SynthParams | synth.RealisticParams = synth.SynthParams()
    else:
        if args.unmelted_fraction is not None:
            overrides["particle_fraction"] = args.unmelted_fraction
        base = synth.RealisticParams()
    if args.pore_fraction is not None:
        overrides["pore_fraction"] = args.pore_fraction
    params = dataclasses.replace(base, **overrides)
    width, height = args.size
    paths = synth.write_dataset(args.out, n, height, width, args.seed, params=params, vary=args.vary,
                                masks_dir=args.masks_dir, generator=args.generator, enhance=args.enhance)
    print(f"wrote {len(paths)} {args.generator} image(s) with masks and sidecar JSON to {args.out}")
    return EXIT_OK


def _run_compare(args: argparse.Namespace) -> int:
    from inspectd.data.synth import compare

    n = DEFAULT_COMPARE_N if args.n is None else args.n
    if n < 1:
        print(f"inspectd synth --compare: --n must be >= 1, got {n}", file=sys.stderr)
        return EXIT_USAGE
    real_images = []
    for path in args.compare:
        try:
            frames = decode_file(path)
        except ImageDecodeError as exc:
            print(f"inspectd synth --compare: cannot use {exc}", file=sys.stderr)
            return EXIT_USAGE
        except OSError as exc:
            print(f"inspectd synth --compare: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
        real_images += [frame.pixels for frame in frames]
    sizes = [image.shape[:2] for image in real_images]
    results = {
        generator: compare.compare(
            real_images, compare.synthetic_frames(generator, n, sizes, args.seed), seed=args.seed
        )
        for generator in synth.GENERATORS
    }
    first = next(iter(results.values()))
    print(f"real: {len(real_images)} image(s) ({first.real_patches} patches of "
          f"{compare.PATCH_PX}x{compare.PATCH_PX} px); synthetic: {n} frames per generator at the "
          f"real images' sizes, --seed {args.seed}, parameters varied per frame")
    print("state: 8-bit, CLAHE-enhanced (real frames as given; synthetic frames drawn enhanced)")
    print(compare.format_table(results))
    return EXIT_OK
