"""The shipped systemd unit: systemd accepts every line, and its hardening scores well.

`systemd-analyze verify` exits 0 even for a misspelled key, so the test requires an EMPTY
stderr. verify also checks that ExecStart's binary exists, which /opt/inspectd does not
on a build machine: the unit is copied to tmp with only that path swapped for this
interpreter (arguments unchanged). Skipped where systemd-analyze is absent (Debian
package `systemd`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT_PATH = Path(__file__).resolve().parents[2] / "systemd" / "inspectd.service"
INSTALLED_BINARY = "/opt/inspectd/.venv/bin/inspectd"
MAX_EXPOSURE = 2.0

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)"
)


def _settings(text: str) -> dict[str, list[str]]:
    """`Key=value` lines of a unit (keys may repeat), ignoring comments and sections."""
    found: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture
def checkable_unit(tmp_path: Path) -> Path:
    text = UNIT_PATH.read_text(encoding="utf-8")
    assert INSTALLED_BINARY in text
    copy = tmp_path / "inspectd.service"
    copy.write_text(text.replace(INSTALLED_BINARY, sys.executable), encoding="utf-8")
    return copy


def test_unit_declares_the_service_contract() -> None:
    settings = _settings(UNIT_PATH.read_text(encoding="utf-8"))
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "User": "inspectd",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "KillSignal": "SIGTERM",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "UMask": "0027",
    }
    for key, value in expected.items():
        assert settings.get(key) == [value], key
    assert settings["ExecStart"] == [
        f"{INSTALLED_BINARY} run --config /etc/inspectd/config.yaml --state-dir /var/lib/inspectd"
    ]
    assert settings["CapabilityBoundingSet"] == [""]
    assert "ReadWritePaths" in settings
    # numba's JIT needs W+X pages: the hardening must not switch that off.
    assert settings.get("MemoryDenyWriteExecute", ["no"]) == ["no"]


@needs_analyze
def test_systemd_analyze_verify_is_silent(checkable_unit: Path) -> None:
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", checkable_unit.name],
        cwd=checkable_unit.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


@needs_analyze
def test_verify_would_catch_a_misspelled_key(checkable_unit: Path) -> None:
    """Guard the guard: a typo shows up on stderr although the exit status stays 0."""
    text = checkable_unit.read_text(encoding="utf-8")
    checkable_unit.write_text(text.replace("PrivateTmp=yes", "PrivateTmpp=yes"), encoding="utf-8")
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", checkable_unit.name],
        cwd=checkable_unit.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "PrivateTmpp" in result.stderr


@needs_analyze
def test_security_exposure_is_low(checkable_unit: Path) -> None:
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(checkable_unit)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    if result.returncode != 0 and match is None and "offline" in result.stderr:
        pytest.skip(f"this systemd-analyze has no --offline mode: {result.stderr.strip()}")
    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout
