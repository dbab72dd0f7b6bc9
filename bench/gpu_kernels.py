"""GPU rows of the kernel benchmark: the CUDA kernels' device time against the memory-bandwidth floor.

For each frame size (default 1024x1024, 2560x1920, 4096x4096) it times, on the calling
thread's CUDA stream, with CUDA events, as the median of many runs after warm-up:

* ``clahe`` uint8 and uint16 (8x8 tiles, clip 2), ``otsu_threshold`` and ``threshold`` on
  uint8 frames already on the device (device array in, device array out);
* ``unet tiles`` and ``unet blend``: the U-Net engine's device path around the network
  (pad + normalise + cut into tiles; feather the tiles' coarse outputs together);
* ``preprocess``: the daemon's GPU path for one frame: upload from page-locked host memory,
  CLAHE, Otsu, threshold, download of the mask (CUDA events on the stream, plus host
  wall-clock time, which adds the Python launch overhead and the host side of Otsu).

Beside each kernel it prints the memory-bandwidth floor: the bytes the kernel cannot avoid
moving (its input read once and its output written once; for ``preprocess`` the PCIe/NVLink
transfers plus the kernels' floors) divided by the bandwidth measured here (device-to-device
copy, counted as bytes read + written per second; pinned host-to-device and device-to-host
copies), and the ratio measured / floor. The issue's target for CLAHE on 4096x4096 is
within 3x the floor plus one kernel launch (the launch time measured here is printed too).

Comparators where installed, timed the same way: cuCIM's ``equalize_adapthist`` and
``threshold_otsu`` (different semantics: float output, skimage's clip normalisation; shown
for scale only), CuPy's ``(frame > t).astype(uint8)``, OpenCV's CUDA CLAHE (``cv2.cuda``,
only in OpenCV builds with CUDA, not the PyPI wheels).

Timings are only ever taken on a real GPU. Without one, or under numba's simulator, the
script prints one ``no CUDA GPU: <reason>`` line and exits 0 (``--simulator-smoke-test``
runs the code paths under ``NUMBA_ENABLE_CUDASIM=1`` on tiny frames with meaningless
numbers, to test this script on a CPU box; it writes no JSON).

Usage::

    .venv/bin/python bench/gpu_kernels.py
    .venv/bin/python bench/gpu_kernels.py --sizes 2560x1920 --repeats 500
    NUMBA_ENABLE_CUDASIM=1 .venv/bin/python bench/gpu_kernels.py --simulator-smoke-test
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numba
import numpy as np
from numba import cuda  # never fails on a CPU box: the driver is only touched at first use

import kernels
from kernels import cuda_device, gpu_config

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_SIZES = "1024x1024,2560x1920,4096x4096"
DEFAULT_JSON = REPO_ROOT / "bench" / "results" / "gpu_kernels.json"
CLAHE_CLIP_LIMIT = 2.0
CLAHE_TILE_GRID = (8, 8)  # (rows, cols)
BANDWIDTH_BUFFER_BYTES = 256 << 20
# The daemon's default U-Net tiles (segment.unet.tile_px / overlap_px; a test keeps them equal).
# Literal rather than read from inspectd.config: pydantic is not on a bare GPU machine.
UNET_TILE_PX = 2560
UNET_OVERLAP_PX = 64


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'2560x1920,1024x1024' (width x height) -> [(width, height), ...]."""
    sizes = []
    for item in text.split(","):
        width, _, height = item.strip().lower().partition("x")
        sizes.append((int(width), int(height)))
    return sizes


def synthetic_frame(width: int, height: int, dtype, seed: int = 0) -> np.ndarray:
    """A micrograph-like frame: smooth blobs, a lighting gradient and sensor noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(max(height // 32, 2), max(width // 32, 2)))
    blobs = np.kron(coarse, np.ones((32, 32)))[:height, :width]
    blobs = np.pad(blobs, ((0, height - blobs.shape[0]), (0, width - blobs.shape[1])), mode="edge")
    field = blobs + np.linspace(-0.5, 0.5, width)[None, :] + rng.normal(scale=0.15, size=(height, width))
    field = (field - field.min()) / (field.max() - field.min())
    top = np.iinfo(dtype).max
    return np.clip(field * top * 0.85 + top * 0.05, 0, top).astype(dtype)


class EventTimer:
    """Median device time of a callable on this thread's stream, by CUDA events."""

    def __init__(self, repeats: int, warmup: int) -> None:
        self.stream = cuda_device.thread_stream()
        self.repeats = repeats
        self.warmup = warmup

    def time_ms(self, run) -> tuple[float, float]:
        """(median device ms between events around ``run()``, median host wall ms of the same calls)."""
        for _ in range(self.warmup):
            run()
        self.stream.synchronize()
        start, end = cuda.event(), cuda.event()
        device_ms, wall_ms = [], []
        for _ in range(self.repeats):
            began = time.perf_counter()
            start.record(self.stream)
            run()
            end.record(self.stream)
            end.synchronize()
            wall_ms.append((time.perf_counter() - began) * 1e3)
            device_ms.append(start.elapsed_time(end))
        return statistics.median(device_ms), statistics.median(wall_ms)


