"""The control endpoint: JSON requests on a REP socket answered from its own thread.

Commands (`{"cmd": ...}`): `status` -> whatever the status handler returns (it must carry a
`ready` field; the server listens before warm-up ends so an operator can see the daemon is
alive), `replay` -> `{"messages": [...]}` from the journal, `reload` -> `{"ok": true}` or
`{"ok": false, "error": ...}`. The handlers are plain callables taking the request dict, so
the daemon wires them (see `replay_handler`). A malformed request, an unknown command or a
handler that raises is answered with `{"ok": false, "error": ...}`: the server never dies on
a bad request, and REP always answers, so one bad client cannot wedge it.

Example:
    >>> import zmq
    >>> server = ControlServer("tcp://127.0.0.1:*", {"status": lambda request: {"ready": True}},
    ...                        context=zmq.Context())
    >>> server.start()
    >>> request(server.endpoint, {"cmd": "status"}, timeout_ms=5000)
    {'ready': True}
    >>> request(server.endpoint, {"cmd": "dance"}, timeout_ms=5000)["ok"]
    False
    >>> server.close()
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import zmq

from inspectd.clients.control import DEFAULT_CONTROL_ENDPOINT, ControlError, request
from inspectd.wire.message import encode
from inspectd.wire.publish import EndpointBindError, bind_all

if TYPE_CHECKING:
    from inspectd.daemon.journal import Journal
    from inspectd.wire.curve import CurveServer

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
REPLAY_BATCH = 1000  # messages per replay answer; a client asks again from the last seq + 1

Handler = Callable[[dict[str, Any]], Mapping[str, Any]]

__all__ = [
    "DEFAULT_CONTROL_ENDPOINT",
    "ControlError",
    "ControlServer",
    "EndpointBindError",
    "replay_handler",
    "request",
]


class ControlServer:
    """REP socket bound to `endpoint`, dispatching `{"cmd": NAME}` to `handlers[NAME](request)`.

    Binding happens here (a busy port raises `EndpointBindError` at once); `start()` runs
    the serving thread. `endpoint` holds the resolved address (`tcp://127.0.0.1:*` works).
    """

    def __init__(
        self,
        endpoint: str,
        handlers: Mapping[str, Handler],
        *,
        context: zmq.Context | None = None,
        curve_server: CurveServer | None = None,
        poll_interval_ms: int = 100,
    ) -> None:
        if curve_server is not None and context is None:
            context = curve_server.context
        self._context = context or zmq.Context.instance()
        self._handlers = dict(handlers)
        self._poll_interval_ms = int(poll_interval_ms)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.request_count = 0
        self.error_count = 0
        socket = self._context.socket(zmq.REP)
        try:
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
            if curve_server is not None:
                curve_server.apply(socket)
            self.endpoint = bind_all(socket, [endpoint])[0]
        except BaseException:
            socket.close(linger=0)
            raise
        self._socket = socket  # from start() on, touched only by the serving thread
        logger.info("control endpoint on %s", self.endpoint)

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Start answering requests (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="control", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the serving thread and close the socket."""
        self._stop.set()
        if self._thread is None:
            self._socket.close(linger=0)
            return
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning("control thread did not stop within %.1f s", timeout_s)

    def handle(self, raw: list[bytes]) -> dict[str, Any]:
        """Answer one request (the frames as received); never raises.

        Example:
            >>> import zmq
            >>> server = ControlServer("tcp://127.0.0.1:*", {}, context=zmq.Context())
            >>> server.handle([b"not json"])["ok"], server.handle([b'{"cmd": "status"}'])["error"]
            (False, "unknown command 'status'; known: none")
            >>> server.close()
        """
        try:
            payload = _parse_request(raw)
            cmd = payload.get("cmd")
            handler = self._handlers.get(cmd) if isinstance(cmd, str) else None
            if handler is None:
                known = ", ".join(sorted(self._handlers)) or "none"
                return _error(f"unknown command {cmd!r}; known: {known}")
            answer = handler(payload)
            if not isinstance(answer, Mapping):
                return _error(f"handler for {cmd!r} returned {type(answer).__name__}, not an object")
            return dict(answer)
        except ControlError as exc:
            return _error(str(exc))
        except Exception as exc:  # a handler bug must not kill the control thread
            logger.exception("control request failed")
            return _error(f"{type(exc).__name__}: {exc}")

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(self._poll_interval_ms):
                    continue
                try:
                    raw = self._socket.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    continue
                self.request_count += 1
                answer = self.handle(raw)
                if answer.get("ok") is False:
                    self.error_count += 1
                try:
                    reply = encode(answer)
                except (TypeError, ValueError) as exc:
                    self.error_count += 1
                    reply = encode(_error(f"answer is not JSON-serialisable: {exc}"))
                self._socket.send(reply)
        except Exception:
            logger.exception("control thread failed")
        finally:
            self._socket.close(linger=0)


def replay_handler(journal: Journal, *, batch: int = REPLAY_BATCH) -> Handler:
    """The `replay` handler: `{"from": N, "to": M}` -> `{"messages": [...], "last_seq": L, "epoch": E}`.

    At most `batch` messages per answer (ask again from the last seq + 1); `last_seq` is the
    journal's newest seq, so a client knows whether more exist; `epoch` the journal's stream,
    so a client that follows another one knows the journal changed. Pruned seqs are absent.

    Example:
        >>> import tempfile, os
        >>> from inspectd.daemon.journal import Journal
        >>> journal = Journal(os.path.join(tempfile.mkdtemp(), "j.sqlite3"))
        >>> _ = journal.commit({"station": "s1", "verdict": "PASS"}, None)
        >>> answer = replay_handler(journal)({"cmd": "replay", "from": 1})
        >>> [m["seq"] for m in answer["messages"]], answer["last_seq"]
        ([1], 1)
    """

    def replay(payload: dict[str, Any]) -> dict[str, Any]:
        from_seq = _seq_field(payload, "from", required=True)
        to_seq = _seq_field(payload, "to", required=False)
        if to_seq is not None and to_seq < from_seq:
            msg = f"replay 'to' ({to_seq}) is before 'from' ({from_seq})"
            raise ControlError(msg)
        last_seq = journal.last_seq()
        return {"messages": journal.range(from_seq, to_seq, limit=batch), "last_seq": last_seq,
                "epoch": journal.epoch}

    return replay


def _parse_request(raw: list[bytes]) -> dict[str, Any]:
    if len(raw) != 1:
        msg = f"a request is one JSON frame, got {len(raw)} frames"
        raise ControlError(msg)
    try:
        payload = json.loads(raw[0].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        msg = f"request is not UTF-8 JSON: {exc}"
        raise ControlError(msg) from exc
    if not isinstance(payload, dict):
        msg = f'request must be a JSON object like {{"cmd": "status"}}, got {type(payload).__name__}'
        raise ControlError(msg)
    return payload


def _seq_field(payload: Mapping[str, Any], key: str, *, required: bool) -> int | None:
    value = payload.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        msg = f"replay {key!r} must be a non-negative integer seq, got {value!r}"
        raise ControlError(msg)
    return value


def _error(text: str) -> dict[str, Any]:
    return {"ok": False, "error": text}
