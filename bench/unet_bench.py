"""U-Net segment stage, before/after in one run: two int8 files (or configs) interleaved on one frame.

    git show <earlier commit>:inspectd/models/unet-coating-v3.int8.onnx > /tmp/before.int8.onnx
    python bench/unet_bench.py --before /tmp/before.int8.onnx [--after inspectd/models/unet-coating-v3.int8.onnx]

Each round runs `UnetEngine.segment` once per variant, in alternating order, on one
2560x1920 v3 frame (seed 5); it prints the median and the spread per variant, whether the
masks are identical, the machine and the load average, and the stage split of the after variant
(normalise, tile cut, network per call, blend, guided argmax).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

import kernels
from inspectd.analysis.engines import create_engine, tiling
from inspectd.analysis.engines import unet_contract as contract
from inspectd.analysis.engines.unet import bundled_model_path
from inspectd.config import SegmentConfig, UnetConfig
from inspectd.data import synth


def _engine(path: Path):
    engine = create_engine(SegmentConfig(engine="unet", backend="cpu", unet=UnetConfig(model=path)))
    engine.warm_up()
    return engine


def _ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def stage_split(engine, frame: np.ndarray, repeats: int) -> dict[str, float]:
    """Median ms of each part of `UnetEngine.segment` for a guided U-Net, measured one by one."""
    plan = engine._plan(*frame.shape)
    normalised = contract.normalise(tiling.pad_frame(frame, plan))[0, 0]
    tiles = list(tiling.extract_tiles(normalised, plan))
    per_run = engine._tiles_per_run
    batches = [np.stack(tiles[i:i + per_run])[:, None] for i in range(0, plan.n_tiles, per_run)]
    outputs = [engine._runner.run(batch) for batch in batches]
    stride = engine.output_stride

    def blend() -> np.ndarray:
        blender = tiling.TileBlender(plan.coarse(stride), outputs[0].shape[1])
        for index, tile in enumerate(t for out in outputs for t in out):
            blender.add(tile, *blender.plan.origins[index])
        return blender.blended()

    pairs = blend()
    return {
        "normalise": _ms(lambda: contract.normalise(tiling.pad_frame(frame, plan)), repeats),
        "tile cut": _ms(lambda: [np.stack(tiles[i:i + per_run]) for i in range(0, plan.n_tiles, per_run)], repeats),
        "network": _ms(lambda: [engine._runner.run(batch) for batch in batches], repeats),
        "blend": _ms(blend, repeats),
        "guided argmax": _ms(lambda: kernels.guided_argmax(pairs, frame, stride, mean=contract.NORM_MEAN,
                                                           std=contract.NORM_STD, backend="cpu"), repeats),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="ONNX file of the before variant")
    parser.add_argument("--after", type=Path, default=bundled_model_path("int8"), help="ONNX file of the after variant")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--size", default="2560x1920")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    frame = synth.generate_v3(height, width, seed=5).image
    engines = {"before": _engine(args.before), "after": _engine(args.after)}
    times: dict[str, list[float]] = {name: [] for name in engines}
    masks: dict[str, np.ndarray] = {}
    load_before = os.getloadavg()
    for index in range(args.rounds):
        order = list(engines) if index % 2 == 0 else list(engines)[::-1]
        for name in order:
            start = time.perf_counter()
            masks[name] = engines[name].segment(frame)
            times[name].append((time.perf_counter() - start) * 1e3)
    load_after = os.getloadavg()
    plan = engines["after"]._plan(height, width)
    tile_area = plan.tile_hw[0] * plan.tile_hw[1] * plan.n_tiles
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load average "
          f"{[round(v, 2) for v in load_before]} -> {[round(v, 2) for v in load_after]}")
    print(f"frame {width}x{height}: {plan.n_tiles} tiles of {plan.tile_hw[1]}x{plan.tile_hw[0]}, "
          f"{100 * (tile_area / (width * height) - 1):.1f} % of the frame computed twice (overlap)")
    for name, values in times.items():
        low, high = np.percentile(values, [10, 90])
        print(f"{name:7s} {Path(getattr(args, name)).name}: median {np.median(values):6.1f} ms "
              f"(p10 {low:.1f}, p90 {high:.1f}, {len(values)} runs)")
    print(f"after / before: {np.median(times['after']) / np.median(times['before']):.3f}; masks identical: "
          f"{bool(np.array_equal(masks['before'], masks['after']))} "
          f"(agreement {float(np.mean(masks['before'] == masks['after'])):.6f})")
    for name in engines:
        split = stage_split(engines[name], frame, 5)
        print(f"{name} stages (median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in split.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
