#!/usr/bin/env python
"""Rebuild the shipped out-of-distribution envelopes (`inspectd.analysis.ood`) from synthetic frames and real tiles.

    .venv/bin/python scripts/build_envelopes.py            # both envelopes, then the check table
    .venv/bin/python scripts/build_envelopes.py --check    # only the check table, shipped envelopes
    .venv/bin/python scripts/build_envelopes.py --dry-run  # build and check, write nothing (also a card
                                                           # that does not exist yet)
    .venv/bin/python scripts/build_envelopes.py --card inspectd/models/unet-coating-v2.json   # another card

Writes
- `inspectd/models/classical-envelope.json`: the classical engine's envelope, from varied v2
  synthetic sets (`CLASSICAL_V2_SETS`: 8 and 16 bit, 160x128 .. 2560x1920, sparse to crowded
  particles and pores), varied v3 sets (`CLASSICAL_V3_SETS`: 256x256 .. 2560x1920, 8 and 16
  bit, every look `vary_realistic` draws, darker-than-matrix particles included: the engine
  runs on real-like frames too) and the real tiles b and c;
- the `envelope` section of the bundled U-Net's model card (`--card`, default
  `inspectd/models/` + `inspectd.analysis.engines.unet_contract.BUNDLED_CARD`): from the frames that model was
  trained on, regenerated exactly as `scripts/train_bundled_model.sh` drew them (`CARD_RECIPES`:
  for unet-coating-v3 its four `synth_set train` sets and the left 80 % of real tile b, plus
  tile c). A card that does not exist yet (the training run writes it) is skipped with a
  message; a model outside `CARD_RECIPES` gets its envelope from `inspectd export
  --envelope-images ...` instead (same code: `inspectd.training.envelopes`).

The real tiles (`--real-dir`, default ../shared/samples; left out with a warning where absent)
are already CLAHE-enhanced exports. Each enters as itself and as its four 3/4-size corner crops,
each both unenhanced (what the pipeline sees when it leaves an enhanced frame alone) and CLAHE'd
again (what it sees otherwise), so the envelope holds whichever way
`preprocess.clahe.skip_if_enhanced` is set. Only their statistics are written.

Every envelope is checked before anything is written (the table at the end): noise, a
photograph-like scene and inverted micrographs (the real tiles, v3 frames with bright particles,
8 and 16 bit, v2 frames) must lie outside; the real tiles and held-out synthetic frames
(`HELDOUT_SETS`: seeds no envelope was fitted on, judged for the generators an envelope was
built from) inside. A failed check writes nothing unless `--force`. Runs in about a minute on
two busy cores (`--check`: 15 s).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

import kernels
from inspectd.analysis import ood
from inspectd.analysis.engines.classical import CLASSICAL_ENVELOPE_PATH
from inspectd.analysis.engines.unet_contract import BUNDLED_CARD
from inspectd.config import Config, PreprocessConfig
from inspectd.data import synth
from inspectd.training.envelopes import photograph_like, statistics_of_frame, statistics_of_images

REPO = Path(__file__).resolve().parents[1]

logger = logging.getLogger("build_envelopes")

MODELS = REPO / "inspectd" / "models"
DEFAULT_REAL_DIR = REPO.parent / "shared" / "samples"
REAL_TILES = ("real_coating_tile_b", "real_coating_tile_c")


class SynthSet(NamedTuple):
    """One `inspectd synth --generator G --vary --n N --size WxH --seed S [options]` set.

    `params`: v2 `SynthParams` fields, or v3 `RealisticParams` fields (there only `bit_depth`,
    what `--bit-depth` sets: `vary_realistic` draws the rest).
    """

    generator: str
    name: str
    n: int
    size: str
    seed: int
    params: dict

    def describe(self) -> str:
        return f"{self.name}: {self.n} of {self.size}, seed {self.seed}, {self.params or 'default parameters'}"


def _sets(generator: str, rows: list[tuple]) -> list[SynthSet]:
    return [SynthSet(generator, *row) for row in rows]


CLASSICAL_V2_SETS = _sets("v2", [
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
])
CLASSICAL_V3_SETS = _sets("v3", [
    ("a8", 24, "1024x768", 4001, {}),
    ("b16", 12, "1024x768", 4002, {"bit_depth": 16}),
    ("c8", 3, "2560x1920", 4003, {}),
    ("d8", 24, "512x512", 4004, {}),
    ("e8", 30, "256x256", 4005, {}),
    ("f16", 12, "640x480", 4006, {"bit_depth": 16}),
    ("g8", 6, "1280x960", 4007, {}),
    ("h16", 12, "256x256", 4008, {"bit_depth": 16}),
])
# scripts/train_bundled_model.sh's training sets, frame for frame: what each bundled U-Net was fitted on.
UNET_V2_TRAINING_SETS = _sets("v2", [
    ("a8", 40, "1024x768", 1001, {}),
    ("b16", 24, "1024x768", 1002, {"bit_depth": 16}),
    ("c8", 6, "2560x1920", 1003, {}),
    ("d8", 16, "1280x960", 1004, {"unmelted_fraction": 0.30, "pore_fraction": 0.06}),
    ("e16", 16, "640x480", 1005, {"bit_depth": 16, "unmelted_fraction": 0.06, "pore_fraction": 0.012}),
    ("f8", 16, "768x768", 1006, {"unmelted_fraction": 0.45, "pore_fraction": 0.02}),
    ("g16", 8, "1280x960", 1007, {"bit_depth": 16, "unmelted_fraction": 0.20, "pore_fraction": 0.10}),
])
UNET_V3_TRAINING_SETS = _sets("v3", [
    ("a8", 60, "512x512", 2001, {}),
    ("b8", 40, "1024x768", 2002, {}),
    ("c8", 60, "256x256", 2003, {}),
    ("d16", 16, "1024x768", 2004, {"bit_depth": 16}),
])
# Held-out checks: seeds no envelope was fitted on (v3: the training script's held-out sets).
HELDOUT_SETS = _sets("v2", [
    ("h8", 4, "1024x768", 9001, {"unmelted_fraction": 0.22, "pore_fraction": 0.04}),
    ("i16", 4, "1024x768", 9002, {"bit_depth": 16, "unmelted_fraction": 0.10, "pore_fraction": 0.025}),
    ("j8", 2, "2560x1920", 9003, {"unmelted_fraction": 0.18, "pore_fraction": 0.05}),
    ("k16", 2, "1600x1200", 9004, {"bit_depth": 16, "unmelted_fraction": 0.35, "pore_fraction": 0.03}),
    ("m8", 4, "320x256", 9005, {}),
]) + _sets("v3", [
    ("h8", 24, "512x512", 9001, {}),
    ("i8", 12, "1024x768", 9002, {}),
    ("j8", 24, "256x256", 9003, {}),
    ("k16", 8, "1024x768", 9004, {"bit_depth": 16}),
])


class RealPart(NamedTuple):
    """A real tile, or its left `width_share` (the training script trains on the left 80 % of tile b)."""

    tile: str
    width_share: float = 1.0


class Recipe(NamedTuple):
    """What an envelope is fitted on."""

    sets: list[SynthSet]
    real: list[RealPart]

    @property
    def generators(self) -> set[str]:
        return {s.generator for s in self.sets}


CLASSICAL_RECIPE = Recipe(CLASSICAL_V2_SETS + CLASSICAL_V3_SETS, [RealPart(tile) for tile in REAL_TILES])
CARD_RECIPES = {
    "unet-coating-v2.json": Recipe(UNET_V2_TRAINING_SETS, [RealPart(tile) for tile in REAL_TILES]),
    "unet-coating-v3.json": Recipe(UNET_V3_TRAINING_SETS, [RealPart("real_coating_tile_b", 0.8),
                                                           RealPart("real_coating_tile_c")]),
}


def synthetic_paths(sets: list[SynthSet], work: Path) -> list[Path]:
    """Write each set as `inspectd synth --vary` would (same parameters, so the same frames); the image paths."""
    paths = []
    for s in sets:
        width, height = (int(v) for v in s.size.split("x"))
        folder = work / s.generator / s.name
        params = synth.SynthParams(**s.params) if s.generator == "v2" else synth.RealisticParams(**s.params)
        paths += synth.write_dataset(folder, s.n, height, width, s.seed, params, vary=True, generator=s.generator)
    return paths


def real_variants(tile: np.ndarray) -> list[np.ndarray]:
    """The tile and its four corner crops of 3/4 its size."""
    height, width = tile.shape
    crop_h, crop_w = height * 3 // 4, width * 3 // 4
    return [tile] + [tile[y:y + crop_h, x:x + crop_w] for y in (0, height - crop_h) for x in (0, width - crop_w)]


def read_part(real_dir: Path, part: RealPart) -> np.ndarray:
    """The tile's pixels, cut as the training script cuts it (its left share, rounded the same way)."""
    tile = cv2.imread(str(real_dir / f"{part.tile}.png"), cv2.IMREAD_UNCHANGED)
    cut = tile.shape[1] - round((1.0 - part.width_share) * tile.shape[1])
    return tile[:, :cut]


