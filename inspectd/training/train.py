"""Train the coating U-Net on labelled micrographs: `inspectd train` calls `train()`.

Why it is built this way:
- the split is made on source images before any augmentation (`data.split_ids`), so no
  validation image, nor a flipped copy of it, is ever trained on (the seed's leak);
- training inputs go through the pipeline's own `preprocess.enhance` (CLAHE) and the
  contract's normalisation, so training = inference;
- everything random is seeded (torch init, tile draws per epoch), so the same command on
  the same data and thread count gives the same checkpoint;
- the checkpoint kept as `best.pt` is the epoch with the best mean validation IoU over the
  classes (IoU(unmelted) is reported beside it), measured on whole validation frames;
- loss = class-weighted cross-entropy (pores are rare: weights ~ 1/sqrt(frequency)) plus
  soft Dice, which rewards getting the small classes' areas right;
- class weights buy recall at the price of a biased argmax (weighted cross-entropy's optimum
  is p(c) x weight(c), so the rare class is over-predicted), so after the last epoch the best
  checkpoint's output biases are calibrated on the validation images: one logit offset per
  class, searched on a grid to maximise mean validation IoU, folded into the 1x1 head's
  bias (the ONNX file needs nothing extra) and recorded under `calibration`.

Writes into `out_dir`: `best.pt`, `last.pt`, `history.json` (per-epoch losses and IoUs,
the split, the mask convention) and `curve.png`, all refreshed after every epoch so a long
run can be watched.

Example (a few seconds on a CPU):
    >>> import tempfile; from pathlib import Path; from inspectd.data.synth import write_dataset
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = write_dataset(root / "img", n=3, height=64, width=64, seed=0, masks_dir=root / "msk")
    >>> result = train(TrainSettings(root / "img", root / "msk", root / "out", epochs=1,
    ...                              batch_size=2, tile_px=32, tiles_per_epoch=4,
    ...                              widths=(4, 8, 16)), progress=False)
    >>> sorted(p.name for p in (root / "out").iterdir())
    ['best.pt', 'curve.png', 'history.json', 'last.pt']
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import inspectd
from inspectd.analysis.engines import unet_contract as contract
from inspectd.config import PreprocessConfig
from inspectd.data.labelled import (
    LabelledImage,
    class_pixel_counts,
    find_pairs,
    load_pairs,
    split_ids,
)
from inspectd.data.scores import label_confusion, label_iou
from inspectd.errors import ConfigError
from inspectd.training.augment import AugmentSettings, TileSampler
from inspectd.training.model import (
    DEFAULT_OUTPUT_STRIDE,
    DEFAULT_WIDTHS,
    UNet,
    build_model,
    count_parameters,
    multiply_accumulates,
)
from inspectd.training.onnx_import import freeze_batch_norm, model_from_onnx
from inspectd.training.plot import draw_training_curve
from inspectd.training.replay import replay_images, replay_weight
from inspectd.types import CLASS_NAMES, MELTED, UNMELTED

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "inspectd-unet-checkpoint/1"
# Synthetic replay during fine-tuning (`inspectd.training.replay`): frame side and share of tiles.
REPLAY_SIDE_PX = 512
REPLAY_SHARE = 0.3
# Weight of the prior that an unmarked pixel of a binary label is matrix rather than pore
# (`_partial_cross_entropy`).
UNMARKED_IS_MATRIX_PRIOR = 0.25
BEST_NAME, LAST_NAME, HISTORY_NAME, CURVE_NAME = "best.pt", "last.pt", "history.json", "curve.png"


@dataclass(frozen=True)
class TrainSettings:
    """Everything one training run depends on (recorded in the checkpoints).

    `tiles_per_epoch` None = 8 tiles per training image per epoch.
    """

    images_dir: Path
    masks_dir: Path
    out_dir: Path
    epochs: int = 30
    batch_size: int = 8
    lr: float = 3e-3
    tile_px: int = 256
    val_fraction: float = 0.2
    seed: int = 0
    tiles_per_epoch: int | None = None
    widths: tuple[int, ...] = DEFAULT_WIDTHS
    output_stride: int = DEFAULT_OUTPUT_STRIDE
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    dice_weight: float = 0.5
    weight_decay: float = 1e-4
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    calibrate: bool = True
    command: str | None = None
    init_model: Path | None = None  # fine-tune this inspectd U-Net ONNX file (None: from scratch)
    val_images_dir: Path | None = None  # a fixed validation set (None: split the training images)
    val_masks_dir: Path | None = None
    oversample: tuple[tuple[str, float], ...] = ()  # (stem glob, factor): those images give factor x more tiles
    replay_frames: int = 0  # generated v3 frames mixed into training (`inspectd.training.replay`), REPLAY_SHARE of the tiles

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs={self.epochs} must be >= 1")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size} must be >= 1")
        if not self.lr > 0:
            problems.append(f"lr={self.lr} must be > 0")
        if self.tile_px < contract.INPUT_MULTIPLE or self.tile_px % contract.INPUT_MULTIPLE:
            problems.append(f"tile_px={self.tile_px} must be a positive multiple of {contract.INPUT_MULTIPLE}")
        if self.tiles_per_epoch is not None and self.tiles_per_epoch < 1:
            problems.append(f"tiles_per_epoch={self.tiles_per_epoch} must be >= 1")
        if self.replay_frames < 0:
            problems.append(f"replay_frames={self.replay_frames} must be >= 0")
        if (self.val_images_dir is None) != (self.val_masks_dir is None):
            problems.append("a fixed validation set needs both val_images_dir and val_masks_dir")
        problems += [f"oversample factor for {pattern!r} must be > 0, got {factor}"
                     for pattern, factor in self.oversample if not factor > 0]
        if problems:
            msg = "invalid training settings: " + "; ".join(problems)
            raise ConfigError(msg)

    def record(self) -> dict[str, Any]:
        """JSON-able summary for checkpoints, history and the model card."""
        return {
            "images_dir": str(self.images_dir),
            "masks_dir": str(self.masks_dir),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "tile_px": self.tile_px,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "tiles_per_epoch": self.tiles_per_epoch,
            "widths": list(self.widths),
            "output_stride": self.output_stride,
            "augment": dataclasses.asdict(self.augment),
            "dice_weight": self.dice_weight,
            "weight_decay": self.weight_decay,
            "calibrate": self.calibrate,
            "command": self.command,
            "init_model": None if self.init_model is None else str(self.init_model),
            "val_images_dir": None if self.val_images_dir is None else str(self.val_images_dir),
            "val_masks_dir": None if self.val_masks_dir is None else str(self.val_masks_dir),
            "oversample": [list(rule) for rule in self.oversample],
            "replay_frames": self.replay_frames,
        }


@dataclass(frozen=True)
class TrainResult:
    """What a run produced: where, which epoch won, and its validation metrics."""

    out_dir: Path
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, Any]]
    mask_convention: str
    train_ids: list[str]
    val_ids: list[str]
    seconds: float
    calibration: dict[str, Any] | None = None


def train(
    settings: TrainSettings,
    progress: bool = True,
    say: Callable[[str], None] | None = None,
) -> TrainResult:
    """Run a whole training; `say` receives the human-readable lines (default: the log)."""
    say = say or logger.info
    started = time.perf_counter()
    out_dir = Path(settings.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)

    pairs = find_pairs(settings.images_dir, settings.masks_dir)
    images, convention = load_pairs(pairs, settings.preprocess)
    say(f"masks: {convention.describe()} (detected over {len(pairs)} mask(s))")
    if settings.val_images_dir is not None:
        val_images, val_convention = load_pairs(find_pairs(settings.val_images_dir, settings.val_masks_dir),
                                                settings.preprocess)
        train_images = images
        train_ids, val_ids = [i.sample_id for i in train_images], [i.sample_id for i in val_images]
        say(f"fixed validation set {settings.val_images_dir}: {len(val_images)} image(s), masks "
            f"{val_convention.describe()}; {len(train_images)} training image(s)")
    elif len(images) >= 2:
        train_ids, val_ids = split_ids([p.sample_id for p in pairs], settings.val_fraction, settings.seed)
        by_id = {image.sample_id: image for image in images}
        train_images = [by_id[i] for i in train_ids]
        val_images = [by_id[i] for i in val_ids]
        say(f"split before augmentation: {len(train_images)} training / {len(val_images)} validation image(s)")
    else:
        train_part, val_part = split_within(images[0], settings.val_fraction)
        train_images, val_images = [train_part], [val_part]
        train_ids, val_ids = [train_part.sample_id], [val_part.sample_id]
        say(f"one labelled image: split inside it before augmentation, {train_part.sample_id} for training, "
            f"{val_part.sample_id} for validation")

    if settings.replay_frames:
        replay = replay_images(settings.replay_frames, REPLAY_SIDE_PX, settings.preprocess, settings.seed)
        say(f"synthetic replay: {len(replay)} generated v3 frames of {REPLAY_SIDE_PX} px give "
            f"{REPLAY_SHARE:.0%} of the tiles, so the model keeps what your fields cannot teach")
    else:
        replay = []
    counts = class_pixel_counts(train_images + replay)
    class_weights = _class_weights(counts)
    say("training pixels per class: " + ", ".join(
        f"{CLASS_NAMES[c]} {100.0 * counts[c] / max(1, counts.sum()):.1f}% (weight {class_weights[c]:.2f})"
        for c in range(contract.N_CLASSES)))

    if settings.init_model is not None:
        model = model_from_onnx(settings.init_model)
        say(f"fine-tuning {settings.init_model} (widths {list(model.widths)}, output stride {model.output_stride}; "
            "BatchNorm statistics kept)")
    else:
        model = UNet(widths=settings.widths, output_stride=settings.output_stride)
    say(f"model: {count_parameters(model) / 1e6:.2f} M parameters, "
        f"{multiply_accumulates(model) * 2 / 1e9:.2f} GFLOPs per 512x512 tile")
    tiles_per_epoch = settings.tiles_per_epoch or 8 * len(train_images)
    steps_per_epoch = max(1, math.ceil(tiles_per_epoch / settings.batch_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch,
        pct_start=min(0.3, 2.0 / settings.epochs), anneal_strategy="cos")
    weights = oversampling_weights([i.sample_id for i in train_images], settings.oversample)
    if replay:
        factor = replay_weight([w * i.mask.size for w, i in zip(weights, train_images, strict=True)],
                               [i.mask.size for i in replay], REPLAY_SHARE)
        weights += [factor] * len(replay)
    sampler = TileSampler(train_images + replay, settings.tile_px, settings.augment, settings.seed, weights=weights)
    weight_tensor = torch.tensor(class_weights, dtype=torch.float32)
    data_record = {
        "images_dir": str(settings.images_dir),
        "masks_dir": str(settings.masks_dir),
        "n_images": len(pairs),
        "train_ids": train_ids,
        "val_ids": val_ids,
        "mask_convention": convention.value,
        "class_pixel_fraction": {CLASS_NAMES[c]: float(counts[c] / max(1, counts.sum()))
                                 for c in range(contract.N_CLASSES)},
        "class_weights": [float(w) for w in class_weights],
    }

    history: list[dict[str, Any]] = []
    best_epoch, best_metrics, best_score = 0, {}, -1.0
    for epoch in range(1, settings.epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        if settings.init_model is not None:
            freeze_batch_norm(model)
        batches = _batches(sampler.epoch(epoch, tiles_per_epoch), settings.batch_size)
        losses = []
        with tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{settings.epochs}", unit="batch",
                  file=sys.stderr, disable=not progress, mininterval=2.0, leave=False) as bar:
            for inputs, targets in batches:
                logits = model(inputs)
                loss = segmentation_loss(logits, targets, weight_tensor, settings.dice_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        metrics = evaluate_images(model, val_images, weight_tensor, settings.dice_weight)
        row = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            "lr": float(scheduler.get_last_lr()[0]),
            "seconds": round(time.perf_counter() - epoch_started, 2),
            **metrics,
        }
        history.append(row)
        improved = metrics["val_iou_mean"] > best_score
        checkpoint = _checkpoint(model, epoch, metrics, settings, data_record)
        torch.save(checkpoint, out_dir / LAST_NAME)
        if improved:
            best_epoch, best_metrics, best_score = epoch, metrics, metrics["val_iou_mean"]
            torch.save(checkpoint, out_dir / BEST_NAME)
        _write_history(out_dir, history, best_epoch, settings, data_record)
        draw_training_curve(history, out_dir / CURVE_NAME, best_epoch=best_epoch)
        say(f"epoch {epoch}/{settings.epochs}: train loss {row['train_loss']:.4f}, val loss "
            f"{metrics['val_loss']:.4f}, val IoU mean {format_metric(metrics['val_iou_mean'])} unmelted "
            f"{format_metric(metrics['val_iou_unmelted'])} pore {format_metric(metrics['val_iou_pore'])}"
            f"{' (best)' if improved else ''} [{row['seconds']:.0f} s]")

    calibration = None
    if settings.calibrate:
        calibration = calibrate_checkpoint(out_dir / BEST_NAME, val_images)
        best_metrics = calibration["metrics_after"]
        say("calibrated output biases on the validation images: logit offsets "
            f"{calibration['logit_bias']}, val IoU mean {format_metric(calibration['metrics_before']['val_iou_mean'])}"
            f" -> {format_metric(best_metrics['val_iou_mean'])}, unmelted "
            f"{format_metric(best_metrics['val_iou_unmelted'])}, pore {format_metric(best_metrics['val_iou_pore'])}")
    seconds = time.perf_counter() - started
    say(f"best epoch {best_epoch}: val IoU mean {format_metric(best_metrics['val_iou_mean'])}, unmelted "
        f"{format_metric(best_metrics['val_iou_unmelted'])}; {seconds / 60:.1f} min; wrote {out_dir / BEST_NAME}")
    return TrainResult(out_dir, best_epoch, best_metrics, history, convention.value, train_ids,
                       val_ids, seconds, calibration)


def oversampling_weights(sample_ids: list[str], rules: Iterable[tuple[str, float]]) -> list[float]:
    """Per-image tile-draw factor: the product of the factors of the stem globs an id matches.

    Why: a few real labelled fields beside hundreds of synthetic frames would give almost
    no tiles by area alone.

    >>> oversampling_weights(["real_b[x<205]", "synth_0001"], [("real_*", 40.0)])
    [40.0, 1.0]
    """
    rules = list(rules)
    return [float(math.prod(factor for pattern, factor in rules if fnmatch.fnmatchcase(sample_id, pattern)))
            for sample_id in sample_ids]


def split_within(image: LabelledImage, val_fraction: float) -> tuple[LabelledImage, LabelledImage]:
    """One labelled field -> (training part, validation image): the last `val_fraction` of its
    longer side is the validation strip.

    With a single labelled field there is no other image to validate on; a strip of it that
    no training tile ever touches still measures the model on pixels it did not see. The
    validation image is the whole field with every label outside the strip set to IGNORE:
    the strip is segmented in its context, as a user's frame is (alone, a 51 px wide strip
    of a 256 px tile scored 0.45 where the same model scores 0.82 on it in context).

    >>> field = LabelledImage("f", np.zeros((64, 100), np.float32), np.zeros((64, 100), np.uint8))
    >>> train_part, val_part = split_within(field, 0.2)
    >>> (train_part.sample_id, train_part.mask.shape), (val_part.sample_id, val_part.mask.shape)
    (('f[x<80]', (64, 80)), ('f[x>=80]', (64, 100)))
    >>> int((val_part.mask == contract.IGNORE).sum()), int((val_part.mask == 0).sum())
    (5120, 1280)
    """
    if not 0.0 < val_fraction < 1.0:
        msg = f"val_fraction must be in (0, 1), got {val_fraction}"
        raise ConfigError(msg)
    axis = 1 if image.mask.shape[1] >= image.mask.shape[0] else 0
    length = image.mask.shape[axis]
    cut = length - max(1, int(round(val_fraction * length)))
    name = "x" if axis == 1 else "y"
    trained = (slice(None), slice(0, cut)) if axis == 1 else (slice(0, cut), slice(None))
    train_part = LabelledImage(f"{image.sample_id}[{name}<{cut}]", np.ascontiguousarray(image.scaled[trained]),
                               np.ascontiguousarray(image.mask[trained]))
    val_mask = image.mask.copy()
    val_mask[trained] = contract.IGNORE
    return train_part, LabelledImage(f"{image.sample_id}[{name}>={cut}]", image.scaled, val_mask)


def calibrate_checkpoint(checkpoint_path: str | Path, val_images: list[LabelledImage]) -> dict[str, Any]:
    """Calibrate a checkpoint's output biases on validation images and save it in place.

    Adds `calibration` (offsets, metrics before and after) to the checkpoint; see
    `calibrate_logit_bias`. Idempotent in effect: a calibrated model calibrates to ~0 offsets.
    """
    model, checkpoint = load_checkpoint(checkpoint_path)
    logits = [predict_logits(model, image.scaled).numpy() for image in val_images]
    masks = [image.mask for image in val_images]
    offsets, before, after = calibrate_logit_bias(logits, masks)
    with torch.no_grad():
        # Logit c is head channel c in both layouts (a guided net's b_c follow in 3..5).
        model.head.bias[: contract.N_CLASSES] += torch.from_numpy(offsets)
    previous = checkpoint.get("calibration")
    total = offsets + (np.array(previous["logit_bias"], np.float32) if previous else 0.0)
    calibration = {
        "logit_bias": [round(float(v), 4) for v in total],
        "method": "per-class logit offsets (class 0 fixed at 0) on a 0.25 grid in [-3, 3], coordinate "
                  "search maximising mean IoU over the validation images; folded into head.bias",
        "val_ids": sorted(image.sample_id for image in val_images),
        "metrics_before": before,
        "metrics_after": after,
    }
    checkpoint["state_dict"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    checkpoint["calibration"] = calibration
    torch.save(checkpoint, checkpoint_path)
    return calibration


def calibrate_logit_bias(
    logits: list[np.ndarray], masks: list[np.ndarray], grid: np.ndarray | None = None, rounds: int = 2
) -> tuple[np.ndarray, dict[str, float | None], dict[str, float | None]]:
    """Per-class offsets added to `[C, H, W]` logits that maximise mean IoU over `masks`.

    Class 0 stays at 0 (only differences matter to the argmax); each other class is searched
    on `grid` in turn, `rounds` times; an offset is only moved for a gain over 1e-4, so an
    already calibrated model keeps ~0. Returns (offsets, IoU metrics before, after).

    >>> truth = np.array([[0, 0, 1, 1]]); logits = np.array([[[0, 0, 0, 0]], [[-1, -1, -0.5, -0.5]]], np.float32)
    >>> offsets, before, after = calibrate_logit_bias([logits], [truth], rounds=1)
    >>> offsets.tolist(), before["val_iou_mean"], after["val_iou_mean"]
    ([0.0, 0.75], 0.25, 1.0)
    """
    grid = np.round(np.arange(-3.0, 3.0001, 0.25), 4) if grid is None else grid
    n_classes = logits[0].shape[0]
    offsets = np.zeros(n_classes, np.float32)

    def score(candidate: np.ndarray) -> tuple[float, np.ndarray]:
        confusion = np.zeros((n_classes + 1, n_classes), np.int64)
        for frame_logits, mask in zip(logits, masks, strict=True):
            shifted = frame_logits + candidate[:, None, None]
            confusion += label_confusion(shifted.argmax(0), mask, n_classes)
        ious = label_iou(confusion)
        return float(np.nanmean(ious)), ious

    best_score, best_ious = score(offsets)
    start_ious = best_ious
    # Only classes the masks really label get an offset: binary masks say nothing of pores,
    # and a pore offset searched on them would only trade unmelted pixels for pores.
    labelled = set(np.unique(np.concatenate([np.unique(mask) for mask in masks])).tolist())
    searched = [c for c in range(1, n_classes) if c in labelled
                or (c == UNMELTED and contract.NOT_UNMELTED in labelled)]
    for _ in range(rounds):
        for c in searched:
            for value in sorted(grid, key=abs):
                candidate = offsets.copy()
                candidate[c] = value
                candidate_score, candidate_ious = score(candidate)
                if candidate_score > best_score + 1e-4:
                    offsets, best_score, best_ious = candidate, candidate_score, candidate_ious
    return offsets, _iou_metrics(start_ious), _iou_metrics(best_ious)


def _iou_metrics(ious: np.ndarray) -> dict[str, float | None]:
    metrics: dict[str, float | None] = {"val_iou_mean": float(np.nanmean(ious))}
    for c, value in enumerate(ious):
        metrics[f"val_iou_{CLASS_NAMES.get(c, c)}"] = None if np.isnan(value) else round(float(value), 4)
    return metrics


def segmentation_loss(logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor,
                      dice_weight: float) -> torch.Tensor:
    """Class-weighted cross-entropy + `dice_weight` x (1 - mean soft Dice over the classes).

    >>> logits = torch.zeros(1, 3, 2, 2); targets = torch.zeros(1, 2, 2, dtype=torch.long)
    >>> round(float(segmentation_loss(logits, targets, torch.ones(3), 0.0)), 4)  # ln 3
    1.0986
    """
    partial = targets == contract.NOT_UNMELTED
    scored = targets != contract.IGNORE
    if not bool(partial.any()):
        loss = F.cross_entropy(logits, targets, weight=class_weights, ignore_index=contract.IGNORE)
    else:
        loss = _partial_cross_entropy(logits, targets, partial, class_weights, scored)
    if dice_weight > 0:
        probabilities = logits.softmax(dim=1)
        one_hot = F.one_hot(targets.clamp(max=logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2)
        one_hot = one_hot.to(probabilities.dtype)
        if bool(partial.any()):
            # "Not unmelted": the target keeps the model's own melted/pore split (no gradient
            # through it), so Dice only pushes such a pixel out of the unmelted class.
            split = probabilities.detach() * (1.0 - one_hot_channel(logits.shape[1], UNMELTED))
            split = split / split.sum(dim=1, keepdim=True).clamp_min(1e-6)
            one_hot = torch.where(partial[:, None], split, one_hot)
        if not bool(scored.all()):
            keep = scored[:, None].to(probabilities.dtype)
            probabilities, one_hot = probabilities * keep, one_hot * keep
        dims = (0, 2, 3)
        overlap = (probabilities * one_hot).sum(dims)
        total = probabilities.sum(dims) + one_hot.sum(dims)
        dice = (2.0 * overlap + 1.0) / (total + 1.0)
        loss = loss + dice_weight * (1.0 - dice.mean())
    return loss


def _partial_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, partial: torch.Tensor,
                           class_weights: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Weighted cross-entropy where NOT_UNMELTED pixels score -log(p(melted) + p(pore)), plus
    `UNMARKED_IS_MATRIX_PRIOR` x -log(p(melted) / (p(melted) + p(pore))).

    The first term is all a binary label says. The second is a weak prior that a pixel the
    labeller left unmarked is mostly matrix: without it nothing held pores back on real
    binary-labelled fields, and the model trained with the real labelled tile called 35 % of
    that tile pores (its near-black lamellae; the synthetic frames teach "near-black and
    compact = pore"). Real pores still win where the evidence is strong, as the synthetic
    frames' exact pore labels weigh fully.

    Normalised like `F.cross_entropy(weight=...)`: by the summed weights of the pixels; a
    NOT_UNMELTED pixel weighs as a melted one, an IGNORE pixel (not `scored`) nothing.
    """
    log_p = logits.log_softmax(dim=1)
    exact_targets = torch.where(partial | ~scored, torch.zeros_like(targets), targets)
    exact = -log_p.gather(1, exact_targets[:, None])[:, 0]
    rest = torch.cat([log_p[:, :UNMELTED], log_p[:, UNMELTED + 1:]], dim=1)
    log_rest = torch.logsumexp(rest, dim=1)
    not_unmelted = -log_rest + UNMARKED_IS_MATRIX_PRIOR * (log_rest - log_p[:, MELTED])
    weights = class_weights[exact_targets] * scored.to(logits.dtype)
    nll = torch.where(partial, not_unmelted, exact)
    return (weights * nll).sum() / weights.sum()


