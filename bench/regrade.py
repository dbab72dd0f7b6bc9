#!/usr/bin/env python3
"""How fast `inspectd regrade` re-grades, against serial `inspectd analyze`, on the same frames.

    python bench/regrade.py [--frames 200] [--size 1280x960] [--workers 1,2] [--json FILE]

Writes FRAMES distinct synthetic micrographs (v3 generator: `--frames / 8` seeds, each in its
8 flips and rotations), then, in one run, times:

- `inspectd analyze` over all of them (one process, serial), and its own per-frame analysis
  time (the sum of the stage timings in its JSON);
- `inspectd regrade` with each worker count on a local Ray started for the run.

Each command runs twice, on all the frames and on the first tenth of them (fresh output
folders), so the fixed costs (process start, Ray start, model load and warm-up in every
worker) cancel: per-frame time = (T_all - T_tenth) / (n_all - n_tenth) and start-up =
T_tenth - n_tenth x per-frame. The per-frame overhead Ray adds is regrade's per-frame time
with one worker minus the analysis time its own rows record (`analysis_ms`: what the
`Analyzer` took), i.e. decoding, hashing, the Parquet rows and Ray's scheduling; analyze
spends its extra time on the PNG and JSON files it writes per frame.
Prints a table and, with --json, writes the figures and the machine they were taken on.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

BIN = Path(sys.executable).parent
INSPECTD = str(BIN / "inspectd")
DIHEDRAL = (
    lambda a: a, np.fliplr, np.flipud, lambda a: np.rot90(a, 2),
    np.transpose, lambda a: np.rot90(a, 1), lambda a: np.rot90(a, 3), lambda a: np.rot90(np.fliplr(a), 1),
)


def write_frames(folder: Path, count: int, width: int, height: int) -> list[Path]:
    from inspectd.data.synth import generate_v3

    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    seed = 0
    while len(paths) < count:
        side = max(width, height)  # square, so every flip and rotation has the same size
        image = generate_v3(side, side, seed=1000 + seed).image
        for transform in DIHEDRAL:
            if len(paths) == count:
                break
            frame = np.ascontiguousarray(transform(image))[:height, :width]
            path = folder / f"frame_{len(paths):04d}.png"
            cv2.imwrite(str(path), frame)
            paths.append(path)
        seed += 1
    return paths


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode not in (0, 1, 3):  # analyze: 1 any FAIL, 3 any ERROR; both are results
        sys.exit(f"{' '.join(command[:3])} ... exited {result.returncode}:\n{result.stderr[-2000:]}")
    return seconds


def analysis_ms_per_frame(out_dir: Path) -> float:
    totals = [sum(json.loads(p.read_text())["timings_ms"].values()) for p in out_dir.glob("frame_*.json")]
    return float(np.mean(totals))


def measure(name: str, command_for, paths: list[Path], scratch: Path) -> dict:
    tenth = paths[: max(2, len(paths) // 10)]
    t_tenth = timed(command_for(tenth, scratch / f"{name}-tenth"))
    t_all = timed(command_for(paths, scratch / f"{name}-all"))
    per_frame_s = (t_all - t_tenth) / (len(paths) - len(tenth))
    frames_dir = scratch / f"{name}-all" / "frames"
    analysis_ms = None
    if frames_dir.is_dir():  # regrade: its own rows say how long the analysis itself took
        import pyarrow.dataset as ds

        analysis_ms = round(float(np.mean(ds.dataset(frames_dir, partitioning="hive")
                                           .to_table(columns=["analysis_ms"]).column("analysis_ms"))), 1)
    return {"analysis_ms": analysis_ms, "name": name, "frames": len(paths), "wall_s": round(t_all, 2), "frames_per_s_wall": round(len(paths) / t_all, 2),
            "per_frame_ms": round(per_frame_s * 1000, 1), "frames_per_s": round(1 / per_frame_s, 2),
            "startup_s": round(t_tenth - len(tenth) * per_frame_s, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--size", default="1280x960", help="WxH (default: %(default)s)")
    parser.add_argument("--workers", default="1,2", help="worker counts for regrade (default: %(default)s)")
    parser.add_argument("--engine", default="classical", choices=("classical", "unet"))
    parser.add_argument("--json", default=None, metavar="FILE")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    scratch = Path(tempfile.mkdtemp(prefix="regrade-bench-"))
    try:
        paths = write_frames(scratch / "frames", args.frames, width, height)
        rows = [measure("analyze (serial)", lambda p, out: [INSPECTD, "analyze", *map(str, p), "--out", str(out),
                                                              "--engine", args.engine, "--quiet"], paths, scratch)]
        analysis_ms = analysis_ms_per_frame(scratch / "analyze (serial)-all")
        for workers in (int(w) for w in args.workers.split(",")):
            rows.append(measure(f"regrade, {workers} worker(s)", lambda p, out, w=workers: [
                INSPECTD, "regrade", *map(str, p), "--out", str(out), "--engine", args.engine, "--workers", str(w),
                "--quiet"], paths, scratch))
        one_worker = next((r for r in rows if r["name"] == "regrade, 1 worker(s)"), None)
        overhead_ms = None if one_worker is None else round(one_worker["per_frame_ms"] - one_worker["analysis_ms"], 1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"{args.frames} frames {width}x{height}, engine {args.engine}; analyze's own analysis time "
          f"{analysis_ms:.1f} ms/frame")
    print(f"{'':<22} {'frames/s':>9} {'ms/frame':>9} {'start-up s':>10} {'wall s':>8} {'frames/s incl. start':>21}")
    for r in rows:
        print(f"{r['name']:<22} {r['frames_per_s']:>9.2f} {r['per_frame_ms']:>9.1f} {r['startup_s']:>10.1f} "
              f"{r['wall_s']:>8.1f} {r['frames_per_s_wall']:>21.2f}")
    if overhead_ms is not None:
        print(f"regrade, 1 worker: {one_worker['per_frame_ms']:.1f} ms per frame, of which the analysis "
              f"{one_worker['analysis_ms']:.1f} ms: {overhead_ms:+.1f} ms per frame around it (decode, hash, "
              "Parquet, Ray)")
    if args.json:
        machine = None
        try:
            from inspectd_bench.machine import describe_machine

            machine = describe_machine()
        except ImportError:
            pass
        document = {"frames": args.frames, "size": [width, height], "engine": args.engine,
                    "analysis_ms_per_frame": round(analysis_ms, 1), "overhead_ms_per_frame": overhead_ms,
                    "rows": rows, "machine": machine}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
