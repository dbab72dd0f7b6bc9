"""Verdict, heartbeat and error messages as published on ZeroMQ: build, encode, validate.

A verdict is built in two steps because its `seq`, `epoch` and `publish_time` only exist
once the journal has committed it (durable before published): the pipeline calls
`build_verdict_message` (a *draft*, without those three), `Journal.commit` calls `stamp`.
Consumers (PLC bridges) are written against these field names: never rename one, and bump
`SCHEMA_VERSION` (major for removals or type changes) when fields are added.

Example:
    >>> draft = build_verdict_message(
    ...     station="s1", verdict="PASS", source="/in/a.png", source_kind="file",
    ...     part_id="P1", capture_time="2024-05-01T10:00:00Z", metrics={"porosity_pct": 1.5},
    ...     engine_name="classical", backend="cpu", model_hash=None, timings_ms={"segment": 3.2},
    ...     image_sha256="0" * 64, width=640, height=480, bit_depth=8)
    >>> final = stamp(draft, seq=1, epoch=1, publish_time="2024-05-01T10:00:01Z")
    >>> validate(final)
    >>> final["parameters"]["porosity_pct"]
    {'value': 1.5, 'unit': '%'}
    >>> topic("verdict", "s1")
    b'verdict.s1'
"""

from __future__ import annotations

import enum
import json
import logging
import os
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from functools import cache, lru_cache
from importlib import resources
from typing import Any

from inspectd.metric_values import finite_or_none
from inspectd.types import Assessment, FailedRule, Verdict, VerdictResult

logger = logging.getLogger(__name__)

# 1.1 added `confidence` and `out_of_distribution` (1.0 messages, in old journals, lack them).
SCHEMA_VERSION = "1.1"
TOPIC_KINDS = ("verdict", "heartbeat", "error", "alarm")
VERDICT_RESULTS = tuple(result.value for result in VerdictResult)
SOURCE_KINDS = ("file", "camera")
# Every field of a finished verdict message, in the order it is written.
VERDICT_FIELDS = (
    "schema_version", "station", "epoch", "seq", "part_id", "source", "source_kind",
    "frame_number", "field_index", "capture_time", "publish_time", "verdict", "reason",
    "failed_rules", "parameters", "engine", "timings_ms", "image_sha256", "image",
    "confidence", "out_of_distribution",
)

# Checked longest suffix first so `_um2` is not read as `_um`.
_UNIT_SUFFIXES = (("_um2", "um2"), ("_pct", "%"), ("_um", "um"), ("_bits", "bit"), ("_count", "count"))


def unit_for(metric: str) -> str:
    """The unit of a metric, read from its name suffix; dimensionless metrics get "1".

    Example:
        >>> [unit_for(m) for m in ("porosity_pct", "pore_count", "area_um2", "entropy_bits", "variance")]
        ['%', 'count', 'um2', 'bit', '1']
    """
    for suffix, unit in _UNIT_SUFFIXES:
        if metric.endswith(suffix):
            return unit
    return "1"


