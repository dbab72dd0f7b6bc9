#!/usr/bin/env python3
"""Print what a benchmark runs on (CPU model, cores, memory, GPU, load, versions, date) as JSON.

    python bench/machine.py

The code is `inspectd_bench.machine.describe_machine`, which the throughput benchmark
records in its JSON and in `bench/RESULTS.md`.
"""

from __future__ import annotations

import json
import sys

from inspectd_bench.machine import describe_machine

if __name__ == "__main__":
    print(json.dumps(describe_machine(), indent=2))
    sys.exit(0)
