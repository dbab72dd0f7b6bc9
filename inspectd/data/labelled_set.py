"""The labelled set: fields a person has checked and corrected, in the layout `inspectd train` reads.

Why a folder layout and not a database: the set is meant to leave the station. Each split is
an `images/` + `masks/` pair of folders matched by file stem, exactly what `inspectd train
--images --masks` and `inspectd evaluate --images --masks` take, so a copy of the folder is
a training set anywhere:

    <root>/train/images/<key>.png     the frame's pixels as decoded (8- or 16-bit grey)
    <root>/train/masks/<key>.png      uint8 class indices: 0 melted, 1 unmelted, 2 pore
    <root>/heldout/images/<key>.png   fields kept out of training, for scoring a model
    <root>/heldout/masks/<key>.png
    <root>/records/<key>.json         who/when/what: source, time saved, pixels corrected

Held-out fields: a score on fields the model was trained on says little, so some fields
never go into training. By default the 2nd, 5th, 8th ... field saved is held out (a third
of the set, and the second field already, so two labelled fields give a first score); any
field can be moved between the splits (`set_held_out`), and saving a field again keeps its split.

Every file is written to a temporary name and renamed into place (a reader sees the old
file or the new one, never half of one); the image is written before the mask, and a
training run works on a copy (`snapshot`), so a field saved during a run does not change it.
Keys become file names only after `check_field_key`: letters, digits, `_`, `.`, `-`.

Example:
    >>> import tempfile
    >>> labels = LabelledSet(Path(tempfile.mkdtemp()))
    >>> grey = np.full((4, 6), 100, np.uint8); mask = np.zeros((4, 6), np.uint8); mask[0, 0] = 2
    >>> [labels.save(f"seq-{n}", grey, mask).held_out for n in (1, 2, 3)]
    [False, True, False]
    >>> labels.set_held_out("seq-3", True).held_out, sorted(f.key for f in labels.fields() if f.held_out)
    (True, ['seq-2', 'seq-3'])
    >>> validate_mask(np.full((4, 6), 7, np.uint8), (4, 6))
    Traceback (most recent call last):
    ...
    inspectd.data.labelled_set.LabelError: the mask holds the value 7 (24 pixels); a mask holds only 0 melted, 1 unmelted, 2 pore
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from inspectd.durable_files import write_atomically
from inspectd.errors import InspectdError
from inspectd.types import CLASS_NAMES

logger = logging.getLogger(__name__)

TRAIN, HELDOUT = "train", "heldout"
SPLITS = (TRAIN, HELDOUT)
HOLD_OUT_EVERY = 3  # the 2nd, 5th, 8th ... field saved is held out
FIELD_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
CLASS_VALUES = tuple(sorted(CLASS_NAMES))  # (0, 1, 2)


class LabelError(InspectdError):
    """A mask or key the labelled set refuses; the message says what is wrong with it."""


@dataclass(frozen=True)
class LabelledField:
    """One field of the set: where its files are and what its record says."""

    key: str
    held_out: bool
    image_path: Path
    mask_path: Path
    record: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        """JSON for the web UI and reports (no absolute paths beyond the record)."""
        return {"key": self.key, "held_out": self.held_out, "split": HELDOUT if self.held_out else TRAIN,
                **{k: v for k, v in self.record.items() if k != "key"}}


def check_field_key(key: str) -> str:
    """The key if it can name a field's files; LabelError otherwise (no path is built from it before)."""
    if not isinstance(key, str) or not FIELD_KEY.fullmatch(key) or ".." in key:
        msg = f"not a field key: {str(key)[:80]!r} (letters, digits, _ . - ; at most 100)"
        raise LabelError(msg)
    return key


def validate_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A class-index mask of the image's `shape` as uint8; LabelError naming what is wrong.

    Refused: another size than the image, more than one channel, values other than 0/1/2
    (the message counts the pixels of each wrong value, so a mask exported scaled to 0/255
    is recognisable at once).
    """
    if mask.ndim != 2:
        msg = f"the mask has {mask.shape[2] if mask.ndim == 3 else mask.ndim} channels; a mask is one channel of class indices"
        raise LabelError(msg)
    if mask.shape != tuple(shape[:2]):
        msg = (f"the mask is {mask.shape[1]}x{mask.shape[0]} px but the image is {shape[1]}x{shape[0]} px; "
               "a mask has the size of its image")
        raise LabelError(msg)
    values, counts = np.unique(mask, return_counts=True)
    wrong = [(int(v), int(c)) for v, c in zip(values, counts, strict=True) if int(v) not in CLASS_VALUES]
    if wrong:
        listed = ", ".join(f"{'the value ' if i == 0 else ''}{v} ({c} pixels)" for i, (v, c) in enumerate(wrong[:5]))
        classes = ", ".join(f"{c} {CLASS_NAMES[c]}" for c in CLASS_VALUES)
        msg = f"the mask holds {listed}; a mask holds only {classes}"
        raise LabelError(msg)
    return mask.astype(np.uint8, copy=False)


def decode_mask_png(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """A PNG of class indices (one 8-bit channel; a grey picture saved as RGB/RGBA is accepted when
    its colour channels are equal and it is opaque) -> a validated uint8 mask."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        msg = "the mask is not a PNG file"
        raise LabelError(msg)
    if len(data) < 24 or data[12:16] != b"IHDR":
        msg = "the mask PNG cannot be decoded (truncated or damaged)"
        raise LabelError(msg)
    # The size its header declares, checked before decoding: a few compressed kilobytes can
    # declare gigabytes of pixels, and a mask has the size of its image anyway.
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if (height, width) != tuple(shape[:2]):
        msg = (f"the mask is {width}x{height} px but the image is {shape[1]}x{shape[0]} px; "
               "a mask has the size of its image")
        raise LabelError(msg)
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if raw is None:
        msg = "the mask PNG cannot be decoded (truncated or damaged)"
        raise LabelError(msg)
    if raw.dtype != np.uint8:
        msg = f"the mask is a {raw.dtype.itemsize * 8}-bit PNG; a mask is 8-bit class indices"
        raise LabelError(msg)
    if raw.ndim == 3:
        colour = raw[..., :3]
        opaque = raw.shape[2] < 4 or bool((raw[..., 3] == 255).all())
        if not opaque or not ((colour == colour[..., :1]).all()):
            msg = "the mask is a colour picture; a mask is one grey channel of class indices 0, 1, 2"
            raise LabelError(msg)
        raw = np.ascontiguousarray(colour[..., 0])
    return validate_mask(raw, shape)