def one_hot_channel(n_channels: int, index: int) -> torch.Tensor:
    """`[1, n_channels, 1, 1]` with a 1 at `index`, for masking one class's channel."""
    channel = torch.zeros(1, n_channels, 1, 1)
    channel[0, index] = 1.0
    return channel


def predict_logits(model: UNet, scaled: np.ndarray) -> torch.Tensor:
    """Whole-frame logits `[3, H, W]` of a 0..1 float image (reflect-padded to the multiple)."""
    height, width = scaled.shape
    multiple = contract.INPUT_MULTIPLE
    pad_h, pad_w = -height % multiple, -width % multiple
    padded = np.pad(scaled, ((0, pad_h), (0, pad_w)), mode="reflect") if pad_h or pad_w else scaled
    inputs = torch.from_numpy(_centre(padded)[None, None])
    with torch.no_grad():
        return model(inputs)[0, :, :height, :width]


def evaluate_images(model: UNet, images: Iterable[LabelledImage], class_weights: torch.Tensor,
                    dice_weight: float) -> dict[str, float | None]:
    """Validation loss and IoU per class / mean on whole frames (model left in eval mode)."""
    model.eval()
    confusion = np.zeros((contract.N_CLASSES + 1, contract.N_CLASSES), np.int64)
    losses = []
    for image in images:
        logits = predict_logits(model, image.scaled)
        targets = torch.from_numpy(image.mask.astype(np.int64))
        losses.append(float(segmentation_loss(logits[None], targets[None], class_weights, dice_weight)))
        confusion += label_confusion(logits.argmax(0).numpy(), image.mask)
    ious = label_iou(confusion)
    metrics = {"val_loss": float(np.mean(losses)) if losses else float("nan"),
               "val_iou_mean": float(np.nanmean(ious))}
    for c in range(contract.N_CLASSES):
        # None (JSON null) for a class absent from truth and prediction, e.g. pores in binary labels.
        metrics[f"val_iou_{CLASS_NAMES[c]}"] = None if np.isnan(ious[c]) else float(ious[c])
    correct = np.trace(confusion[:-1]) + confusion[-1].sum() - confusion[-1, UNMELTED]
    metrics["val_pixel_accuracy"] = float(correct / max(1, confusion.sum()))
    return metrics