def measure_bandwidths(timer: EventTimer, buffer_bytes: int) -> dict[str, float]:
    """Bytes per ms of a device-to-device copy (read + written) and of pinned host<->device copies."""
    stream = timer.stream
    n = buffer_bytes // 4
    src = cuda.device_array(n, dtype=np.float32, stream=stream)
    dst = cuda.device_array(n, dtype=np.float32, stream=stream)
    host = cuda.pinned_array(n, dtype=np.float32)
    host[:] = 1.0
    src.copy_to_device(host, stream=stream)
    d2d_ms, _ = timer.time_ms(lambda: dst.copy_to_device(src, stream=stream))
    h2d_ms, _ = timer.time_ms(lambda: src.copy_to_device(host, stream=stream))
    d2h_ms, _ = timer.time_ms(lambda: src.copy_to_host(host, stream=stream))
    return {
        "d2d_bytes_per_ms": 2 * buffer_bytes / max(d2d_ms, 1e-9),
        "h2d_bytes_per_ms": buffer_bytes / max(h2d_ms, 1e-9),
        "d2h_bytes_per_ms": buffer_bytes / max(d2h_ms, 1e-9),
    }


def _empty(values):
    """A kernel that does nothing (its store never runs): it times a launch alone."""
    if cuda.threadIdx.x == 0 and values.shape[0] < 0:
        values[0] = 0


def measure_launch_ms(timer: EventTimer) -> float:
    """Device time of one launch of an empty kernel: the 'plus one launch' of the target."""
    empty = cuda.jit(_empty)
    values = cuda.device_array(1, dtype=np.int32)
    stream = timer.stream
    device_ms, _ = timer.time_ms(lambda: empty[1, 32, stream](values))
    return device_ms


