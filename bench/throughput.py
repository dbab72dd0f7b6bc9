#!/usr/bin/env python3
"""Station throughput benchmark: the real daemon pipeline vs the seed-style pipeline.

    python bench/throughput.py --frames N --size WxH [--rate FPS] [--engines classical,unet] --json FILE

The code lives in `inspectd_bench.throughput` (also `inspectd bench`); this file only
makes it runnable from a source checkout. `--help` lists every option.
"""

from __future__ import annotations

import sys

from inspectd_bench.throughput import main

if __name__ == "__main__":
    sys.exit(main())
