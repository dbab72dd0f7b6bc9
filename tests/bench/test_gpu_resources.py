"""bench/gpu_resources.py: every CUDA kernel compiled for an H100-class GPU and a Jetson, without either.

NVVM compiles each kernel with the argument types its wrapper launches it with, which
catches what the simulator cannot (it runs kernels as Python): numba-CUDA typing errors,
such as the built-in target's broken min()/max() overloads. Then ptxas reports each kernel's
registers, shared memory and spills, and the tests hold the kernels to what the launch
settings in ``kernels.gpu_config`` need.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
GPU_RESOURCES = REPO_ROOT / "bench" / "gpu_resources.py"
N_KERNEL_CASES = 18  # kernel x argument types, as listed in gpu_resources.kernel_cases()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The script's JSON, run as a user runs it: a fresh interpreter without the simulator."""
    json_path = tmp_path_factory.mktemp("gpu_resources") / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run([sys.executable, str(GPU_RESOURCES), "--json", str(json_path)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode == 2 and "no NVVM" in done.stderr:
        pytest.skip(done.stderr.strip())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| `_interpolate` | u8 | 256 |" in done.stdout  # the table a reader sees
    return json.loads(json_path.read_text())


def test_every_kernel_compiles_for_each_target(report):
    for arch in ("sm_90", "sm_87"):
        rows = [row for row in report["rows"] if row["arch"] == arch]
        assert len(rows) == N_KERNEL_CASES, arch
    names = {row["kernel"] for row in report["rows"]}
    assert {"_tile_hist_u8", "_tile_luts_u16", "_interpolate", "_histogram_u8", "_guided", "_argmax"} <= names


def test_no_kernel_runs_double_precision(report):
    """A Jetson's GPU has few FP64 units: a per-pixel rounding through float64 could set a kernel's pace there."""
    fp64 = {(row["kernel"], row["types"], row["arch"]): row["fp64_instructions"] for row in report["rows"]}
    assert all(count == 0 for count in fp64.values()), {key: n for key, n in fp64.items() if n}


def test_every_launch_fits_an_sm_without_spilling(report):
    if report["ptxas"] is None:
        pytest.skip("no ptxas here: registers and spills are unknown")
    for row in report["rows"]:
        where = f"{row['kernel']} ({row['types']}, {row['arch']})"
        # A block that does not fit fails at launch with "too many resources requested".
        assert row["blocks_per_sm"] >= 1, where
        assert row["spill_store_bytes"] == 0 and row["spill_load_bytes"] == 0, where
        assert row["stack_bytes"] == 0, where
        # Every kernel is memory-bound; half the SM's warps is what it takes to hide the latency.
        assert row["occupancy"] >= 0.5, where


def test_occupancy_arithmetic_matches_cudas_calculator():
    """Hand-checked against CUDA's occupancy calculator for compute capability 9.0."""
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    try:
        import gpu_resources
    finally:
        sys.path.remove(str(REPO_ROOT / "bench"))
    h100 = gpu_resources.TARGETS["sm_90"]
    # 39 registers -> 1280 per warp: 65536 // (1280 * 8 warps) = 6 blocks of 256 threads.
    assert gpu_resources.blocks_per_sm(h100, 256, 39, 4096) == (6, "registers")
    # 32 registers: the 64-warp limit binds first (8 blocks of 8 warps).
    assert gpu_resources.blocks_per_sm(h100, 256, 32, 0) == (8, "warps")
    # 48 KiB static shared memory + 1 KiB reserved: 228 // 49 = 4 blocks.
    assert gpu_resources.blocks_per_sm(h100, 128, 32, 48 * 1024) == (4, "shared memory")
    # 1024 threads of 255 registers cannot launch at all.
    assert gpu_resources.blocks_per_sm(h100, 1024, 255, 0)[0] == 0