def comparators(frame: np.ndarray, level: int, timer: EventTimer) -> dict[str, float]:
    """Device ms of installed third-party GPU twins (absent ones are simply missing)."""
    found: dict[str, float] = {}
    try:
        import cupy as cp
    except Exception:  # CuPy not installed, or no matching CUDA runtime
        cp = None
    if cp is not None:
        frame_cp = cp.asarray(frame)

        def cupy_ms(run) -> float:
            for _ in range(timer.warmup):
                run()
            start, end = cp.cuda.Event(), cp.cuda.Event()
            times = []
            for _ in range(timer.repeats):
                start.record()
                run()
                end.record()
                end.synchronize()
                times.append(cp.cuda.get_elapsed_time(start, end))
            return statistics.median(times)

        found["cupy threshold"] = cupy_ms(lambda: (frame_cp > level).astype(cp.uint8))
        try:
            from cucim.skimage.exposure import equalize_adapthist
            from cucim.skimage.filters import threshold_otsu

            kernel_size = (frame.shape[0] // CLAHE_TILE_GRID[0], frame.shape[1] // CLAHE_TILE_GRID[1])
            found["cucim equalize_adapthist (float out)"] = cupy_ms(
                lambda: equalize_adapthist(frame_cp, kernel_size=kernel_size, clip_limit=0.01)
            )
            found["cucim threshold_otsu"] = cupy_ms(lambda: threshold_otsu(frame_cp))
        except Exception as exc:  # cuCIM absent or failing: say so, keep going
            print(f"  (cuCIM comparators skipped: {type(exc).__name__}: {exc})")
    try:
        import cv2

        has_cv_cuda = hasattr(cv2, "cuda") and cv2.cuda.getCudaEnabledDeviceCount() > 0
    except Exception:
        has_cv_cuda = False
    if has_cv_cuda:
        gpu_mat = cv2.cuda_GpuMat()
        gpu_mat.upload(frame)
        clahe = cv2.cuda.createCLAHE(clipLimit=CLAHE_CLIP_LIMIT, tileGridSize=CLAHE_TILE_GRID[::-1])
        cv_stream = cv2.cuda.Stream()

        def opencv_clahe() -> None:
            clahe.apply(gpu_mat, cv_stream)
            cv_stream.waitForCompletion()

        for _ in range(timer.warmup):
            opencv_clahe()
        times = []
        for _ in range(timer.repeats):
            began = time.perf_counter()
            opencv_clahe()
            times.append((time.perf_counter() - began) * 1e3)
        found["opencv cuda CLAHE (wall)"] = statistics.median(times)
    return found


def bench_size(timer: EventTimer, width: int, height: int, bandwidth: dict[str, float],
               grid: tuple[int, int] = CLAHE_TILE_GRID) -> list[dict]:
    """All rows of one frame size."""
    d2d = bandwidth["d2d_bytes_per_ms"]
    rows = []
    frame8 = synthetic_frame(width, height, np.uint8)
    frame16 = synthetic_frame(width, height, np.uint16, seed=1)
    n = width * height
    dev8 = cuda.to_device(frame8, stream=timer.stream)
    dev16 = cuda.to_device(frame16, stream=timer.stream)
    level = kernels.otsu_threshold(frame8, backend="cpu")

    def add(kernel: str, run, floor_bytes_or_ms, floor_is_ms: bool = False) -> None:
        device_ms, wall_ms = timer.time_ms(run)
        floor_ms = floor_bytes_or_ms if floor_is_ms else floor_bytes_or_ms / d2d
        rows.append({
            "size": f"{width}x{height}", "kernel": kernel, "device_ms": device_ms, "wall_ms": wall_ms,
            "floor_ms": floor_ms, "x_floor": device_ms / floor_ms if floor_ms > 0 else None,
        })

    add("clahe u8", lambda: kernels.clahe(dev8, CLAHE_CLIP_LIMIT, grid, backend="cuda"), 2 * n)
    add("clahe u16", lambda: kernels.clahe(dev16, CLAHE_CLIP_LIMIT, grid, backend="cuda"), 4 * n)
    add("otsu u8", lambda: kernels.otsu_threshold(dev8, backend="cuda"), n)
    add("threshold u8", lambda: kernels.threshold(dev8, level, backend="cuda"), 2 * n)
    # The guided U-Net's last step: 6 coarse float maps at 1/4 per side, the frame, the mask.
    pairs = cuda.to_device(np.random.default_rng(2).standard_normal(
        (6, -(-height // 4), -(-width // 4))).astype(np.float32), stream=timer.stream)
    add("guided argmax u8 (stride 4)", lambda: kernels.guided_argmax(pairs, dev8, 4, backend="cuda"),
        6 * 4 * pairs.shape[1] * pairs.shape[2] + 2 * n)

    add_unet_tile_rows(add, dev8, height, width)

    pinned = cuda_device.pinned_empty(frame8.shape, np.uint8)
    pinned[...] = frame8
    upload = cuda.device_array(frame8.shape, dtype=np.uint8)
    mask_host = cuda_device.pinned_empty(frame8.shape, np.uint8)

    def preprocess() -> None:
        upload.copy_to_device(pinned, stream=timer.stream)
        enhanced = kernels.clahe(upload, CLAHE_CLIP_LIMIT, grid, backend="cuda")
        otsu_level = kernels.otsu_threshold(enhanced, backend="cuda")
        mask = kernels.threshold(enhanced, otsu_level, backend="cuda")
        mask.copy_to_host(mask_host, stream=timer.stream)

    transfer_ms = n / bandwidth["h2d_bytes_per_ms"] + n / bandwidth["d2h_bytes_per_ms"]
    add("preprocess u8 (upload+clahe+otsu+threshold+mask)", preprocess,
        transfer_ms + (2 * n + n + 2 * n) / d2d, floor_is_ms=True)

    for name, ms in comparators(frame8, level, timer).items():
        rows.append({"size": f"{width}x{height}", "kernel": name, "device_ms": ms, "wall_ms": None,
                     "floor_ms": None, "x_floor": None})
    return rows


def add_unet_tile_rows(add, frame_dev, height: int, width: int) -> None:
    """The U-Net engine's device path around the network, for the daemon's default tiles (2560 px, 64 overlap).

    ``tiles``: reflect-pad + normalise + cut the whole frame into the float32 batch (floor:
    the frame read once, the batch written once). ``blend``: zero the accumulators, feather
    every tile's 6 coarse maps (stride 4) into them, divide (floor: the maps read once, the
    accumulators written once).
    """
    from inspectd.analysis.engines import tiling
    from inspectd.analysis.engines import unet_contract as contract
    from kernels.gpu_tiles import gpu_blend_add, gpu_blend_mean, gpu_normalised_tiles

    plan = tiling.plan_tiles(height, width, UNET_TILE_PX, UNET_OVERLAP_PX, multiple=contract.INPUT_MULTIPLE)
    coarse = plan.coarse(4)
    stream = cuda_device.thread_stream()
    table = cuda.to_device(np.ascontiguousarray(contract.normalise_table(np.dtype(np.uint8))), stream=stream)
    origins = cuda.to_device(np.array(plan.origins, np.int32), stream=stream)
    batch = cuda.device_array((plan.n_tiles, 1, *plan.tile_hw), np.float32, stream=stream)
    add(f"unet tiles u8 ({plan.n_tiles} x {plan.tile_hw[0]}x{plan.tile_hw[1]})",
        lambda: gpu_normalised_tiles(frame_dev, table, origins, batch), height * width + 4 * batch.size)
    outputs = cuda.to_device(np.random.default_rng(3).standard_normal(
        (plan.n_tiles, 6, *coarse.tile_hw)).astype(np.float32), stream=stream)
    total = cuda.device_array((6, *coarse.padded_hw), np.float32, stream=stream)
    weight_sum = cuda.device_array(coarse.padded_hw, np.float32, stream=stream)

    def blend() -> None:
        cuda_device.zero_fill(total)
        cuda_device.zero_fill(weight_sum)
        for index, origin in enumerate(coarse.origins):
            gpu_blend_add(total, weight_sum, outputs[index], origin, coarse.overlap_px,
                          tiling.feather_sides(coarse, *origin))
        gpu_blend_mean(total, weight_sum)

    add(f"unet blend ({plan.n_tiles} tiles, 6 maps, stride 4)", blend, 4 * (outputs.size + total.size))


def print_table(rows: list[dict], launch_ms: float) -> None:
    print(f"{'size':>10}  {'kernel':<52} {'device ms':>10} {'wall ms':>9} {'floor ms':>9} {'x floor':>8}")
    for row in rows:
        def fmt(value, spec):
            return format(value, spec) if value is not None else "-"
        print(
            f"{row['size']:>10}  {row['kernel']:<52} {fmt(row['device_ms'], '10.4f')} "
            f"{fmt(row['wall_ms'], '9.3f')} {fmt(row['floor_ms'], '9.4f')} {fmt(row['x_floor'], '8.2f')}"
        )
    for row in rows:
        if row["kernel"] == "clahe u8" and row["size"] == "4096x4096":
            target = 3 * row["floor_ms"] + launch_ms
            verdict = "met" if row["device_ms"] <= target else "NOT met"
            print(f"target CLAHE 4096x4096 <= 3 x floor + one launch = {target:.4f} ms: {verdict}")
        if row["kernel"].startswith("preprocess") and row["size"] == "2560x1920":
            verdict = "met" if row["wall_ms"] <= 1.0 else "NOT met"
            print(f"target preprocess 2560x1920 < 1 ms (host wall): {row['wall_ms']:.3f} ms, {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated WIDTHxHEIGHT list")
    parser.add_argument("--repeats", type=int, default=100, help="timed runs per kernel (median)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs before timing")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the rows")
    parser.add_argument("--simulator-smoke-test", action="store_true",
                        help="run the code paths under NUMBA_ENABLE_CUDASIM=1 (meaningless numbers, no JSON)")
    args = parser.parse_args(argv)

    usable, reason = cuda_device.cuda_usable()
    smoke = args.simulator_smoke_test
    if cuda_device.is_simulator() and not smoke:
        print("no CUDA GPU: numba's CUDA simulator is enabled (NUMBA_ENABLE_CUDASIM=1), "
              "and its timings mean nothing; GPU rows skipped")
        return 0
    if smoke and not cuda_device.is_simulator():
        print("--simulator-smoke-test needs NUMBA_ENABLE_CUDASIM=1 set before Python starts")
        return 2
    if not usable:
        print(f"no CUDA GPU: {reason}; GPU rows skipped")
        return 0

    sizes = parse_sizes("24x16" if smoke else args.sizes)
    repeats, warmup = (1, 1) if smoke else (args.repeats, args.warmup)
    if smoke:  # tiny blocks: the simulator runs every thread in Python
        gpu_config.THREADS_PER_BLOCK = 32
        gpu_config.PIXEL_BLOCK = (8, 2)
    timer = EventTimer(repeats, warmup)
    bandwidth = measure_bandwidths(timer, 1 << 16 if smoke else BANDWIDTH_BUFFER_BYTES)
    launch_ms = measure_launch_ms(timer)
    print(f"device: {reason}; numba {numba.__version__}")
    print(
        f"bandwidth: device copy {bandwidth['d2d_bytes_per_ms'] / 1e6:.1f} GB/s (read + written), "
        f"pinned H2D {bandwidth['h2d_bytes_per_ms'] / 1e6:.1f} GB/s, "
        f"D2H {bandwidth['d2h_bytes_per_ms'] / 1e6:.1f} GB/s; empty launch {launch_ms * 1e3:.1f} us"
    )
    if smoke:
        print("SIMULATOR SMOKE TEST: every number below is meaningless")
    rows = []
    for width, height in sizes:
        rows.extend(bench_size(timer, width, height, bandwidth, (1, 2) if smoke else CLAHE_TILE_GRID))
    print_table(rows, launch_ms)
    if smoke:
        return 0
    record = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": reason,
        "numba": numba.__version__,
        "python": platform.python_version(),
        "repeats": repeats,
        "warmup": warmup,
        "bandwidth_bytes_per_ms": bandwidth,
        "empty_launch_ms": launch_ms,
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
