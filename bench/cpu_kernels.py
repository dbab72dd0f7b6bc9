"""Benchmark the numba kernels against OpenCV and scikit-image at the same thread count.

Times ``kernels.clahe`` / ``otsu_threshold`` / ``threshold`` / ``adaptive_threshold`` against
their OpenCV twins (and scikit-image's ``equalize_adapthist`` / ``threshold_otsu``) on
synthetic micrograph-like frames, with OpenCV and numba pinned to the same number of
threads (``cv2.setNumThreads`` and ``numba.set_num_threads``). Reports the median of many
runs after warm-up, as a table of milliseconds and numba/OpenCV ratios (< 1 means numba is
faster), and writes the same numbers as JSON.

scikit-image is single-threaded numpy code, so its column does not change with
``--threads``; it is timed with fewer repeats (it is 10-100x slower) and only for uint8.

On a shared machine, check the load average recorded in the JSON: when another process
keeps the second core busy, OpenCV's 2-thread times fall back to its 1-thread times.
numba's OpenMP layer (its default where TBB is absent) then stalls for a scheduler tick
(~4 ms) per parallel region if its workers spin-wait, so this script sets
``OMP_WAIT_POLICY=PASSIVE`` unless the environment already sets it, as the daemon does;
with it (or with ``--threading-layer tbb``) numba falls back to 1-thread speed instead.

Then the GPU rows, for the same sizes: ``bench/gpu_kernels.py`` (CUDA kernels' device time
by CUDA events against the memory-bandwidth floor, cuCIM / CuPy / OpenCV CUDA beside them
where installed) where a CUDA GPU is usable; elsewhere one line says why they are missing.

Usage::

    .venv/bin/python bench/cpu_kernels.py                      # full run, ~2-4 minutes
    .venv/bin/python bench/cpu_kernels.py --no-gpu             # CPU rows only
    .venv/bin/python bench/cpu_kernels.py --quick              # two sizes, fewer repeats
    .venv/bin/python bench/cpu_kernels.py --sizes 2560x1920 --threads 1 --repeats 50
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numba
import numpy as np

import kernels

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_SIZES = "1024x1024,2560x1920,4096x4096"
QUICK_SIZES = "1024x1024,2560x1920"
DEFAULT_JSON = REPO_ROOT / "bench" / "results" / "kernels.json"
CLAHE_CLIP_LIMIT = 2.0
CLAHE_TILE_GRID = (8, 8)  # (rows, cols); OpenCV's tileGridSize is (cols, rows)
ADAPTIVE_BLOCK_SIZE = 31
ADAPTIVE_OFFSET = 5
SKIMAGE_MAX_REPEATS = 3


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'2560x1920,1024x1024' (width x height) -> [(width, height), ...]."""
    sizes = []
    for item in text.split(","):
        width, _, height = item.strip().lower().partition("x")
        sizes.append((int(width), int(height)))
    return sizes