def format_metric(value: float | None) -> str:
    """4 decimals, or n/a for a metric that does not apply (None / NaN).

    >>> format_metric(0.91234), format_metric(None)
    ('0.9123', 'n/a')
    """
    return "n/a" if value is None or value != value else f"{value:.4f}"


def load_checkpoint(path: str | Path) -> tuple[UNet, dict[str, Any]]:
    """The model (eval mode) and the whole checkpoint dict of a `best.pt` / `last.pt`."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as exc:
        msg = f"could not read checkpoint {path}: {exc}"
        raise ConfigError(msg) from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        msg = f"{path} is not an inspectd U-Net checkpoint (no format {CHECKPOINT_FORMAT!r})"
        raise ConfigError(msg)
    model = build_model(checkpoint["architecture"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint


def _centre(scaled: np.ndarray) -> np.ndarray:
    """0..1 -> the contract's network input values (same arithmetic as `contract.normalise`)."""
    return ((scaled - contract.NORM_MEAN) / contract.NORM_STD).astype(np.float32, copy=False)


def _batches(tiles: Iterable[tuple[np.ndarray, np.ndarray, str]], batch_size: int):
    images, masks = [], []
    for tile, tile_mask, _sample_id in tiles:
        images.append(tile)
        masks.append(tile_mask)
        if len(images) == batch_size:
            yield _to_tensors(images, masks)
            images, masks = [], []
    if images:
        yield _to_tensors(images, masks)