def real_statistics(parts: list[RealPart], real_dir: Path, preprocess: PreprocessConfig) -> list[dict[str, float]]:
    rows = []
    clahe = preprocess.clahe
    for part in parts:
        for variant in real_variants(read_part(real_dir, part)):
            rows.append(ood.frame_statistics(variant, variant))
            again = kernels.clahe(variant, clip_limit=clahe.clip_limit, tile_grid=clahe.tile_grid, backend="cpu")
            rows.append(ood.frame_statistics(again, variant))
    return rows


def build(recipe: Recipe, real_dir: Path, work: Path, preprocess: PreprocessConfig, what: str) -> dict:
    paths = synthetic_paths(recipe.sets, work / what)
    rows = statistics_of_images(paths, preprocess)
    sources = [f"{sum(s.n for s in recipe.sets if s.generator == g)} synthetic frames, inspectd.data.synth {g} "
               "write_dataset(vary=True) as `inspectd synth --generator " + g + " --vary`: "
               + "; ".join(s.describe() for s in recipe.sets if s.generator == g) for g in sorted(recipe.generators)]
    real = [part for part in recipe.real if (real_dir / f"{part.tile}.png").is_file()]
    if real:
        rows += real_statistics(real, real_dir, preprocess)
        sources.append("real CLAHE-enhanced tiles " + ", ".join(
            p.tile + ("" if p.width_share == 1.0 else f" (left {p.width_share:.0%})") for p in real)
            + ": whole and 3/4 corner crops, as they are and CLAHE'd again")
    envelope = ood.fit_envelope(rows, sources=sources)
    logger.info("%s envelope from %d frames", what, len(rows))
    return envelope