def synthetic_frame(width: int, height: int, dtype, seed: int = 0) -> np.ndarray:
    """A micrograph-like frame: blurred blobs, a lighting gradient and sensor noise."""
    rng = np.random.default_rng(seed)
    small = rng.normal(size=(max(height // 16, 2), max(width // 16, 2))).astype(np.float32)
    blobs = cv2.resize(cv2.GaussianBlur(small, (0, 0), 2.0), (width, height), interpolation=cv2.INTER_CUBIC)
    ramp = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    field = blobs + ramp + rng.normal(scale=0.15, size=(height, width)).astype(np.float32)
    field = (field - field.min()) / (field.max() - field.min())
    top = np.iinfo(dtype).max
    return np.clip(field * top * 0.85 + top * 0.05, 0, top).astype(dtype)


def median_ms(funcs: dict[str, object], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median wall time in ms of each callable, after ``warmup`` untimed calls each.

    The callables take turns (one call each per round), so a burst of background load on
    a shared machine hits all of them alike instead of whichever ran at that moment.
    """
    for func in funcs.values():
        for _ in range(warmup):
            func()
    times: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(repeats):
        for name, func in funcs.items():
            start = time.perf_counter()
            func()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def candidates(img: np.ndarray) -> dict[str, dict[str, object]]:
    """For each kernel, the callables that compute it: numba, opencv and maybe skimage."""
    rows, cols = CLAHE_TILE_GRID
    top = int(np.iinfo(img.dtype).max)
    cv_clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP_LIMIT, tileGridSize=(cols, rows))
    level = int(img.mean())
    table: dict[str, dict[str, object]] = {
        "clahe": {
            "numba": lambda: kernels.clahe(img, CLAHE_CLIP_LIMIT, CLAHE_TILE_GRID),
            "opencv": lambda: cv_clahe.apply(img),
        },
        "otsu": {
            "numba": lambda: kernels.otsu_threshold(img),
            "opencv": lambda: cv2.threshold(img, 0, top, cv2.THRESH_BINARY | cv2.THRESH_OTSU),
        },
        "threshold": {
            "numba": lambda: kernels.threshold(img, level),
            "opencv": lambda: cv2.threshold(img, level, 1, cv2.THRESH_BINARY),
        },
    }
    if img.dtype == np.uint8:
        table["adaptive"] = {
            "numba": lambda: kernels.adaptive_threshold(img, ADAPTIVE_BLOCK_SIZE, ADAPTIVE_OFFSET),
            "opencv": lambda: cv2.adaptiveThreshold(
                img, 1, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, ADAPTIVE_BLOCK_SIZE, ADAPTIVE_OFFSET
            ),
        }
    return table


def skimage_candidates(img: np.ndarray) -> dict[str, object]:
    """scikit-image's CLAHE and Otsu, for uint8 only (its CLAHE returns float64 either way)."""
    from skimage import exposure, filters

    if img.dtype != np.uint8:
        return {}
    rows, cols = CLAHE_TILE_GRID
    kernel_size = (img.shape[0] // rows, img.shape[1] // cols)
    # skimage's clip_limit is a fraction of the tile area, OpenCV's a multiple of the mean
    # bin count; 2.0 / 256 bins is the same clipping height.
    clip_fraction = CLAHE_CLIP_LIMIT / 256
    return {
        "clahe": lambda: exposure.equalize_adapthist(img, kernel_size=kernel_size, clip_limit=clip_fraction),
        "otsu": lambda: filters.threshold_otsu(img),
    }


def run(sizes, thread_counts, repeats, dtypes, with_skimage):
    rows = []
    max_threads = numba.config.NUMBA_NUM_THREADS
    for threads in thread_counts:
        if threads > max_threads:
            print(f"skip {threads} threads: numba was started with NUMBA_NUM_THREADS={max_threads}")
            continue
        cv2.setNumThreads(threads)
        numba.set_num_threads(threads)
        for width, height in sizes:
            for dtype in dtypes:
                img = synthetic_frame(width, height, dtype)
                sk = skimage_candidates(img) if with_skimage else {}
                for kernel_name, impls in candidates(img).items():
                    timed = median_ms(impls, repeats)
                    row = {
                        "kernel": kernel_name,
                        "dtype": np.dtype(dtype).name,
                        "size": f"{width}x{height}",
                        "threads": threads,
                        "numba_ms": timed["numba"],
                        "opencv_ms": timed["opencv"],
                        "skimage_ms": None,
                    }
                    if kernel_name in sk:
                        sk_repeats = min(repeats, SKIMAGE_MAX_REPEATS)
                        row["skimage_ms"] = median_ms({"skimage": sk[kernel_name]}, sk_repeats, warmup=1)["skimage"]
                    row["ratio_numba_opencv"] = row["numba_ms"] / row["opencv_ms"]
                    rows.append(row)
                    print_row(row)
    return rows


HEADER = f"{'kernel':<10} {'dtype':<6} {'size (WxH)':<10} {'thr':>3} {'numba ms':>9} {'opencv ms':>10} {'skimage ms':>11} {'numba/cv':>9}"


def print_row(row) -> None:
    skimage = f"{row['skimage_ms']:11.2f}" if row["skimage_ms"] is not None else f"{'-':>11}"
    print(
        f"{row['kernel']:<10} {row['dtype']:<6} {row['size']:<10} {row['threads']:>3} "
        f"{row['numba_ms']:9.2f} {row['opencv_ms']:10.2f} {skimage} {row['ratio_numba_opencv']:9.2f}",
        flush=True,
    )


def select_threading_layer(layer: str) -> None:
    """Pick numba's threading layer before its first parallel call.

    pip's ``tbb`` wheel installs libtbb.so.12 in ``<prefix>/lib``, which is not on the
    loader path of a virtualenv, so numba would silently fall back to OpenMP; preloading
    it makes ``--threading-layer tbb`` work there.
    """
    if layer == "default":
        return
    if layer == "tbb":
        libtbb = Path(sys.prefix) / "lib" / "libtbb.so.12"
        if libtbb.is_file():
            ctypes.CDLL(str(libtbb), mode=ctypes.RTLD_GLOBAL)
    numba.config.THREADING_LAYER = layer


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, object]:
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "opencv": cv2.__version__,
        "numba_threading_layer": numba.threading_layer(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_1_5_15_min": list(os.getloadavg()),
        "clahe_clip_limit": CLAHE_CLIP_LIMIT,
        "clahe_tile_grid_rows_cols": list(CLAHE_TILE_GRID),
        "adaptive_block_size": ADAPTIVE_BLOCK_SIZE,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help=f"width x height list (default {DEFAULT_SIZES})")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 30)")
    parser.add_argument("--threads", default="1,2", help="thread counts to run, e.g. 1,2")
    parser.add_argument("--dtypes", default="uint8,uint16", help="image dtypes, e.g. uint8 or uint8,uint16")
    parser.add_argument("--no-skimage", action="store_true", help="skip the scikit-image column")
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}, 10 repeats")
    parser.add_argument(
        "--threading-layer",
        default="default",
        choices=["default", "tbb", "omp", "workqueue"],
        help="numba threading layer (tbb needs libtbb.so.12; it is preloaded from sys.prefix/lib if there)",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"output file (default {DEFAULT_JSON})")
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU rows (bench/gpu_kernels.py)")
    args = parser.parse_args(argv)

    sizes = parse_sizes(args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))
    repeats = args.repeats or (10 if args.quick else 30)
    thread_counts = [int(n) for n in args.threads.split(",")]
    dtypes = [np.dtype(name).type for name in args.dtypes.split(",")]

    # As the daemon does (inspectd.analysis.analyzer.choose_threading_layer): OpenMP workers sleep
    # instead of spinning between kernels. Must be set before numba loads libgomp.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    select_threading_layer(args.threading_layer)
    kernels.warm_up()
    env = environment()
    print(
        f"numba {env['numba']} ({env['numba_threading_layer']} layer), OpenCV {env['opencv']}, "
        f"{env['cpu_count']} CPUs; median of {repeats} interleaved runs; CLAHE clip "
        f"{CLAHE_CLIP_LIMIT}, grid {CLAHE_TILE_GRID} (rows, cols)"
    )
    print(HEADER)
    rows = run(sizes, thread_counts, repeats, dtypes, with_skimage=not args.no_skimage)
    env["load_average_after_1_5_15_min"] = list(os.getloadavg())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"environment": env, "repeats": repeats, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")
    if args.no_gpu:
        return 0
    return gpu_rows(sizes)


def gpu_rows(sizes: list[tuple[int, int]]) -> int:
    """``bench/gpu_kernels.py`` for the same sizes (its own table and JSON), or its one 'no CUDA GPU' line."""
    import gpu_kernels

    print("\nGPU rows (bench/gpu_kernels.py):")
    return gpu_kernels.main(["--sizes", ",".join(f"{width}x{height}" for width, height in sizes)])


if __name__ == "__main__":
    raise SystemExit(main())
