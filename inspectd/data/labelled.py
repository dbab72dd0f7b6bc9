"""Labelled data: image + mask pairs, their mask convention, the split, the loaded images.

One home for what `inspectd train`, `inspectd evaluate`, quantisation, the benchmark's
accuracy and `scripts/heldout_metrics.py` read as labelled micrographs.

Why the split comes first: the seed augmented its images and then split the augmented set,
so flipped copies of validation images were trained on and its validation IoU was
optimistic. Here `split_ids` splits the *source images* by id before anything is
augmented, and `TileSampler` only ever draws from the images it is given.

Pairs are matched by file stem: `images/<stem>.<ext>` with `masks/<stem>.<ext>` (or
`<stem>_mask.<ext>`, the layout `inspectd synth` writes without `--masks-dir`); a mask is a
PNG, TIFF or BMP file (never a lossy JPEG), its name compared without regard to case, and
files named `*_mask.*` are never taken as images. Two images, or two masks, with one stem
are refused (which one was meant?).
Mask conventions, detected over the whole set and stated in the log:
- class indices {0, 1, 2}: 0 melted, 1 unmelted, 2 pore (what inspectd writes);
- the seed's binary labels {0, 1}: 1 = unmelted, 0 = everything else (identical to class
  indices without pores, so both readings agree);
- binary {0, 255}: 255 = unmelted (white), 0 = everything else.
Images are decoded by `inspectd.analysis.decode` and enhanced by `inspectd.analysis.preprocess.enhance` with
the pipeline's preprocess config, so the net trains on exactly what it sees in service.

Example:
    >>> detect_convention({0, 255}).value
    'binary-0-255'
    >>> split_ids(["a", "b", "c", "d", "e"], 0.4, seed=0)
    (['a', 'b', 'e'], ['c', 'd'])
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from inspectd.analysis.decode import decode_file
from inspectd.analysis.engines import unet_contract as contract
from inspectd.analysis.preprocess import enhance
from inspectd.config import PreprocessConfig
from inspectd.errors import ConfigError, ImageDecodeError
from inspectd.types import MELTED, PORE, UNMELTED

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")
MASK_FILE_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")  # lossless only: a JPEG would blur class values
MASK_SUFFIX = "_mask"


class LabelledDataError(ConfigError):
    """The image/mask set cannot be read as labelled data (no pairs, unreadable or ambiguous masks)."""


class MaskConvention(str, enum.Enum):
    CLASS_INDEX = "class-index"
    BINARY_0_1 = "binary-0-1"
    BINARY_0_255 = "binary-0-255"
    MIXED = "mixed"  # a training set of class-index masks plus binary {0, 255} ones

    @property
    def is_binary(self) -> bool:
        """Binary labels say unmelted or not; only class indices say melted vs pore."""
        return self in (MaskConvention.BINARY_0_1, MaskConvention.BINARY_0_255)

    def describe(self) -> str:
        return {
            MaskConvention.CLASS_INDEX: "class indices {0, 1, 2}: 0 melted, 1 unmelted, 2 pore",
            MaskConvention.BINARY_0_1: "binary {0, 1}: 1 = unmelted, 0 = everything else "
                                       "(the seed's labels; same as class indices without pores)",
            MaskConvention.BINARY_0_255: "binary {0, 255}: 255 = unmelted, 0 = everything else",
            MaskConvention.MIXED: "class indices {0, 1, 2} and binary {0, 255} masks (255 = unmelted, "
                                  "0 = everything else), each mask read by its own values",
        }[self]


@dataclass(frozen=True)
class LabelledPair:
    """One image file and its mask file, matched by stem (`sample_id`)."""

    sample_id: str
    image_path: Path
    mask_path: Path


@dataclass(frozen=True)
class LabelledImage:
    """A pair loaded for training: the enhanced frame scaled to 0..1 and its class-index mask."""

    sample_id: str
    scaled: np.ndarray  # float32 0..1: enhanced grey / max level (contract.normalise's first step)
    mask: np.ndarray  # uint8 training labels: class indices, or contract.NOT_UNMELTED (binary masks' 0s)

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape


def find_pairs(images_dir: str | Path, masks_dir: str | Path) -> list[LabelledPair]:
    """Image/mask pairs matched by stem, sorted by id; images without a mask are skipped (logged).

    >>> import tempfile; from inspectd.data.synth import write_dataset
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = write_dataset(root / "img", n=2, height=32, width=32, seed=0, masks_dir=root / "msk")
    >>> [p.sample_id for p in find_pairs(root / "img", root / "msk")]
    ['synth_0000', 'synth_0001']
    """
    images_path, masks_path = Path(images_dir), Path(masks_dir)
    for folder, what in ((images_path, "--images"), (masks_path, "--masks")):
        if not folder.is_dir():
            msg = f"{what} {folder} is not a folder"
            raise LabelledDataError(msg)
    masks = {p.name.lower(): p for p in masks_path.iterdir() if p.is_file() and p.suffix.lower() in MASK_FILE_SUFFIXES}
    pairs, unlabelled = [], []
    for stem, image_path in sorted(_images_by_stem(images_path).items()):
        mask_path = _find_mask(image_path, masks)
        if mask_path is None:
            unlabelled.append(image_path.name)
            continue
        pairs.append(LabelledPair(stem, image_path, mask_path))
    if unlabelled:
        logger.warning("%d image(s) without a mask skipped: %s", len(unlabelled), ", ".join(unlabelled[:10]))
    if not pairs:
        msg = (f"no image in {images_path} has a mask in {masks_path} (expected <stem>.png or <stem>_mask.png "
               f"for image <stem>.<ext>)")
        raise LabelledDataError(msg)
    return pairs


def _images_by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.stem.endswith(MASK_SUFFIX):
            if path.stem in found:
                msg = f"{folder} holds two images with the stem {path.stem!r}: {found[path.stem].name}, {path.name}"
                raise LabelledDataError(msg)
            found[path.stem] = path
    return found


def _find_mask(image_path: Path, masks: dict[str, Path]) -> Path | None:
    """`<stem>.<ext>` before `<stem>_mask.<ext>`; two masks of one name but for the extension are refused."""
    for stem in (image_path.stem, image_path.stem + MASK_SUFFIX):
        found = [masks[key] for key in ((stem + suffix).lower() for suffix in MASK_FILE_SUFFIXES)
                 if key in masks and masks[key].resolve() != image_path.resolve()]
        if len(found) > 1:
            msg = f"image {image_path.name} has {len(found)} masks: {', '.join(p.name for p in found)}"
            raise LabelledDataError(msg)
        if found:
            return found[0]
    return None


def detect_convention(values: Iterable[int]) -> MaskConvention:
    """Which labelling the union of mask values over a data set follows (LabelledDataError if none)."""
    found = {int(v) for v in values}
    if found <= {0, 1}:
        return MaskConvention.BINARY_0_1
    if found <= {MELTED, UNMELTED, PORE}:
        return MaskConvention.CLASS_INDEX
    if found <= {0, 255}:
        return MaskConvention.BINARY_0_255
    msg = (f"masks hold the values {sorted(found)[:10]}; expected class indices {{0, 1, 2}}, "
           "binary {0, 1} (1 = unmelted) or binary {0, 255} (255 = unmelted)")
    raise LabelledDataError(msg)


def to_class_index(mask: np.ndarray, convention: MaskConvention) -> np.ndarray:
    """A mask in `convention` -> uint8 class indices (0 melted, 1 unmelted, 2 pore).

    >>> to_class_index(np.array([[0, 255]], np.uint8), MaskConvention.BINARY_0_255).tolist()
    [[0, 1]]
    """
    if convention is MaskConvention.BINARY_0_255:
        return np.where(mask == 255, UNMELTED, MELTED).astype(np.uint8)
    return mask.astype(np.uint8)


def to_training_labels(mask: np.ndarray, convention: MaskConvention) -> np.ndarray:
    """A mask in `convention` -> uint8 training labels: class indices, and for binary masks
    `contract.NOT_UNMELTED` where the mask says only "not unmelted" (its 0s).

    >>> to_training_labels(np.array([[0, 255]], np.uint8), MaskConvention.BINARY_0_255).tolist()
    [[3, 1]]
    >>> to_training_labels(np.array([[0, 2]], np.uint8), MaskConvention.CLASS_INDEX).tolist()
    [[0, 2]]
    """
    if convention is MaskConvention.CLASS_INDEX:
        return mask.astype(np.uint8)
    unmelted = mask == (255 if convention is MaskConvention.BINARY_0_255 else 1)
    return np.where(unmelted, UNMELTED, contract.NOT_UNMELTED).astype(np.uint8)


def read_mask(path: Path) -> np.ndarray:
    """A mask file as a 2-D integer array, exactly as stored (no scaling; a colour file with equal channels)."""
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        msg = f"mask {path} cannot be read as an image"
        raise LabelledDataError(msg)
    if mask.ndim == 3:
        channels = mask[..., :3]
        if not (channels == channels[..., :1]).all():
            msg = f"mask {path} is a colour image; masks must be grey class indices or 0/255"
            raise LabelledDataError(msg)
        mask = channels[..., 0]
    return mask


def mask_values(mask: np.ndarray) -> set[int]:
    """The distinct values of a mask, as `mask_conventions` reads them."""
    return {int(v) for v in np.unique(mask)}


def detect_set_convention(pairs: list[LabelledPair]) -> MaskConvention:
    """Read every mask of `pairs` once (one in memory at a time) and return the set's convention.

    >>> import tempfile; from inspectd.data.synth import write_dataset
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = write_dataset(root, n=2, height=32, width=32, seed=0)
    >>> detect_set_convention(find_pairs(root, root)).value
    'class-index'
    """
    return mask_conventions(pairs, [mask_values(read_mask(pair.mask_path)) for pair in pairs])[1]


def split_ids(sample_ids: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split source image ids (before any augmentation) into (train, validation), both sorted."""
    if not 0.0 < val_fraction < 1.0:
        msg = f"val_fraction must be in (0, 1), got {val_fraction}"
        raise ConfigError(msg)
    ids = sorted(set(sample_ids))
    if len(ids) < 2:
        msg = f"need at least 2 labelled images to split into training and validation, got {len(ids)}"
        raise ConfigError(msg)
    n_val = min(len(ids) - 1, max(1, int(round(val_fraction * len(ids)))))
    order = np.random.default_rng([seed, 0x5B1]).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return train, val


