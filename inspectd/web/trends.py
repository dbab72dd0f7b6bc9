"""The Trends page: individuals control charts of any metric over frames, run-rule breaks, alarms.

Routes:
- `GET /trends` the page (`static/trends.html`, `trends.js`, charts by uPlot).
- `GET /api/trends/metrics` the numeric parameters the recent messages carry, with units
  and the verdict rules' limits (drawn as spec lines).
- `GET /api/trends/series?metric=M[&last=N | &from_seq=A&to_seq=B][&baseline_from=C&baseline_to=D]
  [&rule_set=nelson|western_electric]` one metric's points, the control limits (from the
  chosen baseline, else the saved one, else the first 20 frames shown, and says which), the
  rule breaks and each part's sample mean with its 95 % CI.
- `GET /api/trends/settings`, `POST /api/trends/settings` (JSON `{"metrics": [...],
  "rule_set": ..., "baseline_from": seq, "baseline_to": seq}`): what the alarm monitor
  watches; saving computes the limits from the baseline frames and freezes them in
  `<state dir>/ui/spc.json`.
- `GET /api/trends/alarms` the alarms: those the daemon's monitor published on
  `alarm.<station>`, or, under `inspectd ui`, the breaks the saved settings find in the
  journal's latest frames (shown only: nothing is published without the daemon).

Every number comes from `inspectd.reports.spc` (the same functions the monitor uses); the journal is
read read-only on a worker thread, never on the event loop.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from inspectd.reports.spc import (
    RULE_NAMES,
    RULE_SETS,
    BaselineError,
    ControlLimits,
    control_limits,
    sample_means,
    zones,
)
from inspectd.web.alarms import (
    METRIC_NAME,
    SpcSettingsError,
    alarm_for,
    baseline_settings,
    breaks_in,
    chart_points,
    check_metric_name,
    check_rule_set,
    load_settings,
    messages_between,
    save_settings,
)
from inspectd.web.context import WebContext
from inspectd.web.journal_reader import MAX_ROWS, JournalUnreadableError
from inspectd.web.routing import BadRequest, query_int, read_bounded_body, static_page
from inspectd.wire.message import topic, unit_for

DEFAULT_LAST = 500
PROVISIONAL_BASELINE_POINTS = 20
METRIC_SCAN_MESSAGES = 200
OFFLINE_ALARM_FRAMES = 2000
MAX_BODY_BYTES = 16_384
FIRST_METRICS = ("porosity_pct", "unmelted_fraction_pct")
MAX_SEQ = 2**63 - 1


def routes(context: WebContext) -> list[BaseRoute]:
    return [
        static_page("trends"),
        Route("/api/trends/metrics", _endpoint(context, _metrics)),
        Route("/api/trends/series", _endpoint(context, _series)),
        Route("/api/trends/settings", _endpoint(context, _get_settings), methods=["GET"]),
        Route("/api/trends/settings", _post_settings(context), methods=["POST"]),
        Route("/api/trends/alarms", _endpoint(context, _alarms)),
    ]


def _endpoint(context: WebContext, work: Any) -> Any:
    """A GET handler: parse on the loop, read the journal and compute on a worker thread."""
    async def handler(request: Request) -> Response:
        try:
            return JSONResponse(await run_in_threadpool(work, context, request))
        except (BadRequest, SpcSettingsError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except JournalUnreadableError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
    return handler


# ---- metrics -----------------------------------------------------------------------------------


def _metrics(context: WebContext, _request: Request) -> dict[str, Any]:
    names: dict[str, str] = {}
    for message in context.journal.latest(METRIC_SCAN_MESSAGES):
        for name, parameter in (message.get("parameters") or {}).items():
            if isinstance(parameter, dict) and isinstance(parameter.get("value"), (int, float)):
                names.setdefault(name, str(parameter.get("unit") or unit_for(name)))
    rule_metrics = [rule.metric for rule in context.config.rules]
    ordered = [n for n in FIRST_METRICS if n in names] + [n for n in rule_metrics if n in names]
    ordered += sorted(names)
    ordered = [n for n in dict.fromkeys(ordered) if METRIC_NAME.match(n)]
    return {"metrics": [{"name": n, "unit": names[n]} for n in ordered],
            "default": [n for n in FIRST_METRICS if n in names] or ordered[:1],
            "rules": [{"metric": r.metric, "op": r.op.value, "limit": r.limit} for r in context.config.rules],
            "rule_sets": {name: list(ids) for name, ids in RULE_SETS.items()}, "rule_names": RULE_NAMES}


# ---- series ------------------------------------------------------------------------------------


def _series(context: WebContext, request: Request) -> dict[str, Any]:
    metric = _metric_param(request)
    reader = context.journal
    saved = _saved_or_none(context)
    rule_set = _rule_set_param(request, saved)
    from_seq = _optional_seq(request, "from_seq")
    to_seq = _optional_seq(request, "to_seq")
    if from_seq is not None or to_seq is not None:
        first, last = from_seq or 1, to_seq or reader.last_seq()
        if first > last:
            msg = f"from_seq ({first}) is after to_seq ({last})"
            raise BadRequest(msg)
        messages = messages_between(reader, first, last)
    else:
        messages = reader.latest(query_int(request, "last", DEFAULT_LAST, 1, MAX_ROWS))
    points = chart_points(messages, metric)

    limits, source, baseline, problem = _limits_for(request, reader, metric, points, saved)
    values = [p.value for p in points]
    seqs = [p.seq for p in points]
    body: dict[str, Any] = {
        "metric": metric, "unit": unit_for(metric), "rule_set": rule_set, "rule_names": RULE_NAMES,
        "points": {"seq": seqs, "time": [p.capture_time for p in points], "value": values,
                   "part_id": [p.part_id for p in points], "verdict": [p.verdict for p in points]},
        "limits": None, "limits_problem": problem, "breaks": [], "samples": [],
        "spec": [{"op": r.op.value, "limit": r.limit} for r in context.config.rules if r.metric == metric],
        "watched": saved is not None and metric in saved.limits,
    }
    if limits is not None:
        body["limits"] = {**limits.to_dict(), **limits.zone_edges(), "source": source, **baseline}
        body["points"]["zone"] = zones(values, limits).tolist() if values else []
        body["breaks"] = [{**found.to_dict(), "seqs": [seqs[i] for i in found.indices],
                           "first_seq": seqs[found.first], "last_seq": seqs[found.last]}
                          for found in breaks_in(points, limits, RULE_SETS[rule_set])]
    for sample in sample_means([p.part_id for p in points], values):
        sample_seqs = [seqs[i] for i in sample.indices]
        body["samples"].append({**sample.to_dict(), "seqs": sample_seqs, "x": sum(sample_seqs) / len(sample_seqs)})
    return body


def _limits_for(request: Request, reader: Any, metric: str, points: list[Any],
                saved: Any) -> tuple[ControlLimits | None, str, dict[str, Any], str | None]:
    """(limits, where they come from, the baseline window, why there are none)."""
    baseline_from = _optional_seq(request, "baseline_from")
    baseline_to = _optional_seq(request, "baseline_to")
    if (baseline_from is None) != (baseline_to is None):
        msg = "give both baseline_from and baseline_to, or neither"
        raise BadRequest(msg)
    if baseline_from is not None and baseline_to is not None:
        first, last = sorted((baseline_from, baseline_to))
        if last - first + 1 > MAX_ROWS:
            msg = f"a baseline window holds at most {MAX_ROWS} frames"
            raise BadRequest(msg)
        window = {"baseline_first_seq": first, "baseline_last_seq": last}
        baseline_points = chart_points(messages_between(reader, first, last), metric)
        try:
            return control_limits([p.value for p in baseline_points]), "chosen", window, None
        except BaselineError as exc:
            return None, "chosen", window, f"baseline seq {first}..{last}: {exc}"
    if saved is not None and metric in saved.limits:
        return (saved.limits[metric], "saved",
                {"baseline_first_seq": saved.baseline_first_seq, "baseline_last_seq": saved.baseline_last_seq}, None)
    first_points = points[:PROVISIONAL_BASELINE_POINTS]
    window = ({"baseline_first_seq": first_points[0].seq, "baseline_last_seq": first_points[-1].seq}
              if first_points else {})
    try:
        return control_limits([p.value for p in first_points]), "provisional", window, None
    except BaselineError as exc:
        return None, "provisional", window, str(exc)


# ---- settings and alarms -----------------------------------------------------------------------


def _get_settings(context: WebContext, _request: Request) -> dict[str, Any]:
    return _settings_view(context)


def _post_settings(context: WebContext) -> Any:
    async def handler(request: Request) -> Response:
        try:
            body = await _json_body(request)
            metrics = body.get("metrics")
            if not isinstance(metrics, list):
                msg = "metrics must be a list of metric names"
                raise BadRequest(msg)
            rule_set = check_rule_set(body.get("rule_set", "nelson"))
            first, last = (_body_seq(body, "baseline_from"), _body_seq(body, "baseline_to"))

            def save() -> dict[str, Any]:
                settings = baseline_settings(context.journal, metrics=[check_metric_name(m) for m in metrics],
                                             rule_set=rule_set, first_seq=min(first, last), last_seq=max(first, last))
                save_settings(context.ui_dir, settings)
                return _settings_view(context)

            return JSONResponse(await run_in_threadpool(save))
        except (BadRequest, SpcSettingsError, BaselineError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except JournalUnreadableError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
    return handler


def _settings_view(context: WebContext) -> dict[str, Any]:
    problem = None
    try:
        saved = load_settings(context.ui_dir)
    except SpcSettingsError as exc:
        saved, problem = None, str(exc)
    monitor = _monitor(context)
    if context.offline:
        note = ("Offline (inspectd ui): no daemon runs here, so alarms are shown on this page only "
                "and nothing is published on ZeroMQ.")
    elif monitor is None:
        note = "This daemon has no alarm monitor: alarms are shown on this page only."
    else:
        note = (f"The daemon checks each new frame against the saved limits and publishes a new rule break "
                f"once on ZeroMQ topic {topic('alarm', context.station).decode()}.")
    return {"settings": None if saved is None else saved.to_json(), "settings_problem": problem,
            "mode": "offline" if context.offline else "daemon", "publishing": monitor is not None,
            "topic": topic("alarm", context.station).decode(), "note": note,
            "monitor": None if monitor is None else monitor.status()}


def _alarms(context: WebContext, _request: Request) -> dict[str, Any]:
    view = _settings_view(context)
    monitor = _monitor(context)
    if monitor is not None:
        return {**view, "alarms": monitor.recent()}
    saved = _saved_or_none(context)
    alarms: list[dict[str, Any]] = []
    if saved is not None:
        messages = context.journal.latest(OFFLINE_ALARM_FRAMES)
        epoch = messages[-1].get("epoch") if messages else None
        for metric in saved.metrics:
            points = chart_points(messages, metric)
            for found in breaks_in(points, saved.limits[metric], saved.rules):
                alarms.append(alarm_for(found, points, metric=metric, settings=saved, station=context.station,
                                        epoch=epoch, time=points[found.last].capture_time or None))
        alarms.sort(key=lambda alarm: (alarm["window"]["first_seq"], alarm["metric"], alarm["rule"]))
    return {**view, "alarms": alarms}


def _monitor(context: WebContext) -> Any:
    return getattr(context.daemon, "alarms", None) if context.daemon is not None else None


def _saved_or_none(context: WebContext) -> Any:
    try:
        return load_settings(context.ui_dir)
    except SpcSettingsError:
        return None  # the settings view says what is wrong with the file


# ---- parameters --------------------------------------------------------------------------------


def _metric_param(request: Request) -> str:
    metric = request.query_params.get("metric", "porosity_pct")
    try:
        return check_metric_name(metric)
    except SpcSettingsError as exc:
        raise BadRequest(str(exc)) from None


def _rule_set_param(request: Request, saved: Any) -> str:
    name = request.query_params.get("rule_set") or (saved.rule_set if saved is not None else "nelson")
    try:
        return check_rule_set(name)
    except SpcSettingsError as exc:
        raise BadRequest(str(exc)) from None


def _optional_seq(request: Request, name: str) -> int | None:
    if not request.query_params.get(name):
        return None
    return query_int(request, name, 1, 1, MAX_SEQ)


def _body_seq(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SEQ:
        msg = f"{name} must be a seq (an integer >= 1), got {str(value)[:40]!r}"
        raise BadRequest(msg)
    return value


async def _json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, refused beyond MAX_BODY_BYTES without reading the rest."""
    try:
        body = json.loads(await read_bounded_body(request, MAX_BODY_BYTES) or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = f"the request body is not JSON: {exc}"
        raise BadRequest(msg) from None
    if not isinstance(body, dict):
        msg = "the request body must be a JSON object"
        raise BadRequest(msg)
    return body
