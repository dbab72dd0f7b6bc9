"""`inspectd train`: train the coating U-Net on labelled micrographs (needs the [train] extra).

torch is imported only when the command runs, so `inspectd --help` and every other
sub-command work without it; without it this command says how to install it in one line.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from inspectd import config

EXIT_OK, EXIT_USAGE = 0, 2
TRAIN_EXTRA_HINT = "pip install torch==2.13.0 && pip install -e '.[train]'"


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError as exc:
        msg = f"widths must look like 8,16,32,64,256, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from exc
    return widths


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train the U-Net on image + mask pairs (writes best.pt, last.pt, history.json, curve.png)",
        description="Masks are matched to images by file stem; class indices {0,1,2}, binary {0,1} "
        "(1 = unmelted) and {0,255} (255 = unmelted) are detected automatically. The split into "
        "training and validation images is made before augmentation.",
    )
    parser.add_argument("--images", required=True, help="folder of micrographs (PNG, TIFF, BMP, JPEG)")
    parser.add_argument("--masks", required=True, help="folder of masks named like the images")
    parser.add_argument("--out", required=True, help="output folder for checkpoints, history and curve")
    parser.add_argument("--epochs", type=int, default=30, help="(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="tiles per step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate, one-cycle schedule (default: %(default)s)")
    parser.add_argument("--tile", type=int, default=256, help="training tile side, px, multiple of 32 (default: %(default)s)")
    parser.add_argument("--tiles-per-epoch", type=int, default=None,
                        help="augmented tiles per epoch (default: 8 per training image)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of images kept for validation (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--widths", type=_widths, default=None, metavar="W0,W1,...",
                        help="channels per level, finest first (default: 16,32,64,192, the bundled v2 model's)")
    parser.add_argument("--output-stride", type=int, default=4, choices=(1, 2, 4, 8),
                        help="1: logits at full resolution (the v1 layout); >1: guided U-Net running at 1/stride "
                             "with a per-pixel affine head (default: %(default)s, the bundled v2 model's)")
    parser.add_argument("--min-scale", type=float, default=0.5,
                        help="tiles are also drawn downscaled to this factor, for segment.unet.scale < 1 (default: %(default)s)")
    parser.add_argument("--config", default=None,
                        help="YAML config whose preprocess section (CLAHE) the images get (default: built-in)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def command_line(args: argparse.Namespace) -> str:
    """The effective `inspectd train ...` line (every option spelled out), for the records."""
    parts = ["inspectd", "train", "--images", args.images, "--masks", args.masks, "--out", args.out,
             "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
             "--tile", str(args.tile), "--val-fraction", str(args.val_fraction), "--seed", str(args.seed),
             "--min-scale", str(args.min_scale), "--output-stride", str(args.output_stride)]
    if args.tiles_per_epoch is not None:
        parts += ["--tiles-per-epoch", str(args.tiles_per_epoch)]
    if args.widths is not None:
        parts += ["--widths", ",".join(str(w) for w in args.widths)]
    if args.config is not None:
        parts += ["--config", args.config]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401  (the [train] extra)
    except ImportError:
        print(f"inspectd train needs torch (the [train] extra): {TRAIN_EXTRA_HINT}", file=sys.stderr)
        return EXIT_USAGE
    from tqdm import tqdm

    from inspectd.unet.augment import AugmentSettings
    from inspectd.unet.model import DEFAULT_WIDTHS
    from inspectd.unet.train import TrainSettings, format_metric, train

    cfg = config.load(args.config)
    settings = TrainSettings(
        images_dir=Path(args.images),
        masks_dir=Path(args.masks),
        out_dir=Path(args.out),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        tile_px=args.tile,
        val_fraction=args.val_fraction,
        seed=args.seed,
        tiles_per_epoch=args.tiles_per_epoch,
        widths=args.widths or DEFAULT_WIDTHS,
        output_stride=args.output_stride,
        augment=AugmentSettings(scale_range=(args.min_scale, 1.0)),
        preprocess=cfg.preprocess,
        command=command_line(args),
    )
    result = train(settings, progress=not args.quiet, say=lambda line: tqdm.write(line, file=sys.stderr))
    best = {key: format_metric(value) for key, value in result.best_metrics.items()}
    print(f"best epoch {result.best_epoch}/{args.epochs}: validation IoU mean {best['val_iou_mean']}, "
          f"unmelted {best['val_iou_unmelted']}, pore {best['val_iou_pore']}, melted "
          f"{best['val_iou_melted']}; mask convention {result.mask_convention}; "
          f"{result.seconds / 60:.1f} min; wrote {result.out_dir}")
    return EXIT_OK