def utc_iso(moment: datetime | str | None = None) -> str:
    """UTC ISO-8601 with a `Z`, microsecond precision (fixed width, so strings sort in time order).

    A naive datetime is local time (Python's own reading); `None` means now; a string is
    passed through unchanged (it is the caller's already-formatted time).

    Example:
        >>> utc_iso(datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc))
        '2024-05-01T10:00:00.000000Z'
    """
    if isinstance(moment, str):
        return moment
    if moment is None:
        moment = datetime.now(timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_verdict_message(
    *,
    station: str,
    verdict: Verdict | str,
    source: str,
    source_kind: str,
    part_id: str | None,
    capture_time: datetime | str | None,
    metrics: Mapping[str, Any],
    engine_name: str,
    backend: str,
    model_hash: str | None,
    timings_ms: Mapping[str, Any] | None,
    image_sha256: str | None,
    width: int | None,
    height: int | None,
    bit_depth: int | None,
    frame_number: int | None = None,
    field_index: int = 0,
    reason: str = "",
    failed_rules: Iterable[FailedRule | Mapping[str, Any]] | None = None,
    assessment: Assessment | None = None,
    epoch: int | None = None,
    seq: int | None = None,
    publish_time: datetime | str | None = None,
) -> dict[str, Any]:
    """One verdict as a JSON-ready dict; a draft until `seq`, `epoch` and `publish_time` are set.

    `verdict` is an `inspectd.types.Verdict` (its failed rules, reason and timings are used;
    `timings_ms` entries are added to its own) or a result string ("PASS", "FAIL", "ERROR",
    "NO_INSPECTION", with `failed_rules` / `reason` given separately). `capture_time=None`
    means "when the daemon received the frame" (now). NaN and infinities become null.
    `assessment` (`inspectd.types.Assessment`) gives `confidence` and `out_of_distribution`;
    None (a frame never analysed: unreadable, no inspection) makes both null. A verdict's
    `warnings` become the `reason` when it has none (a PASS flagged out of distribution
    under `trust.ood.action: warn` says so there).
    Leave `epoch`/`seq`/`publish_time` out and let `Journal.commit` stamp them; give all three
    only to build a finished message without a journal.

    Example:
        >>> m = build_verdict_message(station="s1", verdict="ERROR", reason="truncated PNG",
        ...     source="/in/b.png", source_kind="file", part_id=None, capture_time=None,
        ...     metrics={}, engine_name="classical", backend="cpu", model_hash=None,
        ...     timings_ms=None, image_sha256=None, width=None, height=None, bit_depth=None)
        >>> m["verdict"], m["image"], "seq" in m
        ('ERROR', None, False)
    """
    if isinstance(verdict, Verdict):
        result = verdict.result.value
        rules: Iterable[FailedRule | Mapping[str, Any]] = verdict.failed_rules
        reason = reason or verdict.reason or "; ".join(verdict.warnings)
        timings: dict[str, Any] = {**verdict.timings_ms, **(timings_ms or {})}
    else:
        result = str(getattr(verdict, "value", verdict))
        rules = failed_rules or ()
        timings = dict(timings_ms or {})
    if result not in VERDICT_RESULTS:
        msg = f"verdict must be one of {VERDICT_RESULTS}, got {result!r}"
        raise ValueError(msg)
    if source_kind not in SOURCE_KINDS:
        msg = f"source_kind must be one of {SOURCE_KINDS}, got {source_kind!r}"
        raise ValueError(msg)
    reason = str(reason or "").strip()
    if VerdictResult.not_judged(result) and not reason:
        # A consumer must always learn why a part was not inspected; never publish silence.
        logger.warning("%s verdict for %s built without a reason", result, source)
        reason = f"{result} (no reason given)"

    message: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "station": station,
        "epoch": epoch,
        "seq": seq,
        "part_id": None if part_id is None else str(part_id),
        "source": str(source),
        "source_kind": source_kind,
        "frame_number": None if frame_number is None else int(frame_number),
        "field_index": int(field_index),
        "capture_time": utc_iso(capture_time),
        "publish_time": None if publish_time is None else utc_iso(publish_time),
        "verdict": result,
        "reason": reason,
        "failed_rules": [_failed_rule(rule) for rule in rules],
        "parameters": {
            str(name): {"value": finite_or_none(value), "unit": unit_for(str(name))}
            for name, value in metrics.items()
        },
        "engine": {"name": engine_name, "backend": str(getattr(backend, "value", backend)),
                   "model_hash": model_hash or None},
        "timings_ms": {str(stage): finite_or_none(ms) for stage, ms in timings.items()},
        "image_sha256": image_sha256 or None,
        "image": _image(width, height, bit_depth),
        "confidence": None if assessment is None else finite_or_none(assessment.confidence),
        "out_of_distribution": None if assessment is None else bool(assessment.out_of_distribution),
    }
    for key in ("epoch", "seq", "publish_time"):
        if message[key] is None:
            del message[key]
    return message


