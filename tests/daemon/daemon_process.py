"""A real `inspectd run` in a child process, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from inspectd.clients.control import ControlError, request
from tests.daemon.conftest import free_tcp_endpoint


class DaemonProcess:
    """Starts `python -m inspectd.cli run` with a config written to `work_dir` (`module`: another
    entry point with the same command line, e.g. one that injects a fault first)."""

    def __init__(self, work_dir: Path, *, inbox: Path | None = None, extra: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None, module: str = "inspectd.cli") -> None:
        self.module = module
        self.work_dir = work_dir
        self.inbox = inbox or work_dir / "inbox"
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.state_dir = work_dir / "state"
        self.publish = free_tcp_endpoint()
        self.control = free_tcp_endpoint()
        cfg: dict[str, Any] = {
            "station": "e2e",
            "metrics": {"port": 0},
            "rules": [{"metric": "porosity_pct", "op": "<=", "limit": 50.0}],
            "pipeline": {"shutdown_grace_s": 20.0},
            "sources": [{"kind": "folder", "path": str(self.inbox), "stable_s": 0.2, "rescan_interval_s": 1.0}],
        }
        for key, value in (extra or {}).items():
            cfg[key] = value
        self.config_path = work_dir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log_path = work_dir / "daemon.log"

    def start(self, *, wait_ready: bool = True, timeout_s: float = 180.0) -> DaemonProcess:
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "run", "--config", str(self.config_path),
             "--state-dir", str(self.state_dir), "--publish", self.publish, "--control", self.control],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env,
        )
        if wait_ready:
            self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 180.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                msg = f"daemon exited with {self.proc.returncode}:\n{self.log_text()}"
                raise AssertionError(msg)
            try:
                status = self.status(timeout_ms=500)
                if status.get("ready"):
                    return status
            except ControlError:
                pass
            time.sleep(0.2)
        msg = f"daemon not ready in {timeout_s} s:\n{self.log_text()}"
        raise AssertionError(msg)

    def status(self, timeout_ms: int = 2000) -> dict[str, Any]:
        return request(self.control, {"cmd": "status"}, timeout_ms=timeout_ms)

    def wait_processed(self, count: int, timeout_s: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.status()
            if status["last_seq"] >= count and status["queues"].get("in_flight", 0) == 0:
                return status
            time.sleep(0.2)
        msg = f"only {status.get('last_seq')} of {count} verdicts after {timeout_s} s:\n{self.log_text()}"
        raise AssertionError(msg)

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait; the exit code. In a `finally`, keep the code and check it after
        the try statement, so a failure in the body is the one reported."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout_s)
        self.log.close()
        return code

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.log.close()

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]
