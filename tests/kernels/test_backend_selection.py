"""backend="auto" | "cpu" | "cuda": who runs a kernel, what is logged, and how "cuda" fails.

numba reads NUMBA_ENABLE_CUDASIM once, when it is imported, so the simulator and the
no-simulator cases each run in a fresh interpreter (a subprocess with a controlled
environment). These tests run everywhere: on a machine with a real GPU the no-simulator
case checks that auto picks it instead.
"""

from __future__ import annotations

import doctest
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kernels
from kernels import backend as backend_module
from kernels import cuda_device

REPO_ROOT = Path(__file__).resolve().parents[2]

# Runs in the child: calls each public kernel the way the daemon does and reports what
# happened as one JSON line on stdout; log records go to stderr.
PROBE = r"""
import json, logging, sys
import numpy as np
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s|%(message)s")
if sys.argv[1] == "late-simulator":
    import numba, os
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
import kernels
from kernels import cuda_device
report = {"usable": list(kernels.cuda_usable()), "simulator": cuda_device.is_simulator()}
img = (np.arange(24 * 20) % 256).astype(np.uint8).reshape(24, 20)
report["cpu_clahe"] = kernels.clahe(img, 2.0, (2, 2), backend="cpu").tolist()
for call in range(3):  # auto is asked three times, must log once
    out = kernels.clahe(img, 2.0, (2, 2), backend="auto")
report["auto_returns_numpy"] = type(out).__name__ == "ndarray"
report["auto_otsu"] = kernels.otsu_threshold(img, backend="auto")
try:
    cuda_out = kernels.clahe(img, 2.0, (2, 2), backend="cuda")
    report["cuda_clahe"] = np.asarray(cuda_out).tolist()
    report["cuda_otsu"] = kernels.otsu_threshold(img, backend="cuda")
    if cuda_device.is_simulator():
        from numba import cuda
        dev_out = kernels.threshold(cuda.to_device(img), 100, backend="auto")
        report["auto_device_in_device_out"] = cuda_device.is_device_array(dev_out)
except kernels.CudaUnavailableError as exc:
    report["cuda_error"] = str(exc)
report["numba_cuda_imported"] = "numba.cuda" in sys.modules
print(json.dumps(report))
"""


def run_probe(simulator: str) -> tuple[dict, list[str]]:
    """Run PROBE in a fresh interpreter; simulator is 'off', 'on' or 'late-simulator'."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if simulator == "on":
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-c", PROBE, simulator], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    auto_lines = [line for line in done.stderr.splitlines() if line.startswith("kernels.backend|")]
    return report, auto_lines


@pytest.fixture(scope="module")
def without_simulator():
    return run_probe("off")


def test_auto_without_simulator_picks_cuda_only_for_a_real_gpu(without_simulator):
    report, auto_lines = without_simulator
    usable, reason = report["usable"]
    assert report["simulator"] is False
    assert report["auto_returns_numpy"] is True
    assert len(auto_lines) == 1, auto_lines  # three auto calls, one log line
    if usable:  # a real GPU: auto uses it, and names it in the log
        assert "using the CUDA kernels on" in auto_lines[0] and reason in auto_lines[0]
        assert "cuda_error" not in report
    else:
        assert "using the CPU kernels" in auto_lines[0] and reason in auto_lines[0]


def test_cuda_without_a_gpu_raises_naming_cuda_and_what_is_missing(without_simulator):
    report, _ = without_simulator
    usable, reason = report["usable"]
    if usable:
        pytest.skip(f"a real GPU is present here: {reason}")
    message = report["cuda_error"]
    assert "CUDA" in message and "GPU" in message
    assert reason in message  # what is missing: driver, GPU, NVVM or the test launch
    assert "backend='cpu'" in message
    if reason.startswith("no CUDA driver"):
        # The cheap libcuda check answered: numba.cuda was never imported.
        assert report["numba_cuda_imported"] is False


def test_simulator_is_usable_for_cuda_but_auto_keeps_host_arrays_on_the_cpu():
    report, auto_lines = run_probe("on")
    usable, reason = report["usable"]
    assert report["simulator"] is True
    assert usable is True and "simulator" in reason
    assert "cuda_error" not in report
    cpu = np.array(report["cpu_clahe"])
    assert np.abs(np.array(report["cuda_clahe"]) - cpu).max() <= 1
    assert report["cuda_otsu"] == report["auto_otsu"]
    assert report["auto_returns_numpy"] is True
    assert report["auto_device_in_device_out"] is True
    # One line for host arrays (CPU), one for the device array (CUDA): each logged once.
    assert len(auto_lines) == 2, auto_lines
    assert "CPU kernels" in auto_lines[0] and "simulator" in auto_lines[0]
    assert "CUDA kernels on numba's CUDA simulator" in auto_lines[1]


def test_simulator_enabled_too_late_is_explained(without_simulator):
    # The explanation is for a machine without a GPU. With a real GPU numba itself mixes the
    # two worlds once it re-reads its environment at the first compile (simulated kernels on
    # real device arrays), so the case is not run there.
    real_gpu, reason = without_simulator[0]["usable"]
    if real_gpu:
        pytest.skip(f"a real GPU is present here: {reason}")
    report, _ = run_probe("late-simulator")
    usable, reason = report["usable"]
    assert report["simulator"] is False
    assert "after numba was imported" in reason
    assert "after numba was imported" in report["cuda_error"]


def test_unknown_backend_is_a_value_error():
    img = np.zeros((8, 8), np.uint8)
    for call in (
        lambda: kernels.clahe(img, backend="gpu"),
        lambda: kernels.otsu_threshold(img, backend="CUDA"),
        lambda: kernels.threshold(img, 1, backend=""),
        lambda: kernels.adaptive_threshold(img, 3, 0, backend="tensorrt"),
    ):
        with pytest.raises(ValueError, match="backend must be one of"):
            call()


def test_adaptive_threshold_has_no_cuda_kernel_and_auto_keeps_it_on_the_cpu():
    img = np.zeros((8, 8), np.uint8)
    with pytest.raises(kernels.CudaUnavailableError, match="no CUDA kernel"):
        kernels.adaptive_threshold(img, 3, 0, backend="cuda")
    assert backend_module.select_backend("auto", "adaptive_threshold", has_cuda_kernel=False) == "cpu"
    assert kernels.adaptive_threshold(img, 3, 0, backend="auto").shape == img.shape


def test_cpu_module_refuses_cuda_instead_of_running_on_the_cpu():
    from kernels.clahe import clahe as cpu_clahe

    with pytest.raises(kernels.CudaUnavailableError, match="CUDA"):
        cpu_clahe(np.zeros((8, 8), np.uint8), backend="cuda")


def test_cpu_backend_never_probes_the_gpu(monkeypatch):
    def probe_called():
        msg = "backend='cpu' must not probe CUDA"
        raise AssertionError(msg)

    monkeypatch.setattr(cuda_device, "cuda_usable", probe_called)
    img = np.zeros((8, 8), np.uint8)
    assert kernels.clahe(img, backend="cpu").shape == img.shape
    assert kernels.otsu_threshold(img, backend="cpu") == 0


@pytest.mark.parametrize("module", [kernels, backend_module, cuda_device])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
