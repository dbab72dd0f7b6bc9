"""`inspectd status`'s health rule and its lines (the live daemon is asked in test_daemon.py)."""

from __future__ import annotations

from inspectd.clients.health import describe, health_problems

HEALTHY = {
    "ready": True, "station": "line3", "epoch": 4, "last_seq": 1207, "uptime_s": 11532.4, "pid": 812,
    "engine": {"name": "unet", "backend": "cpu", "model_hash": "ab12"},
    "sources": [{"id": "inbox", "kind": "folder", "state": "RUNNING"},
                {"id": "replay-file", "kind": "opencv", "state": "ENDED"}],
    "queues": {"analyse": 0, "publish": 0, "in_flight": 1},
    "counts": {"PASS": 1100, "FAIL": 90, "ERROR": 17},
    "last_error": None,
    "watchdog": {"stalled": False, "seconds_since_progress": 0.4},
}


def test_a_ready_daemon_with_running_or_finished_sources_is_healthy() -> None:
    assert health_problems(HEALTHY) == []
    lines = describe(HEALTHY, [])
    assert lines[0] == "station line3: healthy"
    assert "epoch 4, last seq 1207, up 3h12m, pid 812" in lines
    assert "engine unet on cpu" in lines and "verdicts: ERROR 17, FAIL 90, PASS 1100" in lines


def test_warming_up_stalled_or_a_source_down_is_not_healthy_and_says_why() -> None:
    status = {**HEALTHY, "ready": False, "watchdog": {"stalled": True},
              "sources": [{"id": "line-cam", "kind": "aravis", "state": "RECONNECTING"}],
              "last_error": "line-cam: camera_lost {'reason': 'no frame in 5.0 s'}"}
    problems = health_problems(status)
    assert problems == ["not ready (warming up or stopping)", "pipeline stalled", "source line-cam is RECONNECTING"]
    lines = describe(status, problems)
    assert lines[0].startswith("station line3: NOT healthy: not ready")
    assert lines[-1] == "last error: line-cam: camera_lost {'reason': 'no frame in 5.0 s'}"
