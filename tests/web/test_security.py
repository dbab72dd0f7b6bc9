"""Who may reach the web UI, over real HTTP: tokens, the login, the network bind, frame paths, stream caps.

Real processes (`inspectd run`, `inspectd ui`) and real sockets; the browser is headless chromium.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from inspectd.daemon.journal import JOURNAL_FILE, Journal
from inspectd.web.live_feed import MAX_STREAMS
from inspectd.web.server import WebServer
from tests.daemon.conftest import wait_for
from tests.daemon.daemon_process import DaemonProcess
from tests.web.conftest import make_context
from tests.web.test_live import EventReader

TOKEN = "line3-ui-token-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(base_url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _raw_get(port: int, path: str) -> bytes:
    """A request line sent exactly as written (HTTP clients would tidy `..` away)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inspectd.cli", *args], capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.mark.parametrize("command", ["run", "ui"])
def test_a_network_bind_without_a_token_refuses_to_start_in_one_line(tmp_path, command):
    state = tmp_path / "state"
    state.mkdir()
    args = ["--state-dir", str(state), "--http", f"0.0.0.0:{_free_port()}"]
    if command == "run":
        (tmp_path / "inbox").mkdir()
        args += ["--watch", str(tmp_path / "inbox")]
    finished = _cli(command, *args)
    assert finished.returncode == 2
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1 and "without a token" in lines[0] and "Traceback" not in finished.stderr
    assert not (state / JOURNAL_FILE).exists()  # nothing started


