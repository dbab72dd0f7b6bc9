"""Control-chart alarms: the settings the Trends page saves, and the monitor that raises alarms in the daemon.

The Trends page saves which metrics to watch, the rule set and the baseline window in
`<state dir>/ui/spc.json`, with the control limits computed from that window at that moment.
The limits are frozen on purpose: the chart's yardstick must not move as the process
drifts, and the baseline frames may later be pruned from the journal.

`AlarmMonitor` runs inside the daemon (`inspectd run`) on a thread of its own. Every
`interval_s` it reads the frames journaled since its last look, read-only through
`JournalReader` (never the daemon's own connection, never a lock), evaluates the rules of
`inspectd.reports.spc` over the recent points of each watched metric, and publishes each new break
once on `alarm.<station>` through the daemon's publisher (`message.build_alarm_message`).
It is never on the pipeline's path: a slow look at the journal delays an alarm, never a
verdict. A break that goes on over more frames (a run of 12 where 9 are enough) is the same
break, not a new alarm: breaks are keyed by metric, rule and direction, and one that starts
at or before the last frame of the previous break of that key continues it. Breaks already
in the journal when the monitor starts, or when the settings change, are not announced
again; only frames that arrive afterwards raise alarms.

Under `inspectd ui` there is no daemon and no monitor: the page shows the breaks it finds
with the same saved limits, and nothing is published.

Example:
    >>> import tempfile
    >>> from inspectd.reports.spc import ControlLimits
    >>> ui_dir = Path(tempfile.mkdtemp())
    >>> saved = SpcSettings(rule_set="nelson", baseline_first_seq=1, baseline_last_seq=20, baseline_epoch=7,
    ...                     limits={"porosity_pct": ControlLimits(1.0, 0.1, 0.1128, 20)},
    ...                     saved_time="2024-05-01T10:00:00.000000Z")
    >>> save_settings(ui_dir, saved)
    >>> load_settings(ui_dir) == saved
    True
"""

from __future__ import annotations

import collections
import json
import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inspectd.daemon.journal import JOURNAL_FILE
from inspectd.durable_files import write_atomically
from inspectd.errors import InspectdError
from inspectd.metric_values import finite_or_none
from inspectd.reports.spc import (
    RULE_NAMES,
    RULE_SETS,
    ControlLimits,
    RuleBreak,
    control_limits,
    find_rule_breaks,
)
from inspectd.web.context import UI_DIR
from inspectd.web.journal_reader import MAX_ROWS, JournalReader, JournalUnreadableError
from inspectd.wire.message import build_alarm_message, utc_iso

logger = logging.getLogger(__name__)

SETTINGS_FILE = "spc.json"
SETTINGS_VERSION = 1
MAX_WATCHED_METRICS = 16
METRIC_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
POLL_INTERVAL_S = 0.5
# Points per metric the monitor keeps: the longest rule needs 15 in a row; the rest gives a
# break that is still going on its start, so it is recognised as the same break.
HISTORY_POINTS = 120
RECENT_ALARMS = 100


class SpcSettingsError(InspectdError):
    """spc.json cannot be read, or what the page sent cannot be saved."""


@dataclass(frozen=True)
class ChartPoint:
    """One frame on a chart: its journal seq, capture time, part id, verdict and the metric's value."""

    seq: int
    capture_time: str
    part_id: str | None
    verdict: str
    value: float