def stamp(draft: Mapping[str, Any], *, seq: int, epoch: int, publish_time: datetime | str | None = None) -> dict[str, Any]:
    """A copy of a draft with its journal sequence number, boot epoch and publish time set.

    Example:
        >>> stamp({"schema_version": "1.1", "station": "s1"}, seq=7, epoch=2,
        ...       publish_time="2024-05-01T10:00:01Z")["seq"]
        7
    """
    merged = {**draft, "epoch": int(epoch), "seq": int(seq), "publish_time": utc_iso(publish_time)}
    # Documented field order first (logs and journal rows read the same), then anything extra.
    ordered = {key: merged[key] for key in VERDICT_FIELDS if key in merged}
    ordered.update((key, value) for key, value in merged.items() if key not in ordered)
    return ordered


def build_heartbeat(*, station: str, epoch: int | None, last_seq: int, time: datetime | str | None = None) -> dict[str, Any]:
    """The heartbeat published every interval: lets a subscriber spot a lost tail by `last_seq`.

    Example:
        >>> build_heartbeat(station="s1", epoch=3, last_seq=41, time="2024-05-01T10:00:00Z")["last_seq"]
        41
    """
    return {"schema_version": SCHEMA_VERSION, "station": station, "epoch": epoch,
            "last_seq": int(last_seq), "time": utc_iso(time)}


def build_error_message(*, station: str, epoch: int | None, error: str, source: str | None = None,
                        kind: str = "error", time: datetime | str | None = None) -> dict[str, Any]:
    """A daemon-level problem (camera lost, source folder gone) for the `error.<station>` topic.

    Per-frame failures are ERROR *verdicts* instead, so every part still gets exactly one verdict.

    Example:
        >>> build_error_message(station="s1", epoch=1, error="camera lost", source="cam0",
        ...                     time="2024-05-01T10:00:00Z")["error"]
        'camera lost'
    """
    return {"schema_version": SCHEMA_VERSION, "station": station, "epoch": epoch, "kind": kind,
            "error": str(error) or "unknown error", "source": source, "time": utc_iso(time)}


def build_alarm_message(*, station: str, epoch: int | None, rule: str, rule_name: str, metric: str,
                        direction: str | None, seqs: Iterable[int], values: Iterable[float],
                        capture_times: Iterable[str], part_ids: Iterable[str | None], limits: Mapping[str, Any],
                        time: datetime | str | None = None) -> dict[str, Any]:
    """A break of a control-chart rule (`inspectd.reports.spc`) for the `alarm.<station>` topic, sent once per break.

    `seqs`, `values`, `capture_times` and `part_ids` are the frames that make up the break
    when it was first seen, oldest first; `limits` the chart's centre, sigma, ucl, lcl and
    the baseline they came from. A PLC bridge or MES acts on `rule` and `metric`; `window`
    says which frames to pull from the journal (replay by seq).

    Example:
        >>> m = build_alarm_message(station="s1", epoch=3, rule="N3", rule_name="6 points in a row steadily rising",
        ...     metric="porosity_pct", direction="rising", seqs=[7, 8], values=[1.0, 1.5],
        ...     capture_times=["2024-05-01T10:00:00Z", "2024-05-01T10:00:01Z"], part_ids=["P1", "P1"],
        ...     limits={"centre": 1.0, "sigma": 0.1, "ucl": 1.3, "lcl": 0.7}, time="2024-05-01T10:00:02Z")
        >>> m["window"]["first_seq"], m["window"]["points"], m["unit"], m["part_ids"]
        (7, 2, '%', ['P1'])
    """
    seq_list, times = [int(seq) for seq in seqs], [str(moment) for moment in capture_times]
    if not seq_list or len(times) != len(seq_list):
        msg = "an alarm needs the seqs of its frames and one capture time per seq"
        raise ValueError(msg)
    distinct_parts = list(dict.fromkeys(str(part) for part in part_ids if part is not None))
    return {"schema_version": SCHEMA_VERSION, "station": station, "epoch": epoch, "kind": "spc_rule_break",
            "rule": rule, "rule_name": rule_name, "metric": metric, "unit": unit_for(metric), "direction": direction,
            "window": {"first_seq": seq_list[0], "last_seq": seq_list[-1], "points": len(seq_list),
                       "first_capture_time": times[0], "last_capture_time": times[-1]},
            "seqs": seq_list, "values": [finite_or_none(value) for value in values], "part_ids": distinct_parts,
            "limits": {key: finite_or_none(value) if key in ("centre", "sigma", "ucl", "lcl") else value
                       for key, value in limits.items()},
            "time": utc_iso(time)}