class LabelledSet:
    """The set under `root` (see the module docstring); thread-safe within one process."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()

    def folders(self, split: str) -> tuple[Path, Path]:
        """(images, masks) folders of `split` (train or heldout): what `inspectd train/evaluate` take."""
        if split not in SPLITS:
            msg = f"no split {split!r} (one of {', '.join(SPLITS)})"
            raise LabelError(msg)
        return self.root / split / "images", self.root / split / "masks"

    def fields(self) -> list[LabelledField]:
        """Every complete field (image and mask present), oldest saved first."""
        found = []
        for split in SPLITS:
            images, masks = self.folders(split)
            if not masks.is_dir():
                continue
            for mask_path in masks.glob("*.png"):
                key = mask_path.stem
                image_path = images / mask_path.name
                if FIELD_KEY.fullmatch(key) and image_path.is_file():
                    found.append(LabelledField(key, split == HELDOUT, image_path, mask_path, self._record(key)))
        return sorted(found, key=lambda f: (f.record.get("saved_at", ""), f.key))

    def get(self, key: str) -> LabelledField | None:
        check_field_key(key)
        for split in SPLITS:
            images, masks = self.folders(split)
            if (masks / f"{key}.png").is_file() and (images / f"{key}.png").is_file():
                return LabelledField(key, split == HELDOUT, images / f"{key}.png", masks / f"{key}.png",
                                     self._record(key))
        return None

    def save(self, key: str, image: np.ndarray, mask: np.ndarray, *, held_out: bool | None = None,
             record: dict[str, Any] | None = None) -> LabelledField:
        """Add or replace field `key`: `image` (decoded pixels, 8/16-bit grey) and its class-index mask.

        `held_out` None: a field saved before keeps its split, a new one follows HOLD_OUT_EVERY.
        """
        check_field_key(key)
        if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
            msg = f"the image of {key} is not one 8- or 16-bit grey channel ({image.dtype}, shape {image.shape})"
            raise LabelError(msg)
        mask = validate_mask(mask, image.shape)
        image_png, mask_png = _png(image, key), _png(mask, key)
        counts = np.bincount(mask.ravel(), minlength=len(CLASS_VALUES))
        with self._lock:
            existing = self.get(key)
            if held_out is None:
                held_out = existing.held_out if existing else len(self.fields()) % HOLD_OUT_EVERY == 1
            split = HELDOUT if held_out else TRAIN
            if existing is not None and existing.held_out != held_out:
                _remove_pair(existing)
            images, masks = self.folders(split)
            fields_record = {
                **(existing.record if existing else {}),
                **(record or {}),
                "key": key,
                "width": int(image.shape[1]),
                "height": int(image.shape[0]),
                "bit_depth": 16 if image.dtype == np.uint16 else 8,
                "class_pct": {CLASS_NAMES[c]: round(100.0 * float(counts[c]) / mask.size, 3) for c in CLASS_VALUES},
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            write_atomically(images / f"{key}.png", image_png)
            write_atomically(masks / f"{key}.png", mask_png)
            write_atomically(self.root / "records" / f"{key}.json",
                              (json.dumps(fields_record, indent=1, default=str) + "\n").encode())
        logger.info("labelled field %s saved (%s)", key, split)
        return LabelledField(key, held_out, images / f"{key}.png", masks / f"{key}.png", fields_record)

    def set_held_out(self, key: str, held_out: bool) -> LabelledField:
        """Move field `key` into the held-out split (True) or the training split (False)."""
        with self._lock:
            field = self.get(key)
            if field is None:
                msg = f"no labelled field {key}"
                raise LabelError(msg)
            if field.held_out == held_out:
                return field
            images, masks = self.folders(HELDOUT if held_out else TRAIN)
            write_atomically(images / field.image_path.name, field.image_path.read_bytes())
            write_atomically(masks / field.mask_path.name, field.mask_path.read_bytes())
            _remove_pair(field)
            return LabelledField(key, held_out, images / field.image_path.name, masks / field.mask_path.name,
                                 field.record)

    def remove(self, key: str) -> bool:
        """Take field `key` out of the set; False when it was not in it."""
        with self._lock:
            field = self.get(key)
            if field is None:
                return False
            _remove_pair(field)
            (self.root / "records" / f"{key}.json").unlink(missing_ok=True)
            return True

    def snapshot(self, destination: Path) -> dict[str, int]:
        """Copy both splits to `destination/<split>/{images,masks}` (what a training run reads);
        returns the number of fields per split."""
        counts = {}
        with self._lock:
            fields = self.fields()
            for split in SPLITS:
                chosen = [f for f in fields if f.held_out == (split == HELDOUT)]
                for folder in ("images", "masks"):
                    (destination / split / folder).mkdir(parents=True, exist_ok=True)
                for field in chosen:
                    shutil.copyfile(field.image_path, destination / split / "images" / field.image_path.name)
                    shutil.copyfile(field.mask_path, destination / split / "masks" / field.mask_path.name)
                counts[split] = len(chosen)
        return counts

    def _record(self, key: str) -> dict[str, Any]:
        path = self.root / "records" / f"{key}.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"key": key}


def _png(pixels: np.ndarray, key: str) -> bytes:
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        msg = f"could not encode the pixels of {key} as PNG"
        raise LabelError(msg)
    return encoded.tobytes()



def _remove_pair(field: LabelledField) -> None:
    field.mask_path.unlink(missing_ok=True)  # the mask first: without it the image is no field
    field.image_path.unlink(missing_ok=True)