@dataclass(frozen=True)
class SpcSettings:
    """What the Trends page saved: the rule set, the baseline window and each watched metric's limits."""

    rule_set: str
    baseline_first_seq: int
    baseline_last_seq: int
    baseline_epoch: int | None
    limits: Mapping[str, ControlLimits]
    saved_time: str

    @property
    def rules(self) -> tuple[str, ...]:
        return RULE_SETS[self.rule_set]

    @property
    def metrics(self) -> list[str]:
        return list(self.limits)

    def limits_payload(self, metric: str) -> dict[str, Any]:
        """A metric's limits as an alarm carries them (with the baseline they came from)."""
        limits = self.limits[metric]
        return {"centre": limits.centre, "sigma": limits.sigma, "ucl": limits.ucl, "lcl": limits.lcl,
                "baseline_first_seq": self.baseline_first_seq, "baseline_last_seq": self.baseline_last_seq,
                "baseline_points": limits.n}

    def to_json(self) -> dict[str, Any]:
        return {"version": SETTINGS_VERSION, "rule_set": self.rule_set,
                "baseline": {"first_seq": self.baseline_first_seq, "last_seq": self.baseline_last_seq,
                             "epoch": self.baseline_epoch},
                "metrics": {name: limits.to_dict() for name, limits in self.limits.items()},
                "saved_time": self.saved_time}

    @classmethod
    def from_json(cls, raw: Any) -> SpcSettings:
        """Parse spc.json; anything unexpected raises `SpcSettingsError` naming it."""
        try:
            if raw.get("version") != SETTINGS_VERSION:
                msg = f"version {raw.get('version')!r}, expected {SETTINGS_VERSION}"
                raise SpcSettingsError(msg)
            limits = {}
            for name, entry in raw["metrics"].items():
                check_metric_name(name)
                limits[name] = ControlLimits(centre=float(entry["centre"]), sigma=float(entry["sigma"]),
                                             mr_bar=float(entry["mr_bar"]), n=int(entry["n"]))
                if not (math.isfinite(limits[name].centre) and limits[name].sigma > 0):
                    msg = f"metric {name}: the limits need a finite centre and a positive sigma"
                    raise SpcSettingsError(msg)
            baseline = raw["baseline"]
            settings = cls(rule_set=check_rule_set(raw["rule_set"]), baseline_first_seq=int(baseline["first_seq"]),
                           baseline_last_seq=int(baseline["last_seq"]),
                           baseline_epoch=None if baseline.get("epoch") is None else int(baseline["epoch"]),
                           limits=limits, saved_time=str(raw["saved_time"]))
        except SpcSettingsError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            msg = f"not a valid {SETTINGS_FILE} ({type(exc).__name__}: {exc})"
            raise SpcSettingsError(msg) from exc
        return settings


def check_metric_name(name: Any) -> str:
    if not isinstance(name, str) or not METRIC_NAME.match(name):
        msg = f"a metric name is letters, digits and _ (at most 64), got {str(name)[:70]!r}"
        raise SpcSettingsError(msg)
    return name


def check_rule_set(name: Any) -> str:
    if name not in RULE_SETS:
        msg = f"rule_set must be one of {', '.join(RULE_SETS)}, got {str(name)[:40]!r}"
        raise SpcSettingsError(msg)
    return str(name)


def settings_path(ui_dir: Path) -> Path:
    return Path(ui_dir) / SETTINGS_FILE