def topic(kind: str, station: str) -> bytes:
    """The ZeroMQ topic frame: `verdict.<station>`, `heartbeat.<station>`, `error.<station>` or `alarm.<station>`.

    Subscribing to `b"verdict."` gets every station (ZeroMQ filters by prefix, so
    `b"verdict.s1"` would also match station `s10`: compare the whole topic when it matters).

    Example:
        >>> topic("heartbeat", "line-2")
        b'heartbeat.line-2'
    """
    if kind not in TOPIC_KINDS:
        msg = f"topic kind must be one of {TOPIC_KINDS}, got {kind!r}"
        raise ValueError(msg)
    return f"{kind}.{station}".encode()


def encode(message: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON; NaN and infinities (anywhere, numpy scalars too) become null.

    Enums, paths and datetimes are converted; any other non-JSON type raises TypeError.

    Example:
        >>> encode({"seq": 1, "value": float("inf")})
        b'{"seq":1,"value":null}'
    """
    return json.dumps(_json_safe(message), allow_nan=False, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


def decode(payload: bytes | str) -> Any:
    """Parse a JSON frame (the inverse of `encode`).

    Example:
        >>> decode(b'{"seq":1}')
        {'seq': 1}
    """
    return json.loads(payload)


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The shipped JSON Schema (draft 2020-12) of verdicts; `$defs` also hold heartbeat, error and alarm.

    Example:
        >>> load_schema()["properties"]["schema_version"]["const"] == SCHEMA_VERSION
        True
    """
    text = resources.files("inspectd").joinpath("schemas/verdict.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def validate(message: Mapping[str, Any], kind: str = "verdict") -> None:
    """Raise `jsonschema.ValidationError` unless `message` is a valid finished `kind` message.

    jsonschema is a development dependency (tests, integrators' checks): imported here only.

    Example:
        >>> import jsonschema
        >>> try:
        ...     validate({"schema_version": "1.1"}, kind="heartbeat")
        ... except jsonschema.ValidationError as error:
        ...     print(error.message)
        'station' is a required property
    """
    validator = _validator(kind)  # raises a clear ImportError when jsonschema is missing
    import jsonschema

    error = jsonschema.exceptions.best_match(validator.iter_errors(message))
    if error is not None:
        raise error


@cache
def _validator(kind: str) -> Any:
    try:
        import jsonschema
    except ImportError as exc:
        msg = "validate() needs the jsonschema package: pip install 'inspectd[dev]' (or jsonschema)"
        raise ImportError(msg) from exc
    schema = load_schema()
    if kind != "verdict":
        if kind not in schema["$defs"]:
            msg = f"no schema for message kind {kind!r}; known: verdict, {', '.join(schema['$defs'])}"
            raise ValueError(msg)
        schema = {"$schema": schema["$schema"], "$ref": f"#/$defs/{kind}", "$defs": schema["$defs"]}
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _failed_rule(rule: FailedRule | Mapping[str, Any]) -> dict[str, Any]:
    get = rule.get if isinstance(rule, Mapping) else lambda key: getattr(rule, key)
    op = get("op")
    return {"metric": str(get("metric")), "op": str(getattr(op, "value", op)),
            "limit": finite_or_none(get("limit")), "value": finite_or_none(get("value"))}


def _image(width: int | None, height: int | None, bit_depth: int | None) -> dict[str, int] | None:
    if width is None or height is None:
        return None
    return {"width": int(width), "height": int(height), "bit_depth": int(bit_depth or 8)}


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return finite_or_none(value)
    if hasattr(value, "item"):  # numpy scalar
        return _json_safe(value.item())
    if isinstance(value, enum.Enum):
        return _json_safe(value.value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, datetime):
        return utc_iso(value)
    msg = f"cannot put a {type(value).__name__} into a JSON message: {value!r:.80}"
    raise TypeError(msg)
