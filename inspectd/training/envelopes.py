"""Out-of-distribution envelopes from image files: the model card's and `scripts/build_envelopes.py`'s path.

Why from files: an engine's envelope must describe the frames it was fitted on, and those
are image folders (a U-Net's training images, the synthetic sets and real tiles the
classical engine was tuned on). Each file is decoded and enhanced exactly as the pipeline
does (`decode.decode_file`, `preprocess.enhance` with the given preprocessing), so the
statistics are the ones `Analyzer` computes on the line. `inspectd export` calls
`envelope_from_images` with the training images (`--envelope-images`, default: the
checkpoint's training folder) and writes the result into the model card's `envelope`.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from inspectd.data import synth
    >>> from inspectd.config import PreprocessConfig
    >>> paths = synth.write_dataset(tempfile.mkdtemp(), n=2, height=96, width=128, seed=1)
    >>> envelope = envelope_from_images(paths, PreprocessConfig())
    >>> envelope["n_frames"], sorted(envelope["features"]) == sorted(ood.FEATURES)
    (2, True)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inspectd.analysis import ood
from inspectd.analysis.decode import decode_file
from inspectd.analysis.preprocess import enhance
from inspectd.config import PreprocessConfig
from inspectd.data.labelled import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)

MASK_SUFFIXES = ("_mask", "_label")


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, and the images (by suffix, sorted) of each folder given, less masks
    written beside them (`*_mask.*`, `*_label.*`, as `inspectd synth` and the real tiles name them).

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name in ("a.png", "a_mask.png", "b.tif", "notes.txt"):
    ...     _ = (folder / name).write_bytes(b"")
    >>> [p.name for p in image_files([folder])]
    ['a.png', 'b.tif']
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                                and not p.stem.endswith(MASK_SUFFIXES)))
        else:
            found.append(path)
    return found


def statistics_of_frame(raw: np.ndarray, preprocess: PreprocessConfig) -> dict[str, float]:
    """`ood.frame_statistics` of one decoded frame, enhanced as the pipeline enhances it."""
    return ood.frame_statistics(enhance(raw, preprocess, backend="cpu"), raw)


def statistics_of_images(paths: Sequence[str | Path], preprocess: PreprocessConfig) -> list[dict[str, float]]:
    """The statistics of every field of every image file (a multi-page TIFF gives one per page)."""
    rows = []
    for path in image_files(paths):
        for frame in decode_file(path):
            rows.append(statistics_of_frame(frame.pixels, preprocess))
    return rows


def envelope_from_images(paths: Sequence[str | Path], preprocess: PreprocessConfig, *,
                         margin: float = ood.DEFAULT_MARGIN, sources: Sequence[str] = ()) -> dict[str, Any]:
    """`ood.fit_envelope` over the images in `paths` (files or folders); ValueError when there are none."""
    rows = statistics_of_images(paths, preprocess)
    if not rows:
        msg = f"no images to build an envelope from in {', '.join(map(str, paths)) or '(nothing given)'}"
        raise ValueError(msg)
    logger.info("envelope from %d frames", len(rows))
    return ood.fit_envelope(rows, margin=margin, sources=list(sources) or [str(p) for p in paths])


def photograph_like(height: int, width: int) -> np.ndarray:
    """A smooth uint8 scene, a linear ramp with a few soft shapes: what a photograph of a part,
    not a micrograph, looks like to the statistics. Envelopes are checked against it
    (`scripts/build_envelopes.py`, the tests): it must lie outside every one.

    >>> photograph_like(48, 64).shape
    (48, 64)
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    scene = 40.0 + 150.0 * xx / width + 30.0 * yy / height
    for cx, cy, radius, amplitude in ((0.3, 0.4, 0.12, 50.0), (0.7, 0.65, 0.18, -40.0), (0.5, 0.25, 0.08, 30.0)):
        scene += amplitude * np.exp(-((xx - cx * width) ** 2 + (yy - cy * height) ** 2) / (2 * (radius * width) ** 2))
    return np.clip(scene, 0, 255).astype(np.uint8)
