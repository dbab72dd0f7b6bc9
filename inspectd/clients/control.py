"""The control request: one JSON request to a daemon's control endpoint, one JSON answer.

The daemon's side (`inspectd.daemon.control_server`) answers `{"cmd": "status"}`,
`{"cmd": "replay", ...}` and `{"cmd": "reload"}`; this module is what the CLI, the PLC
bridges and integrators' scripts import, and it never imports the daemon.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import zmq

from inspectd.errors import InspectdError
from inspectd.wire.message import encode

if TYPE_CHECKING:
    from inspectd.wire.curve import CurveClientKeys

DEFAULT_CONTROL_ENDPOINT = "tcp://127.0.0.1:5557"

__all__ = ["DEFAULT_CONTROL_ENDPOINT", "ControlError", "ControlTimeoutError", "request"]


class ControlError(InspectdError):
    """A control request got no usable answer (not JSON, not an object)."""


class ControlTimeoutError(ControlError):
    """The control endpoint did not answer in time (daemon down, wrong endpoint or CURVE key)."""


def request(
    endpoint: str,
    payload: Mapping[str, Any],
    timeout_ms: int = 2000,
    curve_client: CurveClientKeys | None = None,
    *,
    context: zmq.Context | None = None,
) -> dict[str, Any]:
    """Send one JSON request with a fresh REQ socket; return the answer.

    Raises `ControlTimeoutError` when nothing answers within `timeout_ms` (a REQ socket
    that timed out is stuck, hence a new socket per call), `ControlError` for a non-JSON
    answer.

    Example:
        >>> request("tcp://127.0.0.1:9", {"cmd": "status"}, timeout_ms=50)
        Traceback (most recent call last):
        ...
        inspectd.clients.control.ControlTimeoutError: no answer from tcp://127.0.0.1:9 within 50 ms
    """
    context = context or zmq.Context.instance()
    socket = context.socket(zmq.REQ)
    try:
        socket.setsockopt(zmq.LINGER, 0)
        if curve_client is not None:
            curve_client.apply(socket)
        socket.connect(endpoint)
        socket.send(encode(payload))
        if not socket.poll(timeout_ms, zmq.POLLIN):
            msg = f"no answer from {endpoint} within {timeout_ms} ms"
            raise ControlTimeoutError(msg)
        raw = socket.recv()
    finally:
        socket.close(linger=0)
    try:
        answer = json.loads(raw)
    except ValueError as exc:
        msg = f"answer from {endpoint} is not JSON: {raw[:80]!r}"
        raise ControlError(msg) from exc
    if not isinstance(answer, dict):
        msg = f"answer from {endpoint} is not a JSON object: {raw[:80]!r}"
        raise ControlError(msg)
    return answer
