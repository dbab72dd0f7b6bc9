#!/usr/bin/env python3
"""The seed-style peer pipeline on its own: OpenCV CLAHE, 2x2 split, 256x256 parts, ResNet50 U-Net.

    python bench/seed_peer.py [--frames N] [--size WxH] [--width-divisor D] [--cache-dir DIR]

Prints the peer's frames/s, latency and per-stage times as JSON. The pipeline and the
network live in `inspectd_bench.peer` and `inspectd_bench.resnet_unet` (the
throughput benchmark runs the same code beside inspectd); the network is exported once
(untrained, seeded weights; needs torch) into the cache folder, `bench/results/` by default.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from inspectd_bench.peer import ensure_peer_model, run_peer
from inspectd_bench.throughput import DEFAULT_SIZE, generate_frames, parse_size

REPO_ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--size", type=parse_size, default=parse_size(DEFAULT_SIZE))
    parser.add_argument("--width-divisor", type=int, default=1)
    parser.add_argument("--skimage-frames", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    width, height = args.size
    model = ensure_peer_model(args.cache_dir, args.width_divisor)
    frames = generate_frames(width, height, min(args.frames + 1, 4))
    result = run_peer(model, frames, args.frames, skimage_frames=args.skimage_frames)
    result.pop("latencies_ms")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