def load_settings(ui_dir: Path) -> SpcSettings | None:
    """The saved settings, or None when none were saved; a damaged file raises `SpcSettingsError`."""
    path = settings_path(ui_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        msg = f"cannot read {path}: {exc}"
        raise SpcSettingsError(msg) from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        msg = f"{path} is not JSON: {exc}"
        raise SpcSettingsError(msg) from exc
    return SpcSettings.from_json(raw)


def save_settings(ui_dir: Path, settings: SpcSettings) -> None:
    """Write spc.json whole or not at all (temporary file, fsync, rename): the monitor never reads half a file."""
    write_atomically(settings_path(ui_dir), json.dumps(settings.to_json(), indent=2).encode("utf-8"))


def chart_points(messages: Iterable[Mapping[str, Any]], metric: str) -> list[ChartPoint]:
    """The frames among `messages` that carry a finite value of `metric` (ERROR frames carry none)."""
    points = []
    for message in messages:
        parameter = (message.get("parameters") or {}).get(metric)
        value = finite_or_none(parameter.get("value")) if isinstance(parameter, Mapping) else None
        seq = message.get("seq")
        if value is None or not isinstance(seq, int):
            continue
        part_id = message.get("part_id")
        points.append(ChartPoint(seq=seq, capture_time=str(message.get("capture_time") or ""),
                                 part_id=None if part_id is None else str(part_id),
                                 verdict=str(message.get("verdict") or ""), value=value))
    return points


def messages_between(reader: JournalReader, first_seq: int, last_seq: int) -> list[dict[str, Any]]:
    """Journal messages with first_seq <= seq <= last_seq (at most MAX_ROWS of them)."""
    count = max(1, min(last_seq - first_seq + 1, MAX_ROWS))
    return [m for m in reader.since(first_seq - 1, count) if m.get("seq", 0) <= last_seq]


def baseline_settings(reader: JournalReader, *, metrics: Sequence[str], rule_set: str, first_seq: int,
                      last_seq: int) -> SpcSettings:
    """Settings for `metrics` with limits from the journal's frames first_seq..last_seq (what the page saves).

    Raises `SpcSettingsError` for a bad request and `spc.BaselineError` (naming the metric)
    when the window cannot give a metric limits.
    """
    check_rule_set(rule_set)
    if len(metrics) > MAX_WATCHED_METRICS:
        msg = f"at most {MAX_WATCHED_METRICS} metrics can be watched, got {len(metrics)}"
        raise SpcSettingsError(msg)
    if not 1 <= first_seq <= last_seq:
        msg = f"the baseline window must run from a seq >= 1 to one not before it, got {first_seq}..{last_seq}"
        raise SpcSettingsError(msg)
    if last_seq - first_seq + 1 > MAX_ROWS:
        msg = f"a baseline window holds at most {MAX_ROWS} frames, got {last_seq - first_seq + 1}"
        raise SpcSettingsError(msg)
    messages = messages_between(reader, first_seq, last_seq)
    limits: dict[str, ControlLimits] = {}
    for metric in dict.fromkeys(check_metric_name(name) for name in metrics):
        try:
            limits[metric] = control_limits([p.value for p in chart_points(messages, metric)])
        except ValueError as exc:
            msg = f"{metric}: {exc}"
            raise type(exc)(msg) from exc
    epochs = [m.get("epoch") for m in messages if isinstance(m.get("epoch"), int)]
    return SpcSettings(rule_set=rule_set, baseline_first_seq=first_seq, baseline_last_seq=last_seq,
                       baseline_epoch=epochs[-1] if epochs else None, limits=limits, saved_time=utc_iso())


def alarm_for(rule_break: RuleBreak, points: Sequence[ChartPoint], *, metric: str, settings: SpcSettings,
              station: str, epoch: int | None, time: str | None = None) -> dict[str, Any]:
    """The `alarm.<station>` message of one break found in `points` (positions as passed to `find_rule_breaks`)."""
    involved = [points[index] for index in rule_break.indices]
    return build_alarm_message(station=station, epoch=epoch, rule=rule_break.rule, rule_name=rule_break.name,
                               metric=metric, direction=rule_break.direction, seqs=[p.seq for p in involved],
                               values=[p.value for p in involved], capture_times=[p.capture_time for p in involved],
                               part_ids=[p.part_id for p in involved], limits=settings.limits_payload(metric),
                               time=time)


def breaks_in(points: Sequence[ChartPoint], limits: ControlLimits, rules: Iterable[str]) -> list[RuleBreak]:
    return find_rule_breaks([p.value for p in points], limits, rules=rules) if points else []


class AlarmMonitor:
    """Tails the journal by seq on its own thread and publishes each new rule break once.

    `publish` is the daemon's `Publisher.publish_alarm` (it only queues: never blocks).
    `poll()` is one look, for the thread and for tests that step it themselves.
    """

    def __init__(self, state_dir: Path, *, station: str, publish: Callable[[dict[str, Any]], None],
                 interval_s: float = POLL_INTERVAL_S, history_points: int = HISTORY_POINTS) -> None:
        self.state_dir = Path(state_dir)
        self.station = station
        self.interval_s = float(interval_s)
        self._publish = publish
        self._history_points = int(history_points)
        self._reader = JournalReader(self.state_dir / JOURNAL_FILE)
        self._lock = threading.Lock()
        self._recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_ALARMS)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._settings_stamp: tuple[int, int] | None = None
        self._settings: SpcSettings | None = None
        self._cursor: int | None = None  # last seq looked at; None: look at the journal afresh
        self._epoch: int | None = None
        self._points: dict[str, collections.deque[ChartPoint]] = {}
        self._published_until: dict[tuple[str, str, str | None], int] = {}
        self.problem: str | None = None
        self.published_count = 0

    @property
    def ui_dir(self) -> Path:
        return self.state_dir / UI_DIR

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="spc-alarms", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def recent(self) -> list[dict[str, Any]]:
        """The alarms published since the daemon started (the newest RECENT_ALARMS), oldest first."""
        with self._lock:
            return list(self._recent)

    def status(self) -> dict[str, Any]:
        """What the Trends page shows about the monitor."""
        settings = self._settings
        return {"watching": settings.metrics if settings else [], "rule_set": settings.rule_set if settings else None,
                "last_seq": self._cursor, "published": self.published_count, "problem": self.problem,
                "interval_s": self.interval_s}

    def poll(self) -> list[dict[str, Any]]:
        """One look: reload changed settings, read new frames, publish new breaks; returns what was published."""
        if self._reload_settings() is None:
            return []
        try:
            latest = self._reader.latest(1)
        except JournalUnreadableError as exc:
            self.problem = str(exc)
            return []
        self.problem = None
        if not latest:
            self._cursor, self._epoch = 0, None
            return []
        newest = latest[0]
        if self._cursor is None or newest.get("epoch") != self._epoch or newest["seq"] < self._cursor:
            self._prime(newest)  # first look, new settings, or a new journal stream: announce nothing old
            return []
        new_messages = self._reader.since(self._cursor, MAX_ROWS)
        if not new_messages:
            return []
        self._cursor = int(new_messages[-1]["seq"])
        return self._evaluate(new_messages)

    # -- internals ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception as exc:  # a bad look must not end the monitor: next look in interval_s
                if self.problem != str(exc):
                    logger.exception("control-chart alarms: look at the journal failed")
                self.problem = str(exc)

    def _reload_settings(self) -> SpcSettings | None:
        path = settings_path(self.ui_dir)
        try:
            info = path.stat()
            stamp: tuple[int, int] | None = (info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._settings_stamp:
            return self._settings
        self._settings_stamp = stamp
        try:
            self._settings = load_settings(self.ui_dir)
        except SpcSettingsError as exc:
            logger.warning("control-chart alarms off: %s", exc)
            self.problem, self._settings = str(exc), None
        else:
            self.problem = None
            if self._settings is not None:
                logger.info("control-chart alarms: watching %s with the %s rules", ", ".join(self._settings.metrics)
                            or "nothing", self._settings.rule_set)
        self._cursor = None
        return self._settings

    def _prime(self, newest: Mapping[str, Any]) -> None:
        assert self._settings is not None
        history = self._reader.latest(self._history_points)
        self._points = {metric: collections.deque(chart_points(history, metric), maxlen=self._history_points)
                        for metric in self._settings.metrics}
        self._published_until = {}
        self._cursor, self._epoch = int(newest["seq"]), newest.get("epoch")
        for metric, points in self._points.items():
            for found in breaks_in(points, self._settings.limits[metric], self._settings.rules):
                key = (metric, found.rule, found.direction)
                self._published_until[key] = max(self._published_until.get(key, 0), points[found.last].seq)

    def _evaluate(self, new_messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        settings = self._settings
        assert settings is not None
        published = []
        for metric, history in self._points.items():
            arrived = chart_points(new_messages, metric)
            if not arrived:
                continue
            history.extend(arrived)
            points = list(history)
            for found in breaks_in(points, settings.limits[metric], settings.rules):
                first_seq, last_seq = points[found.first].seq, points[found.last].seq
                if last_seq < arrived[0].seq:
                    continue  # no new frame in it: seen on an earlier look
                key = (metric, found.rule, found.direction)
                until = self._published_until.get(key, 0)
                self._published_until[key] = max(until, last_seq)
                if first_seq <= until:
                    continue  # the same break, going on
                alarm = alarm_for(found, points, metric=metric, settings=settings, station=self.station,
                                  epoch=new_messages[-1].get("epoch"))
                self._publish(alarm)
                published.append(alarm)
                logger.warning("alarm: %s %s (%s) on frames %d..%d", metric, found.rule, RULE_NAMES[found.rule],
                               first_seq, last_seq)
        if published:
            with self._lock:
                self._recent.extend(published)
            self.published_count += len(published)
        return published