def write_card_envelope(card_path: Path, envelope: dict) -> None:
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["envelope"] = envelope
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------- the check table


class Case(NamedTuple):
    """A check: frames that must lie outside (`must_flag`) or inside every envelope built from
    `generator`'s frames (None: every envelope)."""

    label: str
    frames: list[np.ndarray]
    must_flag: bool
    generator: str | None = None


def check_cases(real_dir: Path, work: Path) -> list[Case]:
    """The targets the tests hold the envelopes to."""
    noise = np.random.default_rng(5)
    cases = [Case("noise 256x256", [noise.integers(0, 256, (256, 256), dtype=np.uint8)], True),
             Case("noise 2560x1920", [noise.integers(0, 256, (1920, 2560), dtype=np.uint8)], True),
             Case("photograph-like 1024x768", [photograph_like(768, 1024)], True)]
    for name in REAL_TILES:
        path = real_dir / f"{name}.png"
        if path.is_file():
            tile = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            cases += [Case(name, [tile], False), Case(f"inverted {name}", [255 - tile], True)]
    for seed, (height, width), bit_depth in ((1, (768, 1024), 8), (2, (256, 256), 8), (4, (1920, 2560), 8),
                                             (6, (768, 1024), 16)):
        frame = synth.generate_v3(height, width, seed, synth.RealisticParams(bit_depth=bit_depth)).image
        top = 65535 if bit_depth == 16 else 255
        cases.append(Case(f"inverted v3 seed {seed} {width}x{height} {bit_depth}-bit", [top - frame], True))
    for seed, (height, width) in ((1, (1920, 2560)), (3, (768, 1024)), (11, (256, 256))):
        cases.append(Case(f"inverted v2 seed {seed} {width}x{height}", [255 - synth.generate(height, width, seed).image],
                          True))
    for s in HELDOUT_SETS:
        frames = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in synthetic_paths([s], work / "heldout")]
        cases.append(Case(f"held-out {s.generator} {s.name} ({s.n} of {s.size}, seed {s.seed})", frames, False,
                          s.generator))
    return cases


