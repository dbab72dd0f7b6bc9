"""A source and an engine added by an installed package, with no file of inspectd touched.

The package lives in a temporary folder: two plugin modules (one file each) and the package
metadata that names them as `inspectd.sources` / `inspectd.engines` entry points, as
`pip install` of a station's own package would leave it. A fresh interpreter then parses a
config that uses both, runs the daemon, and the journal holds their verdicts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SOURCE_PLUGIN = '''
from typing import Literal

import numpy as np
from pydantic import Field

from inspectd.config import StrictModel
from inspectd.sources.base import FrameSource, SourceItem, SourceState

KEY = "counter"


class CounterSourceConfig(StrictModel):
    kind: Literal["counter"] = "counter"
    id: str = "counter"
    frames: int = Field(3, ge=1, le=100)
    size_px: int = Field(64, ge=8, le=1024)


class CounterSource(FrameSource):
    KEY = KEY
    config_class = CounterSourceConfig

    def __init__(self, settings, context=None):
        super().__init__(settings.id, buffer_size=settings.frames, on_status=context and context.on_status)
        self.settings = settings

    def start(self):
        self._set_state(SourceState.INITIALISING)
        self._set_state(SourceState.RUNNING)
        size_px = self.settings.size_px
        for number in range(self.settings.frames):
            pixels = np.full((size_px, size_px), 40 * (number + 1), np.uint8)
            self._publish(SourceItem.from_pixels(self.source_id, pixels, number))
        self._set_state(SourceState.ENDED)

    def stop(self, timeout_s=5.0):
        self._close_buffer()
'''

ENGINE_PLUGIN = '''
import numpy as np
from pydantic import Field

from inspectd.analysis.engines.base import SegmentationEngine
from inspectd.config import StrictModel


class FlatConfig(StrictModel):
    label: int = Field(0, ge=0, le=2, description="The class every pixel gets.")


class FlatEngine(SegmentationEngine):
    KEY = "flat"
    config_class = FlatConfig

    def forward(self, prepared):
        return np.full(prepared.shape, self.settings.label, np.uint8)
'''

MISSING_RUNTIME_PLUGIN = '''
import acme_line_scanner_sdk_that_is_not_installed

from inspectd.sources.base import FrameSource


class LineScanSource(FrameSource):
    KEY = "linescan"
'''

RUN_DAEMON = '''
import json, sys, time
import zmq
from prometheus_client import CollectorRegistry
from inspectd import config
from inspectd.daemon.app import Daemon
from inspectd.sources.registry import SOURCES

cfg = config.load(sys.argv[1])
daemon = Daemon(cfg, context=zmq.Context(), registry=CollectorRegistry())
daemon.start()
try:
    deadline = time.monotonic() + 60
    while len(daemon.journal.range(1)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    rows = daemon.journal.range(1)
finally:
    daemon.stop()
print(json.dumps({"source_class": SOURCES["counter"].__module__, "source_type": type(cfg.sources[0]).__name__,
                  "label": cfg.segment.flat.label, "unet_tile_px": cfg.segment.unet.tile_px,
                  "verdicts": [{k: row.get(k) for k in ("source", "engine", "parameters", "verdict")} for row in rows]}))
'''

CLI = "import sys; from inspectd.cli import main; sys.exit(main(sys.argv[1:]))"


def _install_plugin_package(root: Path) -> None:
    package = root / "acme_station"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "counter_source.py").write_text(SOURCE_PLUGIN)
    (package / "flat_engine.py").write_text(ENGINE_PLUGIN)
    (package / "line_scanner.py").write_text(MISSING_RUNTIME_PLUGIN)
    metadata = root / "acme_station-1.0.dist-info"
    metadata.mkdir()
    (metadata / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-station\nVersion: 1.0\n")
    (metadata / "entry_points.txt").write_text(textwrap.dedent("""
        [inspectd.sources]
        counter = acme_station.counter_source
        line_scanner = acme_station.line_scanner

        [inspectd.engines]
        flat = acme_station.flat_engine
    """))


def _python(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=240,
                          cwd=root, check=False)


def test_an_installed_source_and_engine_are_configured_built_and_run(tmp_path: Path) -> None:
    _install_plugin_package(tmp_path / "site")
    state = tmp_path / "state"
    config_file = tmp_path / "station.yaml"
    config_file.write_text(textwrap.dedent(f"""
        station: plugin-test
        state_dir: {state}
        segment:
          engine: flat
          flat:
            label: 2
          unet:
            tile_px: 512
        trust:
          ood:
            action: warn
        rules: []
        sources:
          - kind: counter
            id: counter-1
            frames: 3
        publish:
          bind: ["tcp://127.0.0.1:*"]
        control:
          bind: tcp://127.0.0.1:*
        metrics:
          enabled: false
    """))
    done = _python(tmp_path / "site", "-c", RUN_DAEMON, str(config_file))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["source_class"] == "acme_station.counter_source"
    assert result["source_type"] == "CounterSourceConfig"
    assert result["label"] == 2 and result["unet_tile_px"] == 512
    verdicts = result["verdicts"]
    assert [v["source"] for v in verdicts] == ["counter-1#0", "counter-1#1", "counter-1#2"]
    assert {v["engine"]["name"] for v in verdicts} == {"flat"}
    assert {v["verdict"] for v in verdicts} == {"PASS"}, verdicts
    assert {v["parameters"]["porosity_pct"]["value"] for v in verdicts} == {100.0}  # label 2 = pore everywhere
    # The plugin whose runtime is missing was skipped, and the log says which module and why.
    assert "acme_station.line_scanner skipped" in done.stderr
    assert "acme_line_scanner_sdk_that_is_not_installed" in done.stderr


def test_plugin_config_errors_and_a_missing_runtime_are_config_errors(tmp_path: Path) -> None:
    _install_plugin_package(tmp_path / "site")
    bad = tmp_path / "bad.yaml"
    bad.write_text("segment:\n  engine: flat\n  flat:\n    label: 7\n")
    done = _python(tmp_path / "site", "-c", CLI, "validate-config", str(bad))
    assert done.returncode == 2
    assert "(line 4): segment.flat.label = 7: Input should be less than or equal to 2" in done.stderr
    scanner = tmp_path / "scanner.yaml"
    scanner.write_text("sources:\n  - kind: linescan\n")
    done = _python(tmp_path / "site", "-c", CLI, "validate-config", str(scanner))
    assert done.returncode == 2
    assert "'linescan' is not usable here" in done.stderr
    assert "acme_line_scanner_sdk_that_is_not_installed" in done.stderr
