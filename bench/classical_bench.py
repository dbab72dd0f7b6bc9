"""Time the classical engine's stages and the out-of-distribution statistics, before and after, in one run.

Rows (milliseconds per frame: the mean over frames of each frame's median and best over
repeats, every row timed on the same frames with the rows interleaved, so a burst of load
from other processes hits all of them alike; plus the process's CPU time per frame, all
threads together, which other processes' load does not inflate):

* ``classify (former)`` / ``classify``: the engine's whole `classify` on an enhanced frame,
  the former way (the frame blurred twice, the pore filter by OpenCV contours:
  `classical._pores_by_contours`) and today's (one blur, `kernels.compact_fill`). The two
  masks are checked equal before timing.
* ``pores (former)`` / ``pores``: the pore step alone on the same blurred frame.
* ``classify (OpenCV opening)`` / ``pores (OpenCV opening)``: the engine and its pore step
  as they were before `kernels.morphology.open_dark` (OpenCV's compare and opening, a
  second compared frame for the growth into the rim, `cv2.max` to lay the pores over): the
  same masks, checked equal.
* ``smooth``, ``otsu``, ``bright``: today's other stages, for where the rest of the time goes.
* ``ood (former)`` / ``ood``: `ood.frame_statistics` with the former numpy / OpenCV texture
  statistics and with `kernels.patch_texture`; checked within 1e-6 relative first.

Like `bench/measure_bench.py`, this sets ``OMP_WAIT_POLICY=PASSIVE`` (as the daemon does)
unless the environment sets it.

Usage::

    .venv/bin/python bench/classical_bench.py                 # 3 frames x 15 repeats, ~1 min
    .venv/bin/python bench/classical_bench.py --frames 2 --repeats 5 --generator v2
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before numba starts its OpenMP pool

import statistics  # noqa: E402
from collections.abc import Callable  # noqa: E402

import cv2  # noqa: E402
import numba  # noqa: E402
import numpy as np  # noqa: E402
from measure_bench import cpu_model, timed  # noqa: E402 - beside this script (run as bench/classical_bench.py)

import kernels  # noqa: E402
from inspectd import config  # noqa: E402
from inspectd.analysis import ood  # noqa: E402
from inspectd.analysis.engines import classical  # noqa: E402
from inspectd.analysis.engines.registry import create_engine  # noqa: E402
from inspectd.analysis.preprocess import enhance  # noqa: E402
from inspectd.data import synth  # noqa: E402
from inspectd.types import PORE  # noqa: E402
from kernels.pores import compact_fill  # noqa: E402


def former_classify(enhanced: np.ndarray, cfg: classical.ClassicalConfig) -> np.ndarray:
    """`classical.classify` as it was: a second blur for the pores and the contour-based filter."""
    smoothed = classical._smooth(enhanced, cfg.smooth_sigma_px)
    otsu = kernels.otsu_threshold(smoothed)
    mask = classical._refine_bright(classical._bright(smoothed, otsu, cfg), cfg.open_radius_px, cfg.close_radius_px)
    pore_source = classical._smooth(enhanced, classical._PORE_SMOOTH_SIGMA_PX)
    pores = classical._pores_by_contours(pore_source, cfg.pore_level * otsu, cfg.pore_min_solidity)
    return cv2.max(mask, pores)


def opencv_opening_classify(enhanced: np.ndarray, cfg: classical.ClassicalConfig) -> np.ndarray:
    """`classical.classify` before `kernels.morphology.open_dark`: one blur and histogram as
    today, the pore step by `opencv_opening_pores`, then laid over the bright mask by `cv2.max`."""
    smoothed = classical._smooth(enhanced, cfg.smooth_sigma_px)
    histogram = kernels.grey_histogram(smoothed)
    otsu = classical.otsu_from_histogram(histogram)
    mask = classical._refine_bright(classical._bright(smoothed, otsu, cfg, histogram), cfg.open_radius_px,
                                    cfg.close_radius_px)
    return cv2.max(mask, opencv_opening_pores(smoothed, cfg.pore_level * otsu, cfg.pore_min_solidity))


def opencv_opening_pores(pore_source: np.ndarray, dark_level: float, min_solidity: float) -> np.ndarray:
    """`classical._pores` before `kernels.morphology.open_dark`: OpenCV's compare and opening,
    and the rim as a second compared frame."""
    dark = classical._dark(pore_source, dark_level)
    if not cv2.hasNonZero(dark):
        return dark
    dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, classical._disk(classical._PORE_OPEN_RADIUS_PX))
    rim = classical._dark(pore_source, classical._PORE_GROW_LEVEL_FACTOR * dark_level)
    return compact_fill(dark, min_solidity, value=255, fill_value=PORE, grow_into=rim, grow_px=classical._PORE_GROW_PX)


def former_statistics(enhanced: np.ndarray, raw: np.ndarray) -> dict[str, float]:
    return ood._frame_statistics(enhanced, raw, ood._texture_statistics_numpy)


def rows_for(raw: np.ndarray, enhanced: np.ndarray, cfg: classical.ClassicalConfig) -> dict[str, Callable[[], object]]:
    smoothed = classical._smooth(enhanced, cfg.smooth_sigma_px)
    otsu = kernels.otsu_threshold(smoothed)
    level = cfg.pore_level * otsu
    return {
        "classify (former)": lambda: former_classify(enhanced, cfg),
        "classify (OpenCV opening)": lambda: opencv_opening_classify(enhanced, cfg),
        "classify": lambda: classical.classify(enhanced, cfg),
        "pores (former)": lambda: classical._pores_by_contours(smoothed, level, cfg.pore_min_solidity),
        "pores (OpenCV opening)": lambda: opencv_opening_pores(smoothed, level, cfg.pore_min_solidity),
        "pores": lambda: classical._pores(smoothed, level, cfg.pore_min_solidity),
        "smooth": lambda: classical._smooth(enhanced, cfg.smooth_sigma_px),
        "otsu": lambda: kernels.otsu_threshold(smoothed),
        "bright": lambda: classical._bright(smoothed, otsu, cfg),
        "ood (former)": lambda: former_statistics(enhanced, raw),
        "ood": lambda: ood.frame_statistics(enhanced, raw),
    }


def check_equal(raw: np.ndarray, enhanced: np.ndarray, cfg: classical.ClassicalConfig) -> tuple[int, float]:
    """(pore pixels, worst relative statistic difference); exits when a mask differs."""
    mask = classical.classify(enhanced, cfg)
    if not np.array_equal(mask, former_classify(enhanced, cfg)) or not np.array_equal(
            mask, opencv_opening_classify(enhanced, cfg)):
        msg = "classify differs from the former path or from the OpenCV opening's"
        raise SystemExit(msg)
    smoothed = classical._smooth(enhanced, cfg.smooth_sigma_px)
    level = cfg.pore_level * kernels.otsu_threshold(smoothed)
    if not np.array_equal(classical._pores(smoothed, level, cfg.pore_min_solidity),
                          opencv_opening_pores(smoothed, level, cfg.pore_min_solidity)):
        msg = "the pore step differs from the OpenCV opening's"
        raise SystemExit(msg)
    before, after = former_statistics(enhanced, raw), ood.frame_statistics(enhanced, raw)
    worst = max(abs(after[k] - before[k]) / max(abs(before[k]), 1e-12) for k in ood.FEATURES)
    return int(np.count_nonzero(mask == 2)), worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=3, help="synthetic frames (seeds 1..N)")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per frame and row")
    parser.add_argument("--generator", choices=("v2", "v3"), default="v3")
    parser.add_argument("--size", default="2560x1920", help="WIDTHxHEIGHT")
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.lower().split("x"))

    cfg = config.load(None)
    engine = create_engine(cfg.segment)
    engine.load()
    engine.warm_up()
    kernels.warm_up()
    make = synth.generate if args.generator == "v2" else synth.generate_v3
    frames = []
    for seed in range(1, args.frames + 1):
        raw = np.ascontiguousarray(make(height, width, seed=seed).image)
        frames.append((raw, enhance(raw, cfg.preprocess)))

    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"numba {numba.__version__} ({numba.get_num_threads()} threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY')}), OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads)")
    print(f"frames: {len(frames)} x {width}x{height} synthetic {args.generator}, default config, "
          f"{args.repeats} repeats each")

    medians: dict[str, list[float]] = {}
    bests: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for raw, enhanced in frames:
        pore_px, worst = check_equal(raw, enhanced, engine.cfg)
        print(f"  frame: masks equal ({pore_px} pore pixels); statistics within {worst:.1e} relative")
        rows = rows_for(raw, enhanced, engine.cfg)
        for fn in rows.values():
            fn()
        per_frame: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
        for _ in range(args.repeats):
            for name, fn in rows.items():
                per_frame[name].append(timed(fn))
        for name, times in per_frame.items():
            medians.setdefault(name, []).append(statistics.median(wall for wall, _ in times))
            bests.setdefault(name, []).append(min(wall for wall, _ in times))
            cpu.setdefault(name, []).append(statistics.median(cpu_ms for _, cpu_ms in times))
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    print()
    print("| row | ms per frame (median) | best | CPU ms (all threads) |")
    print("|---|---:|---:|---:|")
    for name in medians:
        print(f"| {name} | {statistics.mean(medians[name]):.2f} | {statistics.mean(bests[name]):.2f} "
              f"| {statistics.mean(cpu[name]):.2f} |")
    for before, after in (("classify (former)", "classify"), ("classify (OpenCV opening)", "classify"),
                          ("pores (former)", "pores"),
                          ("pores (OpenCV opening)", "pores"), ("ood (former)", "ood")):
        ratio = statistics.mean(medians[before]) / statistics.mean(medians[after])
        print(f"{after}: {ratio:.2f}x faster than {before} (medians)")


if __name__ == "__main__":
    main()
