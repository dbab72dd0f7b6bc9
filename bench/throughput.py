#!/usr/bin/env python3
"""Station throughput benchmark: the real daemon pipeline vs the seed-style pipeline.

    python bench/throughput.py --frames N --size WxH [--rate FPS] [--engines classical,unet] --json FILE

The code lives in `inspectd.benchmark.throughput` (also `inspectd bench`); this file only
makes it runnable from a source checkout. `--help` lists every option.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# First, even where PYTHONPATH already names it: ahead of bench/ itself, whose kernels.py
# would otherwise shadow the `kernels` package.
sys.path.insert(0, str(REPO_ROOT))

from inspectd.benchmark.throughput import main  # noqa: E402  (after the path fix)

if __name__ == "__main__":
    sys.exit(main())
