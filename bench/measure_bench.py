"""Time `measure` per frame: the numba region kernel against the former OpenCV passes and
scikit-image's regionprops, on the same synthetic 2560x1920 frames, in one run.

Rows (milliseconds per frame, median and best over repeats, the methods interleaved so a
burst of load from other processes hits all of them alike; plus the process's CPU time per
frame, all threads together, which other processes' load does not inflate):

* ``measure (numba)``: today's `inspectd.analysis.measure.measure`, everything it returns; its
  `Region` objects are made only when read (`TableRegions`), as the daemon never reads them.
* ``measure (numba), regions read``: the same, then every `Region` read, as reports and the
  web page do.
* ``measure (former: calcHist, BLAS, Region means)``: today's `measure` as it was before its last
  changes: the joint histogram by `cv2.calcHist` for 16-bit frames too, the texture by BLAS
  dots (`former_texture`), the per-class means over the `Region` objects (same table).
* ``measure (OpenCV passes)``: the same fractions, texture and `Region` table computed the
  former way: the two classes' OpenCV region passes (`measure._opencv_class_rows`)
  on a two-thread pool while the grey histogram runs, as `measure` did before the kernel.
* ``scikit-image regionprops``: `skimage.measure.label` + `regionprops_table` for the same
  per-region numbers (area, bbox, centroid, perimeter, solidity, axis lengths), per class;
  only where scikit-image is installed. Its perimeter is its own 4-neighbour estimate, not
  OpenCV's, so it is a speed reference only.
* ``region_table kernel``: the kernel call alone, for the share of the total it takes.
* With ``--before-kernel FILE`` (a former ``kernels/regions.py``, e.g. from ``git show``):
  ``region_table kernel (before)``, that file's kernel on the same masks, its table checked
  equal to today's, and ``measure (before)``: `measure` as it was with that kernel, every
  `Region` object made (the former measure), both interleaved with the rows above.

``--masks truth`` (default) measures the generator's own masks; ``--masks classical`` the
classical engine's masks of camera-like frames after the default preprocessing, what a
station measures (~4,500 regions of 30 px or more, ~7,000 in all, per 2560x1920 frame).

Like `bench/cpu_kernels.py`, this sets ``OMP_WAIT_POLICY=PASSIVE`` (as the daemon does)
unless the environment sets it: numba's OpenMP workers then sleep instead of spinning, so a
busy second core costs a fallback to one-thread speed instead of a scheduler tick per
parallel region.

Usage::

    .venv/bin/python bench/measure_bench.py                 # 3 frames x 15 repeats, ~1-2 min
    .venv/bin/python bench/measure_bench.py --frames 2 --repeats 5 --generator v2
    git show HEAD~1:kernels/regions.py > /tmp/regions_before.py
    .venv/bin/python bench/measure_bench.py --masks classical --min-area 30 --before-kernel /tmp/regions_before.py
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before numba starts its OpenMP pool

import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402
import numba  # noqa: E402
import numpy as np  # noqa: E402

import inspectd.analysis.measure as measure_module  # noqa: E402
from inspectd.data import synth  # noqa: E402
from inspectd.types import CLASS_NAMES, MELTED, PORE, UNMELTED, Measurements, Region  # noqa: E402
from kernels.regions import region_table  # noqa: E402

UM_PER_PX = 0.5


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def opencv_measure(pool: ThreadPoolExecutor, mask: np.ndarray, enhanced: np.ndarray, min_area: int) -> Measurements:
    """`measure` as computed before the kernel: per-class OpenCV passes beside the histogram."""
    pending = [
        pool.submit(measure_module._opencv_class_rows, (mask == c).view(np.uint8), UM_PER_PX, min_area)
        for c in (UNMELTED, PORE)
    ]
    metrics = former_pixel_metrics(mask, enhanced)
    regions: list[Region] = []
    for c, future in zip((UNMELTED, PORE), pending, strict=True):
        rows, ignored = future.result()
        # Positional, as the former code built them (the rows hold the fields in field order).
        class_regions = [Region(len(regions) + i + 1, CLASS_NAMES[c], *row.values()) for i, row in enumerate(rows)]
        regions.extend(class_regions)
        metrics.update(measure_module._region_summary(CLASS_NAMES[c], class_regions, ignored))
    return Measurements(metrics=metrics, regions=tuple(regions))


def former_pixel_metrics(mask: np.ndarray, enhanced: np.ndarray) -> dict[str, float]:
    """The fractions, areas and texture as the former `measure` formed them (`cv2.calcHist`,
    `former_texture`), for both reference rows."""
    joint_hist = measure_module._opencv_class_grey_histogram(mask, enhanced)
    pixel_counts = joint_hist.sum(axis=1)
    um2 = UM_PER_PX * UM_PER_PX
    metrics: dict[str, float] = {"image_area_um2": mask.size * um2}
    for c in (MELTED, UNMELTED, PORE):
        name = CLASS_NAMES[c]
        key = "porosity_pct" if c == PORE else f"{name}_fraction_pct"
        metrics[key] = 100.0 * float(pixel_counts[c]) / mask.size
        metrics[f"{name}_area_um2"] = float(pixel_counts[c]) * um2
        metrics[f"{name}_entropy_bits"], metrics[f"{name}_variance"] = former_texture(joint_hist[c])
    metrics["entropy_bits"], metrics["variance"] = former_texture(joint_hist.sum(axis=0))
    return metrics


def former_texture(grey_hist: np.ndarray) -> tuple[float, float]:
    """`measure._texture` as it was: BLAS dots (`@`) for every histogram, 65536 bins included,
    which woke BLAS's thread pool on 16-bit frames (the reference rows' texture)."""
    n = float(grey_hist.sum())
    if n <= 0:
        return 0.0, 0.0
    levels = grey_hist.size
    entropy = measure_module.shannon_entropy_bits(grey_hist.reshape(256, levels // 256).sum(axis=1))
    grey = np.arange(levels, dtype=np.float64) / (levels - 1)
    mean = float(grey @ grey_hist) / n
    variance = float(((grey - mean) ** 2) @ grey_hist) / n
    return entropy, variance


def summaries_from_regions_measure(mask: np.ndarray, enhanced: np.ndarray, min_area: int,
                                   kernel: Callable[..., Any] = region_table) -> Measurements:
    """`measure` as it was before its per-class means were read from the columns: the same
    table (from `kernel`) and every `Region` made, the means then taken over the `Region`
    objects (`_region_summary`)."""
    measure_module._validate(mask, enhanced, UM_PER_PX, min_area)
    metrics = former_pixel_metrics(mask, enhanced)
    table = kernel(mask, (UNMELTED, PORE), min_area=min_area, connectivity=8)
    regions = tuple(measure_module.TableRegions(measure_module._region_arrays(table, UM_PER_PX)))
    first = 0
    for slot, c in enumerate((UNMELTED, PORE)):
        stop = first + int(np.count_nonzero(table.class_value == c))
        metrics.update(measure_module._region_summary(CLASS_NAMES[c], regions[first:stop], int(table.small_counts[slot])))
        first = stop
    return Measurements(metrics=metrics, regions=regions)


def skimage_regionprops(mask: np.ndarray) -> int:
    """scikit-image's label + regionprops_table for the same per-region numbers; region count."""
    from skimage.measure import label, regionprops_table

    count = 0
    for c in (UNMELTED, PORE):
        labels = label(mask == c, connectivity=2)
        table = regionprops_table(
            labels,
            properties=("area", "bbox", "centroid", "perimeter", "solidity",
                        "axis_major_length", "axis_minor_length"),
        )
        count += len(table["area"])
    return count


