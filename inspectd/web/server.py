"""uvicorn in a thread of its own: the web UI beside the daemon, or alone under `inspectd ui`.

Why a thread with its own event loop, not the daemon's threads: the pipeline must never wait
for a browser, and a browser must never wait for a frame. The listening socket is bound here,
before the thread starts, so "address in use" or a wrong address is a `StartupError` at
start-up (exit 1, systemd retries) rather than a log line from inside uvicorn.

    >>> from inspectd.config import Config
    >>> from inspectd.web.auth import AccessGuard
    >>> from inspectd.web.context import WebContext
    >>> import tempfile, urllib.request, json
    >>> from pathlib import Path
    >>> context = WebContext(Config(), Path(tempfile.mkdtemp()), AccessGuard(None))
    >>> with WebServer(context, "127.0.0.1", 0) as server:
    ...     json.load(urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz"))["status"]
    'ok'
"""

from __future__ import annotations

import logging
import socket
import threading

import uvicorn

from inspectd.errors import StartupError
from inspectd.web.app import create_app
from inspectd.web.context import WebContext

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
USER_TIMEOUT_MS = 120_000


class WebServer:
    """`start()` binds and serves; `stop()` ends the requests in flight and closes; also a context manager."""

    def __init__(self, context: WebContext, host: str, port: int) -> None:
        self.context = context
        self.host = host
        self.port = port
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> WebServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        self._socket = _bind(self.host, self.port)
        self.port = self._socket.getsockname()[1]
        # Without a token the server is on loopback (HttpConfig): only loopback Host names are served.
        app = create_app(self.context, loopback_hosts_only=not self.context.guard.required)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=STOP_TIMEOUT_S, limit_concurrency=64,
                                timeout_keep_alive=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="web-ui", daemon=True)
        self._thread.start()
        started = threading.Event()
        for _ in range(int(START_TIMEOUT_S / 0.05)):
            if self._server.started or not self._thread.is_alive():
                break
            started.wait(0.05)
        if not self._server.started:
            self.stop()
            msg = f"web UI: the server on {self.url} did not start"
            raise StartupError(msg)
        logger.info("web UI on %s%s", self.url, " (token required)" if self.context.guard.required else "")

    def _serve(self) -> None:
        assert self._server is not None and self._socket is not None
        try:
            self._server.run(sockets=[self._socket])
        except BaseException:  # a crash of the UI must not take the daemon with it
            logger.exception("web UI server stopped")

    def stop(self) -> None:
        # The areas' background work first: the live streams end by themselves, so uvicorn's
        # graceful shutdown does not wait out its timeout on browsers that never disconnect.
        self.context.close()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S + 2.0)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        msg = f"web UI: cannot listen on {host}:{port}: {exc.strerror or exc}"
        raise StartupError(msg) from exc
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        # Inherited by each accepted connection (Linux): a peer that stops acknowledging (gone,
        # or a live stream's reader that never reads) is dropped by the kernel after this, so a
        # stalled client cannot hold a connection and its buffers for ever.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
    sock.listen(128)
    sock.set_inheritable(True)
    return sock

