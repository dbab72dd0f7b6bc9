"""What a benchmark ran on: CPU model, cores, memory, GPU, load, library versions, date.

Why: a frames/s figure means nothing without the box and the load it was taken under (the
development machine is a shared 2-core VM). Everything here is read without importing the
heavy libraries themselves (versions come from package metadata), so describing the
machine never pulls torch into the process being measured.

Example:
    >>> info = describe_machine()
    >>> info["cpu"]["cores_usable"] >= 1 and "numpy" in info["versions"]
    True
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from inspectd_bench.resources import usable_cores

logger = logging.getLogger(__name__)

# Distribution names whose versions matter to the numbers.
PACKAGES = ("inspectd", "numpy", "numba", "opencv-python-headless", "opencv-python", "onnxruntime",
            "onnxruntime-gpu", "scikit-image", "pyzmq", "torch", "onnx", "tensorrt", "cupy-cuda12x")
_NVIDIA_SMI_TIMEOUT_S = 10.0


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or `platform.processor()`).

    >>> isinstance(cpu_model(), str)
    True
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024.0 / 1024.0, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def gpus() -> list[dict[str, str]]:
    """NVIDIA GPUs as `nvidia-smi` lists them; [] where there is none (or no driver)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listing = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=_NVIDIA_SMI_TIMEOUT_S, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in listing.strip().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 3:
            found.append({"name": parts[0], "memory": parts[1], "driver": parts[2]})
    return found


def package_versions() -> dict[str, str]:
    """Installed versions of the packages in `PACKAGES` (absent ones left out)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def onnxruntime_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (the number of runnable threads, not a percentage)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def describe_machine() -> dict[str, Any]:
    """The machine, versions and date as one JSON-ready dict."""
    versions = {"python": platform.python_version(), **package_versions()}
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": {"model": cpu_model(), "cores_logical": os.cpu_count(), "cores_usable": usable_cores(),
                "architecture": platform.machine()},
        "memory_gib": memory_total_gib(),
        "gpus": gpus(),
        "onnxruntime_providers": onnxruntime_providers(),
        "load_average": load_average(),
        "versions": versions,
        "env": {key: os.environ[key] for key in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "NUMBA_NUM_THREADS",
                                                 "NUMBA_THREADING_LAYER") if key in os.environ},
    }


def one_line(info: dict[str, Any]) -> str:
    """A short human description, e.g. 'AMD EPYC, 2 cores, 23.5 GiB, no GPU'.

    >>> one_line({"cpu": {"model": "X", "cores_usable": 2}, "memory_gib": 8.0, "gpus": []})
    'X, 2 cores, 8.0 GiB, no GPU'
    """
    gpu = ", ".join(g["name"] for g in info.get("gpus") or []) or "no GPU"
    return f"{info['cpu']['model']}, {info['cpu']['cores_usable']} cores, {info.get('memory_gib')} GiB, {gpu}"