def load_kernel(path: str) -> Callable[..., Any]:
    """`region_table` of a former `kernels/regions.py` saved at `path` (loaded under its own name)."""
    spec = importlib.util.spec_from_file_location("regions_before", path)
    if spec is None or spec.loader is None:
        msg = f"--before-kernel: cannot load {path}"
        raise SystemExit(msg)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # numba's cache finds the module again by name
    spec.loader.exec_module(module)
    return module.region_table


def classical_masks(width: int, height: int, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(classical engine's mask, enhanced frame) of `n` camera-like frames, default config:
    the frames `bench/throughput.py` feeds the station, so the regions a station measures."""
    from inspectd_bench.throughput import generate_frames

    from inspectd.analysis.engines.classical import ClassicalEngine
    from inspectd.analysis.preprocess import enhance
    from inspectd.config import Config

    cfg = Config()
    engine = ClassicalEngine(cfg.segment)
    pairs = []
    for raw in generate_frames(width, height, n):
        enhanced = enhance(raw, cfg.preprocess, backend="cpu")
        pairs.append((np.ascontiguousarray(engine.segment(enhanced)), enhanced))
    return pairs


def tables_equal(a: Any, b: Any) -> bool:
    """Every column equal (hull numbers to 1e-12 relative: float summation order)."""
    for name in a._fields:
        x, y = getattr(a, name), getattr(b, name)
        close = name.startswith("hull_")
        if not (np.allclose(x, y, rtol=1e-12, atol=0.0, equal_nan=True) if close else np.array_equal(x, y, equal_nan=True)):
            return False
    return True


def timed(fn) -> tuple[float, float]:
    """(wall ms, CPU ms of this process: every thread's time, so work done, whatever the load)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - start) * 1000.0, (time.process_time() - start_cpu) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=3, help="synthetic frames (seeds 1..N)")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per frame and method")
    parser.add_argument("--generator", choices=("v2", "v3"), default="v3")
    parser.add_argument("--size", default="2560x1920", help="WIDTHxHEIGHT")
    parser.add_argument("--min-area", type=int, default=1,
                        help="min_region_area_px (1: every region; the shipped config uses 30)")
    parser.add_argument("--no-skimage", action="store_true", help="skip scikit-image (slow)")
    parser.add_argument("--masks", choices=("truth", "classical"), default="truth",
                        help="the generator's masks, or the classical engine's on camera-like frames")
    parser.add_argument("--before-kernel", metavar="FILE",
                        help="a former kernels/regions.py to time beside today's (git show REV:kernels/regions.py)")
    parser.add_argument("--threads", type=int, default=None,
                        help="numba threads for the kernels (default: one per core); 1 compares kernels' CPU "
                             "without the other core's noise")
    parser.add_argument("--bits", type=int, choices=(8, 16), default=8,
                        help="grey levels of the enhanced frame (16: the 8-bit frame x 257, as a 16-bit camera's)")
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.lower().split("x"))
    if args.threads is not None:
        if not 1 <= args.threads <= numba.config.NUMBA_NUM_THREADS:
            parser.error(f"--threads must lie in 1..{numba.config.NUMBA_NUM_THREADS}")
        numba.set_num_threads(args.threads)

    try:
        import skimage

        skimage_version = None if args.no_skimage else skimage.__version__
    except ImportError:
        skimage_version = None

    make = synth.generate if args.generator == "v2" else synth.generate_v3
    frames = []
    if args.masks == "classical":
        pairs = classical_masks(width, height, args.frames)
    else:
        samples = [make(height, width, seed=seed) for seed in range(1, args.frames + 1)]
        pairs = [(sample.mask, sample.image) for sample in samples]
    for mask, image8 in pairs:
        image = image8 if args.bits == 8 else image8.astype(np.uint16) * 257
        frames.append((np.ascontiguousarray(mask), np.ascontiguousarray(image)))
    before_kernel = load_kernel(args.before_kernel) if args.before_kernel else None

    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"numba {numba.__version__} ({numba.get_num_threads()} threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY')}), OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads)"
          + (f", scikit-image {skimage_version}" if skimage_version else ", scikit-image: not run"))
    masks_from = ("the classical engine's masks of camera-like frames" if args.masks == "classical"
                  else "the generator's masks")
    print(f"frames: {len(frames)} x {width}x{height} synthetic {args.generator}, {masks_from}, {args.bits}-bit, "
          f"min_region_area_px={args.min_area}, {args.repeats} repeats each"
          + (f"; before: {args.before_kernel}" if args.before_kernel else ""))

    names = ["measure (numba)", "measure (numba), regions read", "measure (former: calcHist, BLAS, Region means)",
             "measure (OpenCV passes)", "region_table kernel"]
    if before_kernel:
        names += ["measure (before)", "region_table kernel (before)"]
    if skimage_version:
        names.append("scikit-image regionprops")
    medians: dict[str, list[float]] = {name: [] for name in names}
    bests: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="bench-opencv") as pool:
        for mask, enhanced in frames:
            new = measure_module.measure(mask, enhanced, um_per_px=UM_PER_PX, min_region_area_px=args.min_area)
            old = opencv_measure(pool, mask, enhanced, args.min_area)
            former = summaries_from_regions_measure(mask, enhanced, args.min_area)
            if former.regions != new.regions or any(
                not math.isclose(former.metrics[key], value, rel_tol=1e-12, abs_tol=1e-15)
                for key, value in new.metrics.items()
            ):
                msg = "measure differs from the former one (histogram by calcHist, means over the Region objects)"
                raise SystemExit(msg)
            if before_kernel and not tables_equal(
                before_kernel(mask, (UNMELTED, PORE), min_area=args.min_area),
                region_table(mask, (UNMELTED, PORE), min_area=args.min_area),
            ):
                msg = "the --before-kernel table differs from today's"
                raise SystemExit(msg)
            if len(new.regions) != len(old.regions):
                msg = f"region counts differ: numba {len(new.regions)}, OpenCV {len(old.regions)}"
                raise SystemExit(msg)
            print(f"  frame: {len(new.regions)} regions "
                  f"({int(new.metrics['unmelted_count'])} unmelted, {int(new.metrics['pore_count'])} pores)")
            per_frame: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
            for _ in range(args.repeats):
                per_frame["measure (numba)"].append(timed(lambda m=mask, e=enhanced: measure_module.measure(
                    m, e, um_per_px=UM_PER_PX, min_region_area_px=args.min_area)))
                per_frame["measure (numba), regions read"].append(timed(lambda m=mask, e=enhanced: tuple(measure_module.measure(
                    m, e, um_per_px=UM_PER_PX, min_region_area_px=args.min_area).regions)))
                per_frame["measure (former: calcHist, BLAS, Region means)"].append(timed(
                    lambda m=mask, e=enhanced: summaries_from_regions_measure(m, e, args.min_area)))
                per_frame["measure (OpenCV passes)"].append(timed(lambda m=mask, e=enhanced: opencv_measure(pool, m, e, args.min_area)))
                per_frame["region_table kernel"].append(timed(lambda m=mask: region_table(
                    m, (UNMELTED, PORE), min_area=args.min_area)))
                if before_kernel:
                    per_frame["measure (before)"].append(timed(lambda m=mask, e=enhanced: summaries_from_regions_measure(
                        m, e, args.min_area, before_kernel)))
                    per_frame["region_table kernel (before)"].append(timed(lambda m=mask: before_kernel(
                        m, (UNMELTED, PORE), min_area=args.min_area)))
                if skimage_version:
                    per_frame["scikit-image regionprops"].append(timed(lambda m=mask: skimage_regionprops(m)))
            for name, times in per_frame.items():
                medians[name].append(statistics.median(wall for wall, _ in times))
                bests[name].append(min(wall for wall, _ in times))
                cpu[name].append(statistics.median(cpu_ms for _, cpu_ms in times))

    # Mean over frames of each frame's median (and best) time.
    base = statistics.mean(medians["measure (numba)"])
    print()
    print("| method | ms per frame (median) | best | ratio to numba measure | CPU ms (all threads) |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        median = statistics.mean(medians[name])
        print(f"| {name} | {median:.1f} | {statistics.mean(bests[name]):.1f} | {median / base:.2f}x "
              f"| {statistics.mean(cpu[name]):.1f} |")


if __name__ == "__main__":
    main()