def print_checks(envelopes: dict[str, tuple[dict, set[str]]], cases: list[Case], preprocess: PreprocessConfig) -> int:
    """Print each case's distance per envelope (the largest over its frames, the smallest too for a set);
    the number of (case, envelope) pairs on the wrong side. `envelopes`: name -> (envelope, generators)."""
    names = list(envelopes)
    print(f"\n{'frame':<50}" + "".join(f"{name:>26}" for name in names) + "   (distance; > 1 = out of distribution)")
    wrong = 0
    for case in cases:
        stats = [statistics_of_frame(frame, preprocess) for frame in case.frames]
        cells = []
        for name in names:
            envelope, generators = envelopes[name]
            checks = [ood.assess(s, envelope) for s in stats]
            distances = [c.distance for c in checks]
            flagged = sum(c.out_of_distribution for c in checks)
            judged = case.generator is None or case.generator in generators
            ok = flagged == len(checks) if case.must_flag else flagged == 0
            mark = "" if ok or not judged else " !!"
            wrong += bool(mark)
            shown = f"{distances[0]:.2f}" if len(distances) == 1 else f"{min(distances):.2f}..{max(distances):.2f}"
            verdict = "OOD" if flagged == len(checks) else "in" if not flagged else f"{flagged} OOD"
            cells.append(f"{shown:>14} {verdict:>7}{mark if judged else ' -':<3}".rjust(26))
        print(f"{case.label:<50}" + "".join(cells))
    print("(' -': not judged: held-out frames of a generator the envelope was not built from)")
    if wrong:
        print(f"\n!! {wrong} case(s) on the wrong side (marked !!): these envelopes do not meet the targets "
              "tests/analysis/test_trust.py holds them to")
    return wrong


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-dir", type=Path, default=DEFAULT_REAL_DIR,
                        help="folder of the real enhanced tiles real_coating_tile_{b,c}.png (default: ../shared/samples)")
    parser.add_argument("--card", type=Path, default=MODELS / BUNDLED_CARD,
                        help=f"the U-Net model card whose envelope to rebuild (default: the bundled one, "
                             f"inspectd/models/{BUNDLED_CARD}); known: {', '.join(CARD_RECIPES)}")
    parser.add_argument("--check", action="store_true", help="only print the check table for the shipped envelopes")
    parser.add_argument("--dry-run", action="store_true", help="build and print the check table, write nothing")
    parser.add_argument("--force", action="store_true", help="write the envelopes even when a check case fails")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("inspectd.data.synth").setLevel(logging.WARNING)
    missing = [name for name in REAL_TILES if not (args.real_dir / f"{name}.png").is_file()]
    if missing:
        logger.warning("real tiles not found in %s, left out: %s", args.real_dir, ", ".join(missing))
    card_path = args.card.resolve()
    recipe = CARD_RECIPES.get(card_path.name)
    if recipe is None:
        print(f"{card_path.name}: no recorded training sets for this card (known: {', '.join(CARD_RECIPES)}); "
              "give it an envelope with `inspectd export --envelope-images TRAINING_IMAGES`", file=sys.stderr)
        return 2
    card_exists = card_path.is_file()
    if not card_exists:
        print(f"{card_path} does not exist yet (scripts/train_bundled_model.sh writes it, with an envelope from its "
              "training images): " + ("its envelope is built and checked, not written" if args.dry_run else
                                      "only the classical envelope is checked" if args.check else
                                      "skipping the U-Net envelope; run this again afterwards to rebuild it from "
                                      "the training sets and both real tiles"))
        if not args.dry_run:
            card_path = None
    preprocess = Config().preprocess
    with tempfile.TemporaryDirectory(prefix="inspectd-envelopes-") as tmp:
        work = Path(tmp)
        classical_generators = CLASSICAL_RECIPE.generators
        if args.check:
            envelopes = {"classical": (ood.load_envelope(CLASSICAL_ENVELOPE_PATH), classical_generators)}
            if card_path is not None and card_exists:
                envelopes[card_path.stem] = (ood.load_envelope(card_path), recipe.generators)
        else:
            envelopes = {"classical": (build(CLASSICAL_RECIPE, args.real_dir, work, preprocess, "classical"),
                                       classical_generators)}
            if card_path is not None:
                envelopes[card_path.stem] = (build(recipe, args.real_dir, work, preprocess, card_path.stem),
                                             recipe.generators)
        wrong = print_checks(envelopes, check_cases(args.real_dir, work), preprocess)
        if args.check or args.dry_run:
            return 1 if wrong else 0
        if wrong and not args.force:
            print("nothing written (--force writes anyway)")
            return 1
        classical = envelopes["classical"][0]
        CLASSICAL_ENVELOPE_PATH.write_text(json.dumps(classical, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {CLASSICAL_ENVELOPE_PATH.relative_to(REPO)} ({classical['n_frames']} frames)")
        if card_path is not None:
            unet = envelopes[card_path.stem][0]
            write_card_envelope(card_path, unet)
            print(f"wrote the envelope of {card_path} ({unet['n_frames']} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
