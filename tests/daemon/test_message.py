"""Verdict / heartbeat / error messages: field set, units, NaN handling, the shipped schema."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone

import jsonschema
import numpy as np
import pytest

from inspectd.types import FailedRule, Verdict, VerdictResult
from inspectd.wire import message as msg
from tests.daemon.conftest import SHA, STATION, make_draft


def finished(draft: dict, seq: int = 1, epoch: int = 1) -> dict:
    return msg.stamp(draft, seq=seq, epoch=epoch, publish_time="2024-05-01T10:00:01.5Z")


def test_schema_is_valid_draft_2020_12_and_requires_every_documented_field():
    schema = msg.load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["required"] == list(msg.VERDICT_FIELDS)
    assert set(schema["properties"]) == set(msg.VERDICT_FIELDS)
    assert schema["properties"]["schema_version"]["const"] == msg.SCHEMA_VERSION


def test_built_and_stamped_message_is_valid_and_complete():
    message = finished(make_draft(3), seq=42, epoch=7)
    msg.validate(message)
    assert list(message) == list(msg.VERDICT_FIELDS)
    assert (message["seq"], message["epoch"], message["station"]) == (42, 7, STATION)
    assert message["source"] == "/data/in/part-00003.png"
    assert message["source_kind"] == "file"
    assert message["frame_number"] is None and message["field_index"] == 0
    assert message["publish_time"] == "2024-05-01T10:00:01.5Z"
    assert message["engine"] == {"name": "classical", "backend": "cpu", "model_hash": None}
    assert message["image"] == {"width": 640, "height": 480, "bit_depth": 8}
    assert message["image_sha256"] == SHA


def test_draft_lacks_seq_epoch_publish_time_and_is_not_a_valid_message():
    draft = make_draft()
    assert not {"seq", "epoch", "publish_time"} & set(draft)
    with pytest.raises(jsonschema.ValidationError):
        msg.validate(draft)


def test_units_come_from_metric_name_suffixes():
    parameters = finished(make_draft())["parameters"]
    assert parameters["porosity_pct"]["unit"] == "%"
    assert parameters["pore_count"] == {"value": 17.0, "unit": "count"}
    assert parameters["pore_mean_eq_diameter_um"]["unit"] == "um"
    assert parameters["entropy_bits"]["unit"] == "bit"
    assert parameters["variance"]["unit"] == "1"
    assert msg.unit_for("pore_area_um2") == "um2"
    assert msg.unit_for("unmelted_mean_circularity") == "1"


def test_nan_and_inf_become_null_everywhere():
    draft = make_draft(
        metrics={"porosity_pct": float("nan"), "pore_count": np.float32("inf"), "variance": np.float64(2.5)},
        timings_ms={"segment": float("inf"), "decode": np.float32(1.25)},
        verdict="FAIL",
        failed_rules=[FailedRule(metric="porosity_pct", op="<=", limit=5.0, value=float("nan"))],
    )
    message = finished(draft)
    msg.validate(message)
    assert message["parameters"]["porosity_pct"]["value"] is None
    assert message["parameters"]["pore_count"]["value"] is None
    assert message["parameters"]["variance"]["value"] == 2.5
    assert message["timings_ms"] == {"segment": None, "decode": 1.25}
    assert message["failed_rules"] == [{"metric": "porosity_pct", "op": "<=", "limit": 5.0, "value": None}]
    text = msg.encode({**message, "extra": [float("nan"), np.float64("-inf")]}).decode()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["extra"] == [None, None]


def test_verdict_object_supplies_result_rules_reason_and_timings():
    verdict = Verdict(result=VerdictResult.FAIL,
                      failed_rules=(FailedRule(metric="porosity_pct", op="<=", limit=5.0, value=7.5),),
                      timings_ms={"verdict": 0.1})
    message = finished(make_draft(verdict=verdict, timings_ms={"segment": 9.0}))
    msg.validate(message)
    assert message["verdict"] == "FAIL"
    assert message["failed_rules"] == [{"metric": "porosity_pct", "op": "<=", "limit": 5.0, "value": 7.5}]
    assert message["timings_ms"] == {"verdict": 0.1, "segment": 9.0}


@pytest.mark.parametrize("result", ["ERROR", "NO_INSPECTION"])
def test_error_and_no_inspection_always_carry_a_reason(result):
    with_reason = finished(make_draft(verdict=result, reason="camera lost", metrics={}, image_sha256=None,
                                      width=None, height=None, bit_depth=None, failed_rules=[]))
    msg.validate(with_reason)
    assert with_reason["reason"] == "camera lost" and with_reason["image"] is None
    without = finished(make_draft(verdict=result, reason="", metrics={}, failed_rules=[]))
    msg.validate(without)
    assert without["reason"]
    bad = {**with_reason, "reason": ""}
    with pytest.raises(jsonschema.ValidationError):
        msg.validate(bad)


def test_camera_source_carries_frame_number():
    message = finished(make_draft(source="cam0", source_kind="camera", frame_number=1234, field_index=0))
    msg.validate(message)
    assert (message["source"], message["source_kind"], message["frame_number"]) == ("cam0", "camera", 1234)


def test_builder_refuses_unknown_verdict_and_source_kind():
    with pytest.raises(ValueError, match="verdict must be one of"):
        make_draft(verdict="MAYBE")
    with pytest.raises(ValueError, match="source_kind"):
        make_draft(source_kind="usb")


def test_times_are_utc_iso_with_z():
    local = datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    assert msg.utc_iso(local) == "2024-05-01T10:00:00.000000Z"
    naive = datetime(2024, 5, 1, 12, 0)
    assert msg.utc_iso(naive) == naive.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    message = finished(make_draft(capture_time=None))
    msg.validate(message)
    assert message["capture_time"].endswith("Z")
    with pytest.raises(jsonschema.ValidationError):
        msg.validate({**message, "capture_time": "2024-05-01 10:00:00+00:00"})


@pytest.mark.parametrize("change", [
    {"seq": 0}, {"seq": "1"}, {"epoch": None}, {"verdict": "pass"}, {"source": ""},
    {"image_sha256": "XYZ"}, {"unexpected": 1}, {"schema_version": "2.0"},
    {"parameters": {"porosity_pct": {"value": 1.0, "unit": "furlong"}}},
])
def test_schema_rejects_malformed_messages(change):
    message = finished(make_draft())
    msg.validate(message)
    with pytest.raises(jsonschema.ValidationError):
        msg.validate({**message, **change})


def test_schema_keeps_verdict_and_failed_rules_consistent():
    passing = finished(make_draft(0))
    assert passing["verdict"] == "PASS"
    with pytest.raises(jsonschema.ValidationError):
        msg.validate({**passing, "failed_rules": [{"metric": "porosity_pct", "op": "<=", "limit": 5, "value": 9}]})
    with pytest.raises(jsonschema.ValidationError):
        msg.validate({**passing, "verdict": "FAIL"})


def test_encode_is_compact_utf8_and_round_trips():
    message = finished(make_draft(part_id="Prüfling-µ7"))
    payload = msg.encode(message)
    assert "Prüfling-µ7".encode() in payload
    assert msg.decode(payload) == message


def test_topics_heartbeat_and_error_messages():
    assert msg.topic("verdict", STATION) == f"verdict.{STATION}".encode()
    assert msg.topic("error", "s1") == b"error.s1"
    with pytest.raises(ValueError):
        msg.topic("status", "s1")
    beat = msg.build_heartbeat(station=STATION, epoch=3, last_seq=12)
    msg.validate(beat, kind="heartbeat")
    error = msg.build_error_message(station=STATION, epoch=3, error="camera cam0 lost", source="cam0")
    msg.validate(error, kind="error")
    with pytest.raises(ValueError, match="no schema"):
        msg.validate(beat, kind="status")


def test_validate_explains_a_missing_jsonschema(monkeypatch):
    msg._validator.cache_clear()
    monkeypatch.setitem(sys.modules, "jsonschema", None)
    try:
        with pytest.raises(ImportError, match="jsonschema"):
            msg.validate(finished(make_draft()))
    finally:
        msg._validator.cache_clear()


def test_confidence_and_out_of_distribution_are_on_every_message_and_checked_by_the_schema():
    from inspectd.types import Assessment

    flagged = Assessment(confidence=0.42, out_of_distribution=True, ood_distance=2.5, ood_reasons=("x",))
    warned = Verdict(VerdictResult.PASS, warnings=("warning: out of distribution for the classical engine",))
    message = finished(make_draft(0, verdict=warned, assessment=flagged))
    msg.validate(message)
    assert (message["confidence"], message["out_of_distribution"]) == (0.42, True)
    assert message["reason"] == "warning: out of distribution for the classical engine"  # never a silent PASS
    with pytest.raises(jsonschema.ValidationError):
        msg.validate({**message, "reason": ""})  # flagged, yet no word why
    for bad in ({"confidence": 1.5}, {"confidence": -0.1}, {"confidence": "high"}, {"out_of_distribution": "no"}):
        with pytest.raises(jsonschema.ValidationError):
            msg.validate({**message, **bad})
    missing = {key: value for key, value in message.items() if key != "confidence"}
    with pytest.raises(jsonschema.ValidationError):
        msg.validate(missing)
    never_analysed = finished(make_draft(1, verdict="ERROR", reason="truncated PNG", assessment=None))
    msg.validate(never_analysed)
    assert never_analysed["confidence"] is None and never_analysed["out_of_distribution"] is None
    assert finished(make_draft(2, assessment=Assessment(float("nan"), False, 0.1)))["confidence"] is None