def test_the_daemon_on_a_network_address_with_a_token_serves_only_with_the_token(tmp_path, page):
    daemon = DaemonProcess(tmp_path, extra={"http": {"listen": "0.0.0.0:0", "token": TOKEN}}).start()
    try:
        port = urlsplit(daemon.status()["http"]).port
        url = f"http://127.0.0.1:{port}"
        assert _get(url, "/healthz")[0] == 200  # the load balancer's check needs no token
        for path in ("/api/live", "/api/live/events", "/api/verdicts", "/api/frames/seq-1/overlay.png"):
            status, body = _get(url, path)
            assert status == 401 and b"token" in body, path
            assert _get(url, path, {"Authorization": "Bearer not-the-token-0123456789"})[0] == 401
        assert _get(url, "/api/live", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert _get(url, "/api/verdicts", {"X-Inspectd-Token": TOKEN})[0] == 200
        reader = EventReader(url, headers={"Authorization": f"Bearer {TOKEN}"})
        assert reader.response.status == 200 and reader.next_event()[0] == "status"
        reader.close()

        # A browser: the page sends it to the login, a wrong token is refused, the right one lets it in.
        page.goto(f"{url}/live")
        assert page.url.endswith("/login")
        page.fill("input[name=token]", "not-the-token-0123456789")
        page.click("button[type=submit]")
        page.wait_for_selector("#failed.message.error")
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(f"{url}/live")
        page.wait_for_selector("#connection.live")  # the stream is open with the login cookie
        assert "healthy" in page.locator("#health").inner_text()
        cookies = page.context.cookies()
        assert [c["httpOnly"] for c in cookies] == [True] and TOKEN not in cookies[0]["value"]
    finally:
        exit_code = daemon.terminate()
    assert exit_code == 0


def test_inspectd_ui_on_a_network_address_starts_with_a_token_file(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    token_file = tmp_path / "ui.token"
    token_file.write_text(TOKEN + "\n")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({"http": {"token_file": str(token_file)}}))
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "inspectd.cli", "ui", "--state-dir", str(state), "--config",
                                str(config_path), "--http", f"0.0.0.0:{port}"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        assert "Ctrl-C stops" in process.stdout.readline()  # printed once it listens
        url = f"http://127.0.0.1:{port}"
        assert _get(url, "/api/live")[0] == 401
        status, body = _get(url, "/api/live", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and json.loads(body)["mode"] == "offline"
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0


@pytest.fixture
def served_store(tmp_path):
    """The UI alone over a state dir holding a journal, one kept frame and a secret beside the store."""
    state = tmp_path / "state"
    context = make_context(state)
    journal = Journal(state / JOURNAL_FILE)
    journal.commit({"station": "s1", "verdict": "PASS", "source": "/in/a.png", "source_kind": "file"}, None)
    journal.close()
    import numpy as np

    grey = np.full((8, 8), 90, np.uint8)
    context.frames.put("seq-1", image=grey, enhanced=grey, mask=np.zeros((8, 8), np.uint8), overlay=None,
                       meta={"seq": 1})
    (state / "ui" / "secret.txt").write_text("do-not-serve")
    with WebServer(context, "127.0.0.1", 0) as server:
        yield server


@pytest.mark.parametrize("path", [
    "/api/frames/seq-1/../../secret.txt", "/api/frames/../secret.txt/meta.json",
    "/api/frames/seq-1/..%2F..%2Fsecret.txt", "/api/frames/..%2F..%2Fui/secret.txt",
    "/api/frames/%2e%2e/secret.txt", "/api/frames/seq-1/%2e%2e%2f%2e%2e%2fjournal.sqlite3",
    "/api/frames/seq-1%00/mask.png", "/api/frames/seq-1/secret.txt", "/api/frames/seq-1/mask.png%00.txt",
    "/api/frames/upload-zz-1/mask.png", "/api/frames//etc/passwd",
])
def test_frame_paths_outside_the_store_are_refused(served_store, path):
    answer = _raw_get(served_store.port, path)
    status = int(answer.split(b" ", 2)[1])
    assert status in (400, 404), (path, answer[:200])
    assert b"do-not-serve" not in answer and b"SQLite format" not in answer and b"root:" not in answer


def test_a_kept_frame_is_served_and_a_missing_one_is_404(served_store):
    status, body = _get(served_store.url, "/api/frames/seq-1/mask.png")
    assert status == 200 and body.startswith(b"\x89PNG")
    status, body = _get(served_store.url, "/api/frames/seq-1/overlay.png")  # not written for this frame
    assert status == 404 and b"not kept" in body
    status, body = _get(served_store.url, "/api/frames/seq-x/mask.png")
    assert status == 400 and b"not a frame key" in body


def test_live_streams_beyond_the_cap_are_refused_and_a_slot_frees_when_one_closes(served_store):
    readers = [EventReader(served_store.url) for _ in range(MAX_STREAMS)]
    try:
        assert all(reader.response.status == 200 for reader in readers)
        status, body = _get(served_store.url, "/api/live/events")
        assert status == 503 and b"too many live streams" in body
        assert _get(served_store.url, "/api/live")[0] == 200  # the other pages still answer
        readers.pop().close()
        hub = served_store.context.areas["live"].hub
        assert wait_for(lambda: hub.streams < MAX_STREAMS, timeout_s=60)
        readers.append(EventReader(served_store.url))
        assert readers[-1].response.status == 200
    finally:
        for reader in readers:
            reader.close()


def test_state_changing_requests_are_not_served_on_the_stream(served_store):
    parts = urlsplit(served_store.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.request("POST", "/api/live/events", headers={"Origin": "http://evil.example"})
    assert connection.getresponse().status == 403
    connection.close()
    assert Path(served_store.context.ui_dir / "secret.txt").read_text() == "do-not-serve"


def _request(base_url: str, method: str, path: str, headers: dict[str, str], body: bytes | None = None
             ) -> tuple[int, bytes]:
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_a_page_on_another_host_name_cannot_reach_the_loopback_ui_without_a_token(served_store):
    # A web page whose host name is made to resolve to 127.0.0.1 (DNS rebinding) is same-origin
    # with itself: its Origin matches its Host. Without a token only loopback names are served.
    port = served_store.port
    rebound = f"rebound.example:{port}"
    settings = {"metrics": ["porosity_pct"], "baseline_from": 1, "baseline_to": 1}
    status, body = _request(served_store.url, "POST", "/api/trends/settings",
                            {"Host": rebound, "Origin": f"http://{rebound}", "Content-Type": "application/json"},
                            json.dumps(settings).encode())
    assert status == 403 and b"host" in body.lower()
    assert not (served_store.context.ui_dir / "spc.json").exists()
    for path in ("/api/verdicts", "/api/frames/seq-1/meta.json", "/live"):
        status, body = _request(served_store.url, "GET", path, {"Host": rebound})
        assert status == 403 and b"/in/a.png" not in body, path
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "127.0.0.1", "LOCALHOST"):
        status, body = _request(served_store.url, "GET", "/api/verdicts", {"Host": host})
        assert status == 200 and json.loads(body)[0]["source"] == "/in/a.png", host


def test_with_a_token_any_host_name_is_served_to_whoever_has_the_token(tmp_path):
    context = make_context(tmp_path / "state", token=TOKEN)
    with WebServer(context, "127.0.0.1", 0) as server:
        headers = {"Host": f"station-7.plant.example:{server.port}"}
        assert _request(server.url, "GET", "/healthz", headers)[0] == 200
        assert _request(server.url, "GET", "/api/live", headers)[0] == 401
        assert _request(server.url, "GET", "/api/live", {**headers, "X-Inspectd-Token": TOKEN})[0] == 200


def test_a_cookie_that_is_not_ascii_is_refused_as_unauthenticated_not_a_server_error(tmp_path):
    context = make_context(tmp_path / "state", token=TOKEN)
    with WebServer(context, "127.0.0.1", 0) as server, socket.create_connection(("127.0.0.1", server.port),
                                                                                  timeout=60) as sock:
        sock.sendall(b"GET /api/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     b"Cookie: inspectd_session=\xe9t\xe9\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.split(b" ", 2)[1] == b"401", answer[:200]
