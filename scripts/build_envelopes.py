#!/usr/bin/env python
"""Rebuild the shipped out-of-distribution envelopes (`inspectd.ood`) from synthetic frames and real tiles.

    .venv/bin/python scripts/build_envelopes.py            # both envelopes, then the check table
    .venv/bin/python scripts/build_envelopes.py --check    # only the check table, shipped envelopes
    .venv/bin/python scripts/build_envelopes.py --generator v2 --generator v3 --dry-run   # try v3 frames first

Writes
- `inspectd/models/classical-envelope.json`: the classical engine's envelope, from varied v2
  synthetic sets (8 and 16 bit, 160x128 .. 2560x1920, sparse to crowded particles and pores,
  `CLASSICAL_SETS`) and the real tiles;
- the `envelope` section of `inspectd/models/unet-coating-v2.json`: the bundled U-Net's, from
  its training images, regenerated exactly as `scripts/train_bundled_model.sh` drew them
  (`UNET_V2_TRAINING_SETS`), and the real tiles. A new model's card gets its envelope from
  `inspectd export --envelope-images ...` instead (same code: `inspectd.envelopes`).

The real tiles (`--real`, default ../shared/samples/real_coating_tile_{b,c}.png; skipped
with a warning where absent) are already CLAHE-enhanced exports. Each enters as itself and as
its four 3/4-size corner crops, each both unenhanced (what the pipeline sees when it leaves an
enhanced frame alone) and CLAHE'd again (what it sees otherwise), so the envelope holds
whichever way `preprocess.clahe.skip_if_enhanced` is set. Only their statistics are written.

`--generator v3` (repeatable with v2) adds frames of `inspectd.synth.generate_v3` at the same
sizes and seeds + 100000: adding the v3 generator's frames is re-running this with
`--generator v2 --generator v3`. Both envelopes are checked before anything is written (the
table at the end: noise, a photograph-like scene and inverted micrographs must lie outside,
held-out synthetic frames and the real tiles inside); a failed check writes nothing unless
`--force`. Measured when written: with v3 frames added the inverted micrographs fell inside,
because v3's randomisation also draws particles darker than the matrix (`particle_contrast`
< 0), whose histograms lean the way an inverted micrograph's do. Runs in about a minute on two cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import kernels  # noqa: E402
from inspectd import ood, synth  # noqa: E402
from inspectd.config import Config, PreprocessConfig  # noqa: E402
from inspectd.engines.classical import CLASSICAL_ENVELOPE_PATH  # noqa: E402
from inspectd.envelopes import statistics_of_frame, statistics_of_images  # noqa: E402

logger = logging.getLogger("build_envelopes")

MODELS = REPO / "inspectd" / "models"
UNET_CARD = MODELS / "unet-coating-v2.json"
DEFAULT_REAL = [REPO.parent / "shared" / "samples" / f"real_coating_tile_{name}.png" for name in "bc"]

# (name, frames, WxH, seed, v2 parameters): `inspectd synth --vary` sets, like the training script's.
CLASSICAL_SETS = [
    ("a8", 8, "1024x768", 3001, {}),
    ("b16", 6, "1024x768", 3002, {"bit_depth": 16}),
    ("c8", 3, "2560x1920", 3003, {}),
    ("d8", 6, "1280x960", 3004, {"unmelted_fraction": 0.30, "pore_fraction": 0.06}),
    ("e16", 6, "640x480", 3005, {"bit_depth": 16, "unmelted_fraction": 0.06, "pore_fraction": 0.012}),
    ("f8", 6, "768x768", 3006, {"unmelted_fraction": 0.45, "pore_fraction": 0.02}),
    ("g16", 4, "1280x960", 3007, {"bit_depth": 16, "unmelted_fraction": 0.20, "pore_fraction": 0.10}),
    ("h8", 8, "256x256", 3008, {}),
    ("i16", 6, "160x128", 3009, {"bit_depth": 16}),
    ("j8", 8, "160x128", 3010, {}),
    ("k8", 6, "512x512", 3011, {"unmelted_fraction": 0.55, "pore_fraction": 0.18}),
    ("l16", 3, "2560x1920", 3012, {"bit_depth": 16, "unmelted_fraction": 0.30, "pore_fraction": 0.08}),
]
# scripts/train_bundled_model.sh's training sets: the frames the bundled U-Net was fitted on.
UNET_V2_TRAINING_SETS = [
    ("a8", 40, "1024x768", 1001, {}),
    ("b16", 24, "1024x768", 1002, {"bit_depth": 16}),
    ("c8", 6, "2560x1920", 1003, {}),
    ("d8", 16, "1280x960", 1004, {"unmelted_fraction": 0.30, "pore_fraction": 0.06}),
    ("e16", 16, "640x480", 1005, {"bit_depth": 16, "unmelted_fraction": 0.06, "pore_fraction": 0.012}),
    ("f8", 16, "768x768", 1006, {"unmelted_fraction": 0.45, "pore_fraction": 0.02}),
    ("g16", 8, "1280x960", 1007, {"bit_depth": 16, "unmelted_fraction": 0.20, "pore_fraction": 0.10}),
]
# Held-out checks: other seeds, sizes and fractions (the training script's held-out sets, and small frames).
HELDOUT_SETS = [
    ("h8", 4, "1024x768", 9001, {"unmelted_fraction": 0.22, "pore_fraction": 0.04}),
    ("i16", 4, "1024x768", 9002, {"bit_depth": 16, "unmelted_fraction": 0.10, "pore_fraction": 0.025}),
    ("j8", 2, "2560x1920", 9003, {"unmelted_fraction": 0.18, "pore_fraction": 0.05}),
    ("k16", 2, "1600x1200", 9004, {"bit_depth": 16, "unmelted_fraction": 0.35, "pore_fraction": 0.03}),
    ("m8", 4, "320x256", 9005, {}),
]


def synthetic_paths(sets: list, work: Path, generator: str) -> list[Path]:
    """Write each set with `synth.write_dataset(vary=True)`; the image paths."""
    paths = []
    for name, n, size, seed, params in sets:
        width, height = (int(v) for v in size.split("x"))
        folder = work / generator / name
        if generator == "v2":
            paths += synth.write_dataset(folder, n, height, width, seed, synth.SynthParams(**params), vary=True)
        else:  # v3 draws its own parameter ranges (vary_realistic); the v2 fractions do not apply
            paths += synth.write_dataset(folder, n, height, width, seed + 100_000, vary=True, generator=generator)
    return paths


def real_variants(tile: np.ndarray) -> list[np.ndarray]:
    """The tile and its four corner crops of 3/4 its size."""
    height, width = tile.shape
    crop_h, crop_w = height * 3 // 4, width * 3 // 4
    return [tile] + [tile[y:y + crop_h, x:x + crop_w] for y in (0, height - crop_h) for x in (0, width - crop_w)]


def real_statistics(paths: list[Path], preprocess: PreprocessConfig) -> list[dict[str, float]]:
    rows = []
    clahe = preprocess.clahe
    for path in paths:
        tile = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        for variant in real_variants(tile):
            rows.append(ood.frame_statistics(variant, variant))
            again = kernels.clahe(variant, clip_limit=clahe.clip_limit, tile_grid=clahe.tile_grid, backend="cpu")
            rows.append(ood.frame_statistics(again, variant))
    return rows


def build(sets: list, real: list[Path], work: Path, generators: list[str], preprocess: PreprocessConfig,
          what: str) -> dict:
    rows, sources = [], []
    for generator in generators:
        paths = synthetic_paths(sets, work / what, generator)
        rows += statistics_of_images(paths, preprocess)
        sources.append(f"{len(paths)} synthetic frames, inspectd.synth {generator} write_dataset(vary=True): "
                       + "; ".join(f"{name}: {n} of {size}, seed {seed}, {params or 'default parameters'}"
                                   for name, n, size, seed, params in sets))
    if real:
        rows += real_statistics(real, preprocess)
        sources.append(f"real CLAHE-enhanced tiles {', '.join(p.name for p in real)}: whole and 3/4 corner crops, "
                       "as they are and CLAHE'd again")
    envelope = ood.fit_envelope(rows, sources=sources)
    logger.info("%s envelope from %d frames", what, len(rows))
    return envelope


def write_envelopes(classical: dict, unet: dict) -> None:
    CLASSICAL_ENVELOPE_PATH.write_text(json.dumps(classical, indent=2) + "\n", encoding="utf-8")
    card = json.loads(UNET_CARD.read_text(encoding="utf-8"))
    card["envelope"] = unet
    UNET_CARD.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {CLASSICAL_ENVELOPE_PATH.relative_to(REPO)} ({classical['n_frames']} frames) and the envelope of "
          f"{UNET_CARD.relative_to(REPO)} ({unet['n_frames']} frames)")


# ---------------------------------------------------------------------------- the check table


def photograph_like(height: int, width: int) -> np.ndarray:
    """A smooth scene: a linear ramp with a few soft shapes (what a phone picture of a part looks like to us)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    scene = 40.0 + 150.0 * xx / width + 30.0 * yy / height
    for cx, cy, radius, amplitude in ((0.3, 0.4, 0.12, 50.0), (0.7, 0.65, 0.18, -40.0), (0.5, 0.25, 0.08, 30.0)):
        scene += amplitude * np.exp(-((xx - cx * width) ** 2 + (yy - cy * height) ** 2) / (2 * (radius * width) ** 2))
    return np.clip(scene, 0, 255).astype(np.uint8)


