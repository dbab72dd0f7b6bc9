"""Doctest collection over `inspectd/` and `kernels/` (`make test` passes --doctest-modules).

Modules whose examples need something optional are left out where it is missing: torch
(the [train] extra) and a CUDA GPU or numba's simulator (`make test-gpu-sim` runs those).
"""

from __future__ import annotations

import importlib.util
import os

collect_ignore: list[str] = []

if importlib.util.find_spec("torch") is None:
    collect_ignore += [
        "inspectd/training/model.py",
        "inspectd/training/export.py",
        "inspectd/training/train.py",
        "bench/inspectd_bench/resnet_unet.py",
        "bench/inspectd_bench/peer_export.py",
    ]

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    import kernels

    if not kernels.cuda_usable()[0]:
        collect_ignore += [
            "kernels/gpu_clahe.py", "kernels/gpu_guided.py", "kernels/gpu_threshold.py", "kernels/gpu_tiles.py",
        ]
