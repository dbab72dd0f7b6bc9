"""Write synthetic training / test sets to disk with either generator (v2 or v3).

Why one entry point: training, evaluation, the demo and `inspectd synth` all want "n frames
+ masks + sidecars"; which generator drew them is one argument. `generator="v2"` (the
default, so every existing caller stays byte-identical) hands over to the v2 writer in
`lamellar.py` unchanged; `generator="v3"` writes the same layout with `generate_v3`, and its
sidecar says `"generator": "inspectd.synth.v3"` and `"generator_version": "3"`.

>>> import tempfile
>>> paths = write_dataset(tempfile.mkdtemp(), n=1, height=48, width=48, seed=1, generator="v3")
>>> [p.name for p in paths]
['synth_0000.png']
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np

from inspectd.errors import ConfigError
from inspectd.synth import lamellar
from inspectd.synth.realistic import generate_v3
from inspectd.synth.realistic_params import RealisticParams, vary_realistic

logger = logging.getLogger(__name__)

GENERATORS = ("v2", "v3")


def write_dataset(
    out_dir: str | Path,
    n: int,
    height: int,
    width: int,
    seed: int,
    params: lamellar.SynthParams | RealisticParams | None = None,
    vary: bool = False,
    masks_dir: str | Path | None = None,
    generator: str = "v2",
    enhance: bool | None = None,
) -> list[Path]:
    """Write `n` frames as `synth_NNNN.png` + mask + `synth_NNNN.json` sidecar; return image paths.

    Same layout, seeds and sidecar keys for both generators (see `lamellar.write_dataset`):
    sample i is drawn with its own seed, recorded in the sidecar with the parameters, so
    `generate_v3(h, w, sidecar["seed"], RealisticParams(**sidecar["params"]))` rebuilds a v3
    sample exactly. `vary=True` draws each sample's parameters (v3: `vary_realistic`, the
    whole randomised range; v2: around `params`). `params` must suit the generator.
    `enhance` True / False forces every frame CLAHE-enhanced / raw (also varied v3 frames,
    which otherwise draw it); None leaves it to `params` and `vary`.

    >>> import tempfile
    >>> write_dataset(tempfile.mkdtemp(), n=1, height=32, width=32, seed=0, generator="v9")
    Traceback (most recent call last):
    ...
    inspectd.errors.ConfigError: generator='v9' must be one of v2, v3
    """
    if generator not in GENERATORS:
        msg = f"generator={generator!r} must be one of {', '.join(GENERATORS)}"
        raise ConfigError(msg)
    if generator == "v2":
        if params is not None and not isinstance(params, lamellar.SynthParams):
            msg = f"generator 'v2' takes SynthParams, got {type(params).__name__}"
            raise ConfigError(msg)
        if enhance is not None:
            params = dataclasses.replace(params or lamellar.SynthParams(), enhance=enhance)
        return lamellar.write_dataset(out_dir, n, height, width, seed, params, vary, masks_dir)
    if params is not None and not isinstance(params, RealisticParams):
        msg = f"generator 'v3' takes RealisticParams, got {type(params).__name__}"
        raise ConfigError(msg)
    params = params or RealisticParams()
    if enhance is not None:
        params = dataclasses.replace(params, enhance=enhance)
    return _write_v3(out_dir, n, height, width, seed, params, vary, masks_dir, enhance)


def _write_v3(
    out_dir: str | Path,
    n: int,
    height: int,
    width: int,
    seed: int,
    params: RealisticParams,
    vary: bool,
    masks_dir: str | Path | None,
    enhance: bool | None,
) -> list[Path]:
    if n < 0:
        msg = f"n={n} must be >= 0"
        raise ConfigError(msg)
    out_path = Path(out_dir)
    out_path.mkdir(parents=True, exist_ok=True)
    mask_folder = Path(masks_dir) if masks_dir is not None else None
    if mask_folder is not None:
        mask_folder.mkdir(parents=True, exist_ok=True)
    image_paths = []
    for index in range(n):
        # Same per-sample seeds as v2, so "sample i of dataset seed s" means the same in both.
        sample_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        sample_params = vary_realistic(sample_seed, params, enhance) if vary else params
        sample = generate_v3(height, width, sample_seed, sample_params)
        stem = f"synth_{index:04d}"
        image_path = out_path / f"{stem}.png"
        mask_path = (mask_folder / f"{stem}.png") if mask_folder else out_path / f"{stem}_mask.png"
        _write_png(image_path, sample.image)
        _write_png(mask_path, sample.mask)
        sidecar = {
            "generator": "inspectd.synth.v3",
            "image": image_path.name,
            "mask": Path(os.path.relpath(mask_path, out_path)).as_posix(),
            "dataset_seed": seed,
            "sample_index": index,
            **sample.truth,
        }
        (out_path / f"{stem}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
        image_paths.append(image_path)
    logger.info("wrote %d v3 synthetic frames of %dx%d px to %s", n, width, height, out_path)
    return image_paths


def _write_png(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array):
        msg = f"could not write {path}"
        raise OSError(msg)
