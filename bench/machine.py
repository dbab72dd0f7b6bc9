#!/usr/bin/env python3
"""Print what a benchmark runs on (CPU model, cores, memory, GPU, load, versions, date) as JSON.

    python bench/machine.py

The code is `inspectd.benchmark.machine.describe_machine`, which the throughput benchmark
records in its JSON and in `bench/RESULTS.md`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# First, even where PYTHONPATH already names it: ahead of bench/ itself, whose kernels.py
# would otherwise shadow the `kernels` package.
sys.path.insert(0, str(REPO_ROOT))

from inspectd.benchmark.machine import describe_machine  # noqa: E402

if __name__ == "__main__":
    print(json.dumps(describe_machine(), indent=2))
    sys.exit(0)