def _to_tensors(images: list[np.ndarray], masks: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.from_numpy(_centre(np.stack(images))[:, None])
    targets = torch.from_numpy(np.stack(masks).astype(np.int64))
    return inputs, targets


def _class_weights(counts: np.ndarray) -> np.ndarray:
    """~ 1/sqrt(frequency), normalised to mean 1 over present classes, clipped to [0.2, 10]."""
    frequency = counts / max(1, counts.sum())
    weights = np.ones(len(counts), np.float64)
    present = frequency > 0
    if present.any():
        weights[present] = 1.0 / np.sqrt(frequency[present])
        weights[present] /= weights[present].mean()
    return np.clip(weights, 0.2, 10.0)


def _checkpoint(model: UNet, epoch: int, metrics: dict[str, float], settings: TrainSettings,
                data_record: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "architecture": model.architecture(),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "epoch": epoch,
        "metrics": metrics,
        "train": settings.record(),
        "data": data_record,
        "preprocess": settings.preprocess.model_dump(mode="json"),
        "contract": contract_record(model.output_stride),
        "versions": {"inspectd": inspectd.__version__, "torch": torch.__version__},
    }


def contract_record(output_stride: int = 1) -> dict[str, Any]:
    """The input/output contract as recorded in checkpoints and model cards.

    A guided U-Net's (output_stride > 1) ONNX file returns the coarse pairs, not logits.
    """
    classes = {str(c): CLASS_NAMES[c] for c in range(contract.N_CLASSES)}
    if output_stride == 1:
        output = {"name": contract.OUTPUT_NAME, "dtype": "float32",
                  "shape": ["N", contract.N_CLASSES, "H", "W"], "classes": classes}
    else:
        output = {"name": contract.AFFINE_OUTPUT_NAME, "dtype": "float32",
                  "shape": ["N", 2 * contract.N_CLASSES, f"H/{output_stride}", f"W/{output_stride}"],
                  "meaning": "channels 0-2: a_c, 3-5: b_c per class c; logit_c = bilinear(a_c) + bilinear(b_c) * "
                             "image (align_corners=False), evaluated by kernels.guided_argmax",
                  "classes": classes}
    return {
        "input": {"name": contract.INPUT_NAME, "dtype": "float32", "shape": ["N", 1, "H", "W"],
                  "normalisation": f"(enhanced / max_level - {contract.NORM_MEAN}) / {contract.NORM_STD}, "
                                   "max_level 255 (uint8) or 65535 (uint16); enhanced = "
                                   "inspectd.analysis.preprocess.enhance (pipeline CLAHE)",
                  "multiple_of": contract.INPUT_MULTIPLE},
        "output": output,
    }


def _write_history(out_dir: Path, history: list[dict[str, Any]], best_epoch: int,
                   settings: TrainSettings, data_record: dict[str, Any]) -> None:
    document = {
        "best_epoch": best_epoch,
        "epochs": history,
        "settings": settings.record(),
        "data": data_record,
    }
    (out_dir / HISTORY_NAME).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