def calibration_images(folder: Path) -> list[Path]:
    """Micrographs directly in `folder` (the extensions training reads; `*_mask` files left out), sorted.

    Calibration of reduced-precision models (`inspectd quantize`, `inspectd build-engine
    --int8`) reads these.
    """
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith(MASK_SUFFIX))


def enhanced_images(paths: Iterable[Path], preprocess_cfg: PreprocessConfig) -> Iterator[np.ndarray]:
    """Each file's first field, enhanced on the CPU as the pipeline does; unreadable files are
    skipped with a warning (a calibration set is a sample: one bad file should not stop it)."""
    for path in paths:
        try:
            frames = decode_file(path)
        except ImageDecodeError as exc:
            logger.warning("calibration image skipped: %s", exc)
            continue
        yield enhance(frames[0].pixels, preprocess_cfg, backend="cpu")


def load_pairs(
    pairs: list[LabelledPair], preprocess_cfg: PreprocessConfig | None = None
) -> tuple[list[LabelledImage], MaskConvention]:
    """Decode, enhance (pipeline CLAHE) and scale each image; read masks; detect the convention."""
    preprocess_cfg = preprocess_cfg or PreprocessConfig()
    raw_masks = [read_mask(pair.mask_path) for pair in pairs]
    conventions, convention = mask_conventions(pairs, [mask_values(raw) for raw in raw_masks])
    images = []
    for pair, raw, mask_convention in zip(pairs, raw_masks, conventions, strict=True):
        try:
            frames = decode_file(pair.image_path)
        except ImageDecodeError as exc:
            msg = f"could not decode training image {pair.image_path}: {exc}"
            raise LabelledDataError(msg) from exc
        if len(frames) > 1:
            logger.warning("%s has %d pages; training uses the first", pair.image_path, len(frames))
        pixels = frames[0].pixels
        if pixels.shape != raw.shape:
            msg = (f"{pair.sample_id}: image is {pixels.shape[1]}x{pixels.shape[0]} px but its mask "
                   f"{pair.mask_path.name} is {raw.shape[1]}x{raw.shape[0]} px")
            raise LabelledDataError(msg)
        enhanced = enhance(pixels, preprocess_cfg)
        images.append(LabelledImage(pair.sample_id, scale_to_unit(enhanced),
                                    to_training_labels(raw, mask_convention)))
    return images, convention


