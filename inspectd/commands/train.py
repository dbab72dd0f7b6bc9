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
# From scratch: the bundled models' recipe. Fine-tuning (--init): a gentler peak rate, so the
# few labelled fields adjust the model instead of overwriting it, and enough tiles per epoch
# that one field still gives a model in a few minutes on two CPU cores.
SCRATCH_DEFAULTS = {"epochs": 30, "lr": 3e-3}
FINE_TUNE_DEFAULTS = {"epochs": 12, "lr": 1e-3, "tiles_per_epoch": 160, "replay": 32}
TRAIN_EXTRA_HINT = "pip install torch==2.13.0 && pip install -e '.[train]'"


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError as exc:
        msg = f"widths must look like 8,16,32,64,256, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from exc
    return widths


def _oversample(text: str) -> tuple[str, float]:
    pattern, _, factor = text.rpartition("=")
    try:
        value = float(factor)
    except ValueError:
        value = -1.0
    if not pattern or not value > 0:
        msg = f"oversample must look like real_*=40 (a stem glob and a factor > 0), got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return pattern, value


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        description="Masks are matched to images by file stem; class indices {0,1,2}, binary {0,1} "
        "(1 = unmelted) and {0,255} (255 = unmelted) are detected automatically. The split into "
        "training and validation images is made before augmentation.",
    )
    parser.add_argument("--init", default=None, metavar="bundled|PATH",
                        help="fine-tune this model instead of training from scratch: 'bundled' (the shipped "
                             "U-Net) or an .onnx file written by inspectd (e.g. an earlier run's model.onnx)")
    parser.add_argument("--images", required=True, help="folder of micrographs (PNG, TIFF, BMP, JPEG)")
    parser.add_argument("--masks", required=True, help="folder of masks named like the images")
    parser.add_argument("--out", required=True, help="output folder for checkpoints, history and curve")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"(default: {SCRATCH_DEFAULTS['epochs']}; with --init {FINE_TUNE_DEFAULTS['epochs']})")
    parser.add_argument("--batch-size", type=int, default=8, help="tiles per step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=None,
                        help=f"peak learning rate, one-cycle schedule (default: {SCRATCH_DEFAULTS['lr']}; "
                             f"with --init {FINE_TUNE_DEFAULTS['lr']})")
    parser.add_argument("--tile", type=int, default=256, help="training tile side, px, multiple of 32 (default: %(default)s)")
    parser.add_argument("--tiles-per-epoch", type=int, default=None,
                        help="augmented tiles per epoch (default: 8 per training image; with --init at least "
                             f"{FINE_TUNE_DEFAULTS['tiles_per_epoch']})")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of images kept for validation; with one image, the share of its longer side "
                             "kept as a validation strip (default: %(default)s)")
    parser.add_argument("--val-images", default=None, help="a fixed validation set instead of a split (with --val-masks)")
    parser.add_argument("--val-masks", default=None, help="masks of --val-images")
    parser.add_argument("--replay", type=int, default=None, metavar="N",
                        help="mix N generated v3 frames (exact class masks) into training, 30 %% of the tiles, so a "
                             f"fine-tuned model keeps what your few fields cannot teach, e.g. pores (default: with "
                             f"--init {FINE_TUNE_DEFAULTS['replay']}, else 0)")
    parser.add_argument("--oversample", action="append", default=[], type=_oversample, metavar="GLOB=FACTOR",
                        help="training images whose stem matches GLOB give FACTOR times more tiles (repeatable), "
                             "e.g. real_*=40 for a few real fields among many synthetic ones")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--widths", type=_widths, default=None, metavar="W0,W1,...",
                        help="channels per level, finest first (default: 16,32,64,192, the lean layout; the bundled "
                             "model has 24,48,96,192; with --init: the model's own)")
    parser.add_argument("--output-stride", type=int, default=4, choices=(1, 2, 4, 8),
                        help="1: logits at full resolution (the v1 layout); >1: guided U-Net running at 1/stride "
                             "with a per-pixel affine head (default: %(default)s, the bundled model's)")
    parser.add_argument("--min-scale", type=float, default=0.5,
                        help="tiles are also drawn downscaled to this factor, for segment.unet.scale < 1 (default: %(default)s)")
    parser.add_argument("--config", default=None,
                        help="YAML config whose preprocess section (CLAHE) the images get (default: built-in)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def resolve_defaults(args: argparse.Namespace, n_images: int | None = None) -> None:
    """Fill --epochs, --lr, --tiles-per-epoch left unset: fine-tuning and from-scratch defaults differ."""
    defaults = FINE_TUNE_DEFAULTS if args.init else SCRATCH_DEFAULTS
    if args.epochs is None:
        args.epochs = defaults["epochs"]
    if args.lr is None:
        args.lr = defaults["lr"]
    if args.tiles_per_epoch is None and args.init and n_images is not None:
        args.tiles_per_epoch = max(8 * n_images, FINE_TUNE_DEFAULTS["tiles_per_epoch"])
    if args.replay is None:
        args.replay = FINE_TUNE_DEFAULTS["replay"] if args.init else 0


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
    if args.init is not None:
        parts += ["--init", args.init]
    if args.val_images is not None:
        parts += ["--val-images", args.val_images, "--val-masks", args.val_masks]
    for pattern, factor in args.oversample:
        parts += ["--oversample", f"{pattern}={factor:g}"]
    if args.replay:
        parts += ["--replay", str(args.replay)]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401  (the [train] extra)
    except ImportError:
        print(f"inspectd train needs torch (the [train] extra): {TRAIN_EXTRA_HINT}", file=sys.stderr)
        return EXIT_USAGE
    from tqdm import tqdm

    from inspectd.data.labelled import find_pairs
    from inspectd.errors import ConfigError, EngineError
    from inspectd.training.augment import AugmentSettings
    from inspectd.training.model import DEFAULT_WIDTHS
    from inspectd.training.release import write_model
    from inspectd.training.train import TrainSettings, format_metric, train

    try:
        cfg = config.load(args.config)
        init_model = _init_model(args.init)
        resolve_defaults(args, len(find_pairs(args.images, args.masks)))
    except ConfigError as exc:
        print(f"inspectd train: {exc}", file=sys.stderr)
        return EXIT_USAGE
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
        init_model=init_model,
        val_images_dir=Path(args.val_images) if args.val_images else None,
        val_masks_dir=Path(args.val_masks) if args.val_masks else None,
        oversample=tuple(args.oversample),
        replay_frames=args.replay,
    )
    say = lambda line: tqdm.write(line, file=sys.stderr)  # noqa: E731
    try:
        result = train(settings, progress=not args.quiet, say=say)
        released = write_model(settings)
    except (ConfigError, EngineError) as exc:
        print(f"inspectd train: {exc}", file=sys.stderr)
        return EXIT_USAGE
    best = {key: format_metric(value) for key, value in result.best_metrics.items()}
    print(f"best epoch {result.best_epoch}/{args.epochs}: validation IoU mean {best['val_iou_mean']}, "
          f"unmelted {best['val_iou_unmelted']}, pore {best['val_iou_pore']}, melted "
          f"{best['val_iou_melted']}; mask convention {result.mask_convention}; "
          f"{result.seconds / 60:.1f} min; wrote {released.onnx_path} and {released.card_path.name} "
          f"({released.int8_note})")
    return EXIT_OK


def _init_model(init: str | None) -> Path | None:
    """--init: None, the bundled fp32 file for 'bundled', else an existing .onnx path."""
    from inspectd.analysis.engines.unet import bundled_model_path
    from inspectd.errors import ConfigError

    if init is None:
        return None
    path = bundled_model_path("fp32") if init == "bundled" else Path(init)
    if not path.is_file():
        msg = f"--init {init}: no such model file {path}"
        raise ConfigError(msg)
    return path
