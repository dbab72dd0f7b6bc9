"""`inspectd ui`: the web UI alone over a state dir, following the journal another process writes.

A real `inspectd ui` child process, a real journal written by this test process (as the
daemon would), Server-Sent Events over HTTP and the page in headless chromium.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from inspectd.daemon.journal import JOURNAL_FILE, Journal
from tests.daemon.conftest import make_draft
from tests.web.test_live import EventReader


class UiProcess:
    """`python -m inspectd.cli ui` on a free port; `url` once it listens."""

    def __init__(self, state_dir: Path, *extra: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "inspectd.cli", "ui", "--state-dir", str(state_dir),
                                      "--http", f"127.0.0.1:{self.port}", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        assert self.url in line, line

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture
def journal(tmp_path) -> Iterator[Journal]:
    state = tmp_path / "state"
    state.mkdir()
    opened = Journal(state / JOURNAL_FILE)
    yield opened
    opened.close()


def _get_json(url: str, path: str) -> tuple[int, object]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_the_ui_follows_verdicts_another_process_journals(tmp_path, journal, page):
    for index in range(3):
        journal.commit(make_draft(index), f"k{index}")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({"sources": [{"kind": "folder", "id": "line3", "path": "/data/in"}]}))
    ui = UiProcess(journal.path.parent, "--config", str(config_path))
    try:
        status, snapshot = _get_json(ui.url, "/api/live")
        assert status == 200 and snapshot["mode"] == "offline" and snapshot["status"]["health"] is None
        [source] = snapshot["sources"]
        assert source["id"] == "line3" and source["latest"]["seq"] == 3
        assert [item["seq"] for item in source["recent"]] == [3, 2, 1]
        assert sum(snapshot["status"]["counts"]["last_hour"].values()) == 3

        reader = EventReader(ui.url, f"/api/live/events?after={snapshot['event_id']}")
        page.goto(f"{ui.url}/live")
        page.wait_for_selector("#connection.live")
        assert "without a daemon" in page.locator("#notice").inner_text()
        assert "No daemon in this process" in page.locator("#health").inner_text()
        card = page.locator(".source-card[data-source='line3']")
        assert "seq 3" in card.inner_text()

        fresh = journal.commit(make_draft(7), "k7")  # FAIL: porosity 5.9 % over the 5 % limit
        assert reader.verdicts(1)[0]["seq"] == fresh["seq"] == 4
        reader.close()
        card.locator(".badge.FAIL").wait_for()
        assert "seq 4" in card.inner_text() and "porosity_pct 5.90 (must be <= 5)" in card.inner_text()
        assert "not kept" in card.inner_text()  # no daemon here ever rendered this frame
    finally:
        assert ui.stop() == 0


def test_a_state_dir_that_is_not_there_is_a_usage_error(tmp_path):
    finished = subprocess.run([sys.executable, "-m", "inspectd.cli", "ui", "--state-dir", str(tmp_path / "nope"),
                               "--http", "127.0.0.1:0"], capture_output=True, text=True, timeout=120, check=False)
    assert finished.returncode == 2 and "is not a directory" in finished.stderr


def test_an_address_already_taken_exits_one_in_one_line(tmp_path):
    (tmp_path / "state").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        finished = subprocess.run([sys.executable, "-m", "inspectd.cli", "ui", "--state-dir", str(tmp_path / "state"),
                                   "--http", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=120,
                                  check=False)
    assert finished.returncode == 1
    assert finished.stderr.strip().count("\n") == 0 and "cannot listen" in finished.stderr
