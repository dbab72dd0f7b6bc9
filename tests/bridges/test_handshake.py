"""The handshake's decisions (pure) and trigger forwarding against the real camera trigger server."""

from __future__ import annotations

import pytest

from inspectd.bridges.handshake import (
    AckMode,
    Delivery,
    HandshakeView,
    TriggerStatus,
    VerdictCode,
    classify,
    forward_trigger,
)
from inspectd.sources.trigger import TriggerServer
from tests.daemon.conftest import free_tcp_endpoint

ECHO, CLEAR = AckMode.ECHO_SEQ, AckMode.CLEAR_FLAG
ABSENT, PENDING, ACKED = Delivery.ABSENT, Delivery.PENDING, Delivery.ACKED


@pytest.mark.parametrize(("view", "mode", "presented", "expected"), [
    (HandshakeView(False, 0, 0), ECHO, False, ABSENT),  # fresh PLC
    (HandshakeView(True, 5, 4), ECHO, True, PENDING),  # shown, waiting
    (HandshakeView(True, 5, 5), ECHO, True, ACKED),
    (HandshakeView(False, 5, 5), ECHO, False, ACKED),  # acked, the flag already lowered
    (HandshakeView(False, 5, 4), ECHO, False, ABSENT),  # written, flag never raised (crash)
    (HandshakeView(True, 4, 4), ECHO, False, ABSENT),  # the PLC shows another result
    (HandshakeView(True, 5, None), CLEAR, True, PENDING),
    (HandshakeView(False, 5, None), CLEAR, True, ACKED),
    (HandshakeView(False, 5, None), CLEAR, False, ABSENT),  # ambiguous after a restart: show again
    (HandshakeView(True, 5, None), CLEAR, False, PENDING),
])
def test_classify(view, mode, presented, expected):
    assert classify(view, 5, mode, presented=presented) is expected


def test_classify_compares_only_the_bits_the_plc_keeps():
    seq = 3 * 65536 + 9
    sixteen_bits = HandshakeView(True, 9, 9, seq_modulus=65536, ack_modulus=65536)
    assert classify(sixteen_bits, seq, ECHO, presented=True) is ACKED
    full = HandshakeView(True, 9, 9, seq_modulus=2**32, ack_modulus=65536)
    assert classify(full, seq, ECHO, presented=True) is ABSENT  # seq_hi differs


def test_verdict_codes_never_read_as_pass_by_accident():
    assert [VerdictCode.of(v) for v in ("PASS", "FAIL", "ERROR", "NO_INSPECTION")] == [1, 2, 3, 4]
    assert VerdictCode.of("NONE") is VerdictCode.ERROR
    assert VerdictCode.of(None) is VerdictCode.ERROR


def test_forward_trigger_outcomes_against_the_camera_trigger_server():
    camera = TriggerServer("tcp://127.0.0.1:*", source_id="cam0")
    camera.start()
    try:
        assert forward_trigger(camera.bound_endpoint, "P-1", timeout_ms=3000) is TriggerStatus.ACCEPTED
        assert camera.next(timeout_s=2.0).part_id == "P-1"
        assert forward_trigger(camera.bound_endpoint, "", timeout_ms=3000) is TriggerStatus.BAD_REQUEST
        camera.close_intake("source is stopping")
        assert forward_trigger(camera.bound_endpoint, "P-2", timeout_ms=3000) is TriggerStatus.REFUSED
    finally:
        camera.stop()
    assert forward_trigger(free_tcp_endpoint(), "P-3", timeout_ms=100) is TriggerStatus.NO_ANSWER
