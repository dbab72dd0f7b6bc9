"""A real Ray cluster for the re-grade tests: a head node and a second worker node on 127.0.0.1.

Both live in a private network namespace the fixture makes (`unshare -n`, then `ip link set lo
up`): there Ray binds 127.0.0.1 and nothing else, and no test traffic leaves loopback.
Every command of a test that talks to the cluster (`ray start`, `inspectd regrade`) is run in
that namespace with `nsenter`; the processes of the namespace are the cluster's, so the
fixture stops exactly those (by pid), never `ray stop`, which stops every Ray on the machine.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RAY_PORT = 6379
CLIENT_PORT = 10001
OBJECT_STORE_BYTES = 200_000_000


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None and importlib.util.find_spec("pyarrow") is not None


requires_ray = pytest.mark.skipif(not ray_installed(), reason="Ray is not installed (pip install 'inspectd[cluster]')")


def namespaces_usable() -> tuple[bool, str]:
    """Whether this process may make a network namespace (root, or unprivileged user namespaces)."""
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return False, f"{tool} is not installed"
    probe = subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, text=True,
                           timeout=30, check=False)
    if probe.returncode != 0:
        return False, f"cannot make a network namespace here: {probe.stderr.strip() or probe.returncode}"
    return True, ""


class NamespaceCluster:
    """Ray head + worker node in a private network namespace; `run`/`popen` run commands in it."""

    def __init__(self, temp_dir: Path) -> None:
        self.temp_dir = temp_dir
        token_path = temp_dir / "auth_token"
        token_path.write_text(secrets.token_hex(32))
        # Token authentication as Ray's default, with a token of its own (not the user's ~/.ray one).
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path),
                    "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": f"127.0.0.1:{RAY_PORT}"}
        self.holder = subprocess.Popen(
            ["unshare", "-n", "sh", "-c", "ip link set lo up && echo up && exec sleep 2147483647"],
            stdout=subprocess.PIPE, text=True)
        if self.holder.stdout.readline().strip() != "up":
            self.holder.kill()
            pytest.fail("the private network namespace did not come up")
        self.netns = os.readlink(f"/proc/{self.holder.pid}/ns/net")

    def command(self, args: Sequence[str]) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-n", "--", *args]

    def run(self, args: Sequence[str], *, timeout: float = 300, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.command(args), capture_output=True, text=True, timeout=timeout,
                                env=env or self.env, check=False)
        if check and result.returncode != 0:
            pytest.fail(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def popen(self, args: Sequence[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.command(args), env=self.env, text=True, **kwargs)

    def start(self) -> None:
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", f"--object-store-memory={OBJECT_STORE_BYTES}",
                  "--disable-usage-stats"]
        self.run(["ray", "start", "--head", f"--port={RAY_PORT}", f"--ray-client-server-port={CLIENT_PORT}",
                  f"--temp-dir={self.temp_dir}", "--include-dashboard=false", *common])
        self.run(["ray", "start", f"--address=127.0.0.1:{RAY_PORT}", *common])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = self.run(["ray", "status", f"--address=127.0.0.1:{RAY_PORT}"], check=False, timeout=60)
            if status.returncode == 0 and "/2.0 CPU" in status.stdout:
                return
            time.sleep(1)
        pytest.fail(f"the cluster did not reach 2 CPUs on 2 nodes:\n{status.stdout}\n{status.stderr}")

    def pids(self, *, containing: str = "") -> list[int]:
        """Processes in the namespace (the holder left out), optionally those whose command line holds `containing`."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.holder.pid:
                continue
            try:
                if os.readlink(entry / "ns" / "net") != self.netns:
                    continue
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            if containing in cmdline and cmdline.strip():
                found.append(int(entry.name))
        return found

    def stop(self) -> None:
        """TERM, then KILL, every process in the namespace (all of them ours), then the namespace."""
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait_s
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
        self.holder.kill()
        self.holder.wait(timeout=10)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[NamespaceCluster]:
    if not ray_installed():
        pytest.skip("Ray is not installed (pip install 'inspectd[cluster]')")
    usable, reason = namespaces_usable()
    if not usable:
        pytest.skip(reason)
    # A short folder: Ray's unix sockets live under it and their paths are limited to 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="rg", dir="/tmp"))
    cluster = NamespaceCluster(temp_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def write_micrographs(folder: Path, count: int, *, size: tuple[int, int] = (384, 384), seed: int = 0) -> list[Path]:
    """Seeded synthetic micrographs as PNG (8-bit) in `folder`."""
    import cv2

    from inspectd.data import synth

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        sample = synth.generate(size[1], size[0], seed=seed + index)
        path = folder / f"frame_{index:03d}.png"
        cv2.imwrite(str(path), sample.image)
        paths.append(path)
    return paths


def write_multipage_tiff(path: Path, *, seed: int, pages: int = 2, size: int = 256) -> Path:
    import tifffile

    from inspectd.data import synth

    images = np.stack([synth.generate(size, size, seed=seed + k).image for k in range(pages)])
    tifffile.imwrite(path, images)
    return path