def check_cases(real: list[Path], work: Path) -> list[tuple[str, np.ndarray, bool]]:
    """(label, raw frame, must be flagged): the targets the tests hold both envelopes to."""
    noise = np.random.default_rng(5)
    cases = [("noise 256x256", noise.integers(0, 256, (256, 256), dtype=np.uint8), True),
             ("noise 2560x1920", noise.integers(0, 256, (1920, 2560), dtype=np.uint8), True),
             ("photograph-like 1024x768", photograph_like(768, 1024), True)]
    for path in real:
        tile = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        cases += [(path.stem, tile, False), (f"inverted {path.stem}", 255 - tile, True)]
    for seed, (height, width) in ((1, (1920, 2560)), (3, (768, 1024)), (11, (256, 256))):
        inverted = 255 - synth.generate(height, width, seed).image
        cases.append((f"inverted synthetic seed {seed} {width}x{height}", inverted, True))
    for path in synthetic_paths(HELDOUT_SETS, work / "heldout", "v2"):
        cases.append((f"held-out {path.parent.name}/{path.stem}", cv2.imread(str(path), cv2.IMREAD_UNCHANGED), False))
    return cases


def print_checks(envelopes: dict[str, dict], cases: list[tuple[str, np.ndarray, bool]],
                 preprocess: PreprocessConfig) -> int:
    """Print each case's distance per envelope; the number of cases an envelope gets wrong."""
    names = list(envelopes)
    print(f"\n{'frame':<44}" + "".join(f"{name:>22}" for name in names) + "   (distance; > 1 = out of distribution)")
    wrong = 0
    for label, raw, must_flag in cases:
        stats = statistics_of_frame(raw, preprocess)
        cells = []
        for name in names:
            check = ood.assess(stats, envelopes[name])
            mark = "" if check.out_of_distribution == must_flag else " !!"
            wrong += bool(mark)
            cells.append(f"{check.distance:>14.2f} {'OOD' if check.out_of_distribution else 'in':>4}{mark:<3}")
        print(f"{label:<44}" + "".join(cells))
    if wrong:
        print(f"\n!! {wrong} case(s) on the wrong side (marked !!): these envelopes do not meet the targets "
              "tests/analysis/test_trust.py holds them to")
    return wrong


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", nargs="*", type=Path, default=None,
                        help="real enhanced tiles to add (default: ../shared/samples/real_coating_tile_{b,c}.png)")
    parser.add_argument("--generator", action="append", choices=list(synth.GENERATORS), default=None,
                        help="synthetic generator(s) to draw frames with (default: v2)")
    parser.add_argument("--check", action="store_true", help="only print the check table for the shipped envelopes")
    parser.add_argument("--dry-run", action="store_true", help="build and print the check table, write nothing")
    parser.add_argument("--force", action="store_true", help="write the envelopes even when a check case fails")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("inspectd.synth").setLevel(logging.WARNING)
    real = [p for p in (DEFAULT_REAL if args.real is None else args.real)]
    missing = [p for p in real if not p.is_file()]
    if missing:
        logger.warning("real tiles not found, left out: %s", ", ".join(map(str, missing)))
        real = [p for p in real if p.is_file()]
    preprocess = Config().preprocess
    with tempfile.TemporaryDirectory(prefix="inspectd-envelopes-") as tmp:
        work = Path(tmp)
        if args.check:
            envelopes = {"classical": ood.load_envelope(CLASSICAL_ENVELOPE_PATH), "unet-v2": ood.load_envelope(UNET_CARD)}
        else:
            generators = args.generator or ["v2"]
            envelopes = {"classical": build(CLASSICAL_SETS, real, work, generators, preprocess, "classical"),
                         "unet-v2": build(UNET_V2_TRAINING_SETS, real, work, generators, preprocess, "unet-v2")}
        wrong = print_checks(envelopes, check_cases(real, work), preprocess)
        if args.check or args.dry_run:
            return 1 if wrong else 0
        if wrong and not args.force:
            print("nothing written (--force writes anyway)")
            return 1
        write_envelopes(envelopes["classical"], envelopes["unet-v2"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