def mask_conventions(
    pairs: list[LabelledPair], value_sets: list[set[int]]
) -> tuple[list[MaskConvention], MaskConvention]:
    """Each mask's convention, and the set's (MIXED for class indices beside binary {0, 255}),
    from each mask's distinct values (`mask_values`).

    A mask holding 255 can only be binary {0, 255}; the others are read by the union of their
    values ({0, 1} alone is ambiguous), so synthetic class-index masks and a user's binary
    labels can train together. Binary {0, 1} beside binary {0, 255} is refused: a set is in
    one binary convention.

    >>> pairs = [LabelledPair(s, Path(s), Path(s)) for s in "ab"]
    >>> mask_conventions(pairs, [{0, 1}, {0, 1, 2}])[1].value, mask_conventions(pairs, [{0, 255}, {0}])[1].value
    ('class-index', 'binary-0-255')
    """
    values: set[int] = set()
    binary = []
    for pair, found in zip(pairs, value_sets, strict=True):
        binary.append(255 in found)
        if 255 in found and not found <= {0, 255}:
            msg = f"mask {pair.mask_path} holds 255 beside {sorted(found - {0, 255})[:5]}; expected binary {{0, 255}}"
            raise LabelledDataError(msg)
        if 255 not in found:
            values |= found
    # All-zero masks say nothing of the convention: beside binary ones they are binary too.
    others = detect_convention(values) if values - {0} or not any(binary) else MaskConvention.BINARY_0_255
    conventions = [MaskConvention.BINARY_0_255 if is_binary else others for is_binary in binary]
    if len(set(conventions)) == 1:
        return conventions, conventions[0]
    if others is not MaskConvention.CLASS_INDEX:
        msg = (f"masks mix binary {{0, 255}} labels with {others.describe()}; use one binary convention, "
               "or class indices beside {0, 255}")
        raise LabelledDataError(msg)
    return conventions, MaskConvention.MIXED


def scale_to_unit(enhanced: np.ndarray) -> np.ndarray:
    """Enhanced uint8/uint16 -> float32 0..1, the same scaling as `contract.normalise`."""
    max_level = 65535.0 if enhanced.dtype == np.uint16 else 255.0
    return enhanced.astype(np.float32) * np.float32(1.0 / max_level)


def class_pixel_counts(images: Iterable[LabelledImage], n_classes: int = 3) -> np.ndarray:
    """Pixels per class over the given images (int64 [n_classes]); NOT_UNMELTED ones count as melted."""
    counts = np.zeros(n_classes, np.int64)
    for image in images:
        labels = np.bincount(image.mask.ravel(), minlength=contract.N_LABELS)
        counts += labels[:n_classes]
        counts[MELTED] += labels[contract.NOT_UNMELTED]
    return counts

