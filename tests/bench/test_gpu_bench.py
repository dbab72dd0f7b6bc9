"""bench/gpu_kernels.py (the GPU rows) and scripts/gpu_check.sh, checked where no GPU is.

The timings themselves are only ever taken on a real GPU; here the script's code paths run
under numba's simulator, without the packages an offline GPU machine may lack.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from inspectd.config import UnetConfig
from kernels import cuda_device

REPO_ROOT = Path(__file__).resolve().parents[2]
GPU_BENCH = REPO_ROOT / "bench" / "gpu_kernels.py"
GPU_CHECK = REPO_ROOT / "scripts" / "gpu_check.sh"
# The daemon's dependencies an offline GPU machine may lack (`make gpu-wheels` brings them).
ABSENT_ON_GPU_MACHINE = "pydantic,zmq,watchdog"


def _load_gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_kernels", GPU_BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unet_rows_use_the_daemons_default_tiles():
    gpu_bench = _load_gpu_bench()
    defaults = UnetConfig()
    assert (gpu_bench.UNET_TILE_PX, gpu_bench.UNET_OVERLAP_PX) == (defaults.tile_px, defaults.overlap_px)


def test_without_a_gpu_it_says_why_and_writes_nothing(tmp_path, capsys):
    if cuda_device.cuda_usable()[0] and not cuda_device.is_simulator():
        pytest.skip("a real GPU is here: the rows are timed instead")
    json_path = tmp_path / "gpu.json"
    assert _load_gpu_bench().main(["--json", str(json_path)]) == 0
    assert capsys.readouterr().out.startswith("no CUDA GPU: ")
    assert not json_path.exists()


def test_simulator_smoke_run_needs_none_of_the_daemons_service_packages():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("without_modules.py")), ABSENT_ON_GPU_MACHINE,
         str(GPU_BENCH), "--simulator-smoke-test"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for row in ("clahe u8", "clahe u16", "otsu u8", "threshold u8", "guided argmax u8", "unet tiles u8",
                "unet blend", "preprocess u8"):
        assert f"24x16  {row}" in done.stdout, row


def test_gpu_check_script_parses_and_names_files_that_exist():
    subprocess.run(["bash", "-n", str(GPU_CHECK)], check=True)
    text = GPU_CHECK.read_text()
    named = set(re.findall(r"\b((?:tests|kernels|bench)/[\w/]+\.py)\b", text))
    assert {"bench/gpu_kernels.py", "tests/unet/test_engine_device.py", "kernels/gpu_tiles.py"} <= named
    assert [path for path in sorted(named) if not (REPO_ROOT / path).is_file()] == []
    assert "gpu-wheels:" in (REPO_ROOT / "Makefile").read_text()


@pytest.mark.parametrize("outdir_arg", [None, "given"])
def test_gpu_check_script_writes_every_file_to_its_output_folder(tmp_path, outdir_arg):
    # `false` as the Python: every step fails at once, and each still leaves its file.
    args = [] if outdir_arg is None else [outdir_arg]
    env = {**os.environ, "PYTHON": "false", "GPU_CHECK_SIMULATOR": "1"}
    subprocess.run(["bash", str(GPU_CHECK), *args], cwd=tmp_path, env=env, capture_output=True,
                   timeout=120, check=True)
    results = tmp_path / (outdir_arg or "gpu-check-results")
    assert sorted(path.name for path in results.iterdir()) == [
        "doctests.log", "gpu_kernels.txt", "gpu_tests.log", "machine.txt", "summary.txt", "wheels.log"]
    steps = [line.split()[0] for line in (results / "summary.txt").read_text().splitlines()]
    assert steps == ["machine", "wheels", "gpu_kernels", "gpu_tests", "doctests"]
