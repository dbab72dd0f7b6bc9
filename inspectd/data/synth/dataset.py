"""Write synthetic training / test sets to disk with either generator (v2 or v3).

Why one entry point: training, evaluation, the demo and `inspectd synth` all want "n frames
+ masks + sidecars"; which generator drew them is one argument, and one writer lays out
both. `generator="v2"` is the default, so every existing caller writes the same bytes as
before; `generator="v3"` draws with `generate_v3`, and its sidecar says
`"generator": "inspectd.data.synth.v3"` and `"generator_version": "3"`.

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

from inspectd.data.synth import lamellar
from inspectd.data.synth.realistic import generate_v3
from inspectd.data.synth.realistic_params import RealisticParams, vary_realistic
from inspectd.data.synth.sample import SynthSample
from inspectd.errors import ConfigError

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

    Masks go beside the images as `synth_NNNN_mask.png`, or, when `masks_dir` is given, into
    that folder as `synth_NNNN.png` (images and masks matched by stem, as training expects).
    Sample i uses its own seed, the same for both generators, recorded in the sidecar with
    the parameters, so `generate(h, w, sidecar["seed"], SynthParams(**sidecar["params"]))`
    (v2) or `generate_v3(h, w, sidecar["seed"], RealisticParams(**sidecar["params"]))` (v3)
    rebuilds it exactly. `vary=True` draws each sample's parameters (v3: `vary_realistic`,
    the whole randomised range; v2: `lamellar.vary_params`, around `params`), so a training
    set is not all alike. `params` must suit the generator. `enhance` True / False forces
    every frame CLAHE-enhanced / raw (also varied v3 frames, which otherwise draw it); None
    leaves it to `params` and `vary`.

    >>> import tempfile
    >>> paths = write_dataset(tempfile.mkdtemp(), n=2, height=64, width=64, seed=1)
    >>> [p.name for p in paths]
    ['synth_0000.png', 'synth_0001.png']
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
        v2_params = params or lamellar.SynthParams()
        if enhance is not None:
            v2_params = dataclasses.replace(v2_params, enhance=enhance)

        def draw(sample_seed: int) -> SynthSample:
            sample_params = lamellar.vary_params(sample_seed, v2_params) if vary else v2_params
            return lamellar.generate(height, width, sample_seed, sample_params)

        # v2 sidecars have always named the version second; the truth repeats the same value.
        sidecar_head = {"generator": "inspectd.synth", "generator_version": lamellar.GENERATOR_VERSION}
    else:
        if params is not None and not isinstance(params, RealisticParams):
            msg = f"generator 'v3' takes RealisticParams, got {type(params).__name__}"
            raise ConfigError(msg)
        v3_params = params or RealisticParams()
        if enhance is not None:
            v3_params = dataclasses.replace(v3_params, enhance=enhance)

        def draw(sample_seed: int) -> SynthSample:
            sample_params = vary_realistic(sample_seed, v3_params, enhance) if vary else v3_params
            return generate_v3(height, width, sample_seed, sample_params)

        sidecar_head = {"generator": "inspectd.data.synth.v3"}
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
        sample_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        sample = draw(sample_seed)
        stem = f"synth_{index:04d}"
        image_path = out_path / f"{stem}.png"
        if mask_folder is not None:
            mask_path = mask_folder / f"{stem}.png"
        else:
            mask_path = out_path / f"{stem}_mask.png"
        _write_png(image_path, sample.image)
        _write_png(mask_path, sample.mask)
        sidecar = {
            **sidecar_head,
            "image": image_path.name,
            "mask": Path(os.path.relpath(mask_path, out_path)).as_posix(),
            "dataset_seed": seed,
            "sample_index": index,
            **sample.truth,
        }
        (out_path / f"{stem}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
        image_paths.append(image_path)
    logger.info(
        "wrote %d %s synthetic frames of %dx%d px to %s", n, generator, width, height, out_path
    )
    return image_paths


def _write_png(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array):
        msg = f"could not write {path}"
        raise OSError(msg)
