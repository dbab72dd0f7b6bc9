"""The Trends page and its API over a real journal holding a planted porosity drift.

The journal is written by `inspectd.daemon.journal.Journal` as the daemon writes it: 60 frames of a
steady process (porosity about 1.2 %, 3 fields per part) and then 14 frames of porosity
rising steadily to about 2.5 %, every one still a PASS of the verdict rule (<= 5 %): the
drift the control chart must show before the parts fail.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from inspectd.config import Config
from inspectd.daemon.journal import JOURNAL_FILE, Journal
from inspectd.data import synth
from inspectd.reports.report import render_overlay
from inspectd.reports.spc import (
    NELSON,
    WESTERN_ELECTRIC,
    control_limits,
    find_rule_breaks,
    sample_means,
)
from inspectd.web.app import create_app
from inspectd.web.server import WebServer
from inspectd.wire.message import build_verdict_message
from tests.web.conftest import SCREENSHOTS, make_context

STATION = "line-3"
STABLE_FRAMES = 60
DRIFT_FRAMES = 14
FIELDS_PER_PART = 3
_RNG = np.random.default_rng(14)  # a seed whose steady frames break no rule against the seq 1-30 baseline
STABLE_POROSITY = 1.20 + 0.06 * _RNG.standard_normal(STABLE_FRAMES)
UNMELTED = 18.0 + 0.7 * _RNG.standard_normal(STABLE_FRAMES + DRIFT_FRAMES)
DRIFT_POROSITY = 1.30 + 0.09 * np.arange(DRIFT_FRAMES)
POROSITY = np.concatenate([STABLE_POROSITY, DRIFT_POROSITY])
FIRST_DRIFT_SEQ = STABLE_FRAMES + 1
START = datetime(2024, 5, 1, 8, 0, tzinfo=timezone.utc)


def frame_draft(index: int, porosity_pct: float, unmelted_pct: float, *, station: str = STATION) -> dict:
    """A verdict draft as the pipeline builds it, for frame `index` (0-based) of the planted run."""
    return build_verdict_message(
        station=station, verdict="PASS", source=f"/data/in/coupon-{index:04d}.tif", source_kind="file",
        part_id=f"P{index // FIELDS_PER_PART + 1:03d}", field_index=index % FIELDS_PER_PART,
        capture_time=START + timedelta(seconds=20 * index),
        metrics={"porosity_pct": porosity_pct, "unmelted_fraction_pct": unmelted_pct,
                 "melted_fraction_pct": 100.0 - porosity_pct - unmelted_pct, "pore_count": 40 + index % 7,
                 "entropy_bits": 6.8},
        engine_name="classical", backend="cpu", model_hash=None, timings_ms={"segment": 9.0},
        image_sha256=f"{index:064x}", width=1024, height=768, bit_depth=8)


def commit_frames(journal: Journal, first: int, last: int) -> list[dict]:
    """Commit frames first..last-1 of the planted run (seq = index + 1 in a fresh journal)."""
    return [journal.commit(frame_draft(i, float(POROSITY[i]), float(UNMELTED[i])), f"frame-{i}")
            for i in range(first, last)]


@pytest.fixture
def drift_state(tmp_path) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    with Journal(state / JOURNAL_FILE) as journal:
        commit_frames(journal, 0, STABLE_FRAMES + DRIFT_FRAMES)
    return state


@pytest.fixture
def client(drift_state) -> TestClient:
    return TestClient(create_app(make_context(drift_state, config=Config(station=STATION))))


# ---- the API ------------------------------------------------------------------------------------


def test_metrics_lists_the_numeric_parameters_porosity_and_unmelted_first(client):
    listing = client.get("/api/trends/metrics").json()
    names = [m["name"] for m in listing["metrics"]]
    assert names[:2] == ["porosity_pct", "unmelted_fraction_pct"]
    assert {"melted_fraction_pct", "pore_count", "entropy_bits"} <= set(names)
    assert listing["default"] == ["porosity_pct", "unmelted_fraction_pct"]
    assert {"metric": "porosity_pct", "op": "<=", "limit": 5.0} in listing["rules"]
    assert listing["rule_sets"]["nelson"] == list(NELSON)


def test_series_with_a_chosen_baseline_has_its_limits_the_drift_breaks_and_part_means(client):
    body = client.get("/api/trends/series?metric=porosity_pct&last=500&baseline_from=1&baseline_to=30").json()
    assert body["points"]["seq"] == list(range(1, 75))
    assert body["points"]["value"] == pytest.approx(POROSITY.tolist())
    assert body["points"]["part_id"][:4] == ["P001", "P001", "P001", "P002"]
    expected = control_limits(POROSITY[:30])
    limits = body["limits"]
    assert (limits["centre"], limits["sigma"], limits["ucl"], limits["lcl"]) == pytest.approx(
        (expected.centre, expected.sigma, expected.ucl, expected.lcl))
    assert (limits["source"], limits["baseline_first_seq"], limits["baseline_last_seq"], limits["n"]) == (
        "chosen", 1, 30, 30)
    assert limits["plus_2sigma"] == pytest.approx(expected.centre + 2 * expected.sigma)
    reference = find_rule_breaks(POROSITY, expected, NELSON)
    assert [(b["rule"], b["first_seq"], b["last_seq"], b["direction"]) for b in body["breaks"]] == [
        (b.rule, b.first + 1, b.last + 1, b.direction) for b in reference]
    assert {b["rule"] for b in body["breaks"]} >= {"N1", "N2", "N3", "N5", "N6"}
    assert min(b["first_seq"] for b in body["breaks"]) >= FIRST_DRIFT_SEQ - 4  # nothing in the steady run
    n1 = next(b for b in body["breaks"] if b["rule"] == "N1")
    assert n1["direction"] == "high" and n1["last_seq"] == 74
    parts = sample_means(body["points"]["part_id"], POROSITY)
    assert len(body["samples"]) == len(parts) == 25
    first = body["samples"][0]
    assert (first["part_id"], first["n"], first["seqs"], first["x"]) == ("P001", 3, [1, 2, 3], 2.0)
    assert (first["mean"], first["ci95_low"]) == pytest.approx((parts[0].mean, parts[0].ci95_low))
    assert body["spec"] == [{"op": "<=", "limit": 5.0}]
    assert body["watched"] is False


def test_series_without_a_baseline_uses_the_first_20_frames_shown_and_says_so(client):
    body = client.get("/api/trends/series?metric=unmelted_fraction_pct&from_seq=11&to_seq=60").json()
    assert body["points"]["seq"] == list(range(11, 61))
    limits = body["limits"]
    assert (limits["source"], limits["baseline_first_seq"], limits["baseline_last_seq"]) == ("provisional", 11, 30)
    assert limits["centre"] == pytest.approx(control_limits(UNMELTED[10:30]).centre)


def test_western_electric_rules_are_evaluated_when_asked(client):
    body = client.get("/api/trends/series?metric=porosity_pct&baseline_from=1&baseline_to=30"
                      "&rule_set=western_electric").json()
    assert body["rule_set"] == "western_electric"
    assert {b["rule"] for b in body["breaks"]} <= set(WESTERN_ELECTRIC)
    assert {"WE1", "WE4"} <= {b["rule"] for b in body["breaks"]}


def test_saving_settings_freezes_the_limits_and_later_series_use_them(client, drift_state):
    answer = client.post("/api/trends/settings", json={"metrics": ["porosity_pct", "unmelted_fraction_pct"],
                                                        "rule_set": "nelson", "baseline_from": 30, "baseline_to": 1})
    assert answer.status_code == 200, answer.text
    view = answer.json()
    assert view["mode"] == "offline" and view["publishing"] is False and view["topic"] == f"alarm.{STATION}"
    assert "shown on this page only" in view["note"]
    saved = json.loads((drift_state / "ui" / "spc.json").read_text())
    assert saved["baseline"]["first_seq"] == 1 and saved["baseline"]["last_seq"] == 30
    assert saved["baseline"]["epoch"] == client.get("/api/verdicts?limit=1").json()[0]["epoch"]
    assert saved["metrics"]["porosity_pct"]["centre"] == pytest.approx(control_limits(POROSITY[:30]).centre)
    body = client.get("/api/trends/series?metric=porosity_pct").json()
    assert body["limits"]["source"] == "saved" and body["watched"] is True
    assert body["limits"]["sigma"] == pytest.approx(control_limits(POROSITY[:30]).sigma)


def test_offline_alarms_are_the_saved_settings_breaks_in_the_journal_not_published(client):
    assert client.get("/api/trends/alarms").json()["alarms"] == []
    client.post("/api/trends/settings", json={"metrics": ["porosity_pct", "unmelted_fraction_pct"],
                                              "rule_set": "nelson", "baseline_from": 1, "baseline_to": 30})
    view = client.get("/api/trends/alarms").json()
    assert view["publishing"] is False
    alarms = view["alarms"]
    assert {a["metric"] for a in alarms} == {"porosity_pct"}
    n3 = next(a for a in alarms if a["rule"] == "N3")
    assert n3["direction"] == "rising" and n3["window"]["last_seq"] == 74 and n3["station"] == STATION
    assert n3["seqs"] == list(range(n3["window"]["first_seq"], 75))
    assert n3["values"] == pytest.approx(POROSITY[n3["seqs"][0] - 1:].tolist())


@pytest.mark.parametrize(("query", "says"), [
    ("metric=../etc", "metric name"), ("metric=porosity_pct&last=0", "last must be"),
    ("metric=porosity_pct&baseline_from=3", "both baseline_from"), ("metric=porosity_pct&rule_set=mine", "rule_set"),
    ("metric=porosity_pct&from_seq=9&to_seq=3", "after to_seq"), ("metric=porosity_pct&from_seq=x", "from_seq"),
])
def test_bad_series_queries_are_400_with_a_reason(client, query, says):
    answer = client.get(f"/api/trends/series?{query}")
    assert answer.status_code == 400 and says in answer.json()["error"]


@pytest.mark.parametrize(("body", "says"), [
    ({"metrics": "porosity_pct", "baseline_from": 1, "baseline_to": 30}, "list"),
    ({"metrics": ["porosity_pct"], "baseline_from": 0, "baseline_to": 30}, "baseline_from"),
    ({"metrics": ["porosity_pct"], "baseline_from": 1, "baseline_to": 1}, "at least 2"),
    ({"metrics": ["no_such_metric"], "baseline_from": 1, "baseline_to": 30}, "no_such_metric"),
    ({"metrics": ["porosity_pct"], "rule_set": "x", "baseline_from": 1, "baseline_to": 30}, "rule_set"),
])
def test_settings_that_cannot_be_saved_are_400_and_leave_no_file(client, drift_state, body, says):
    answer = client.post("/api/trends/settings", json=body)
    assert answer.status_code == 400 and says in answer.json()["error"]
    assert not (drift_state / "ui" / "spc.json").exists()


def test_an_oversized_or_non_json_settings_body_is_refused(client):
    assert "at most 16384 are taken" in client.post(
        "/api/trends/settings", content=b"{" + b" " * 20_000 + b"}",
        headers={"Content-Type": "application/json"}).json()["error"]
    assert "not JSON" in client.post("/api/trends/settings", content=b"{nope",
                                     headers={"Content-Type": "application/json"}).json()["error"]


def test_no_journal_yet_is_503_saying_so(tmp_path):
    answer = TestClient(create_app(make_context(tmp_path / "empty"))).get("/api/trends/series?metric=porosity_pct")
    assert answer.status_code == 503 and "no journal" in answer.json()["error"]


def test_a_damaged_settings_file_is_reported_not_a_crash(client, drift_state):
    (drift_state / "ui").mkdir()
    (drift_state / "ui" / "spc.json").write_text("{\"version\": 1}")
    view = client.get("/api/trends/alarms").json()
    assert view["settings"] is None and "not a valid spc.json" in view["settings_problem"]
    assert client.get("/api/trends/series?metric=porosity_pct").json()["limits"]["source"] == "provisional"


# ---- the page in a real browser ----------------------------------------------------------------


def chart_x(page, metric: str, seq: float) -> float:
    """Page x (CSS px) of `seq` on the chart of `metric`."""
    return page.evaluate("([metric, seq]) => { const plot = trends.charts.get(metric).plot;"
                         " return plot.over.getBoundingClientRect().left + plot.valToPos(seq, 'x'); }", [metric, seq])


def chart_y(page, metric: str, value: float) -> float:
    return page.evaluate("([metric, value]) => { const plot = trends.charts.get(metric).plot;"
                         " return plot.over.getBoundingClientRect().top + plot.valToPos(value, 'y'); }", [metric, value])


def keep_frame(context, seq: int) -> None:
    """Put frame `seq`'s files in the UI's frame store, as the Live page keeps the daemon's recent frames."""
    sample = synth.generate_v3(384, 512, seed=seq)
    message = context.journal.get(seq)
    metrics = {name: parameter["value"] for name, parameter in message["parameters"].items()}
    context.frames.put(f"seq-{seq}", image=sample.image, enhanced=sample.image, mask=sample.mask,
                       overlay=render_overlay(sample.image, sample.mask, metrics), meta=message)


def test_trends_page_marks_the_planted_drift_and_a_dragged_baseline_becomes_the_alarm_settings(drift_state, page):
    context = make_context(drift_state, config=Config(station=STATION))
    keep_frame(context, 70)
    with WebServer(context, "127.0.0.1", 0) as server:
        page.goto(f"{server.url}/trends")
        page.wait_for_function("Number(document.body.dataset.loaded || 0) >= 2")
        assert page.locator(".chart-card").evaluate_all("cards => cards.map(c => c.dataset.metric)") == [
            "porosity_pct", "unmelted_fraction_pct"]
        assert "first 20 frames shown" in page.locator("#baseline-source").inner_text()
        assert "Offline (inspectd ui)" in page.locator("#alarm-note").inner_text()

        # Drag across frames 1..30 of the porosity chart: that is the baseline.
        y = chart_y(page, "porosity_pct", float(POROSITY[:30].mean()))
        page.mouse.move(chart_x(page, "porosity_pct", 0.6), y)
        page.mouse.down()
        page.mouse.move(chart_x(page, "porosity_pct", 15), y, steps=5)
        page.mouse.move(chart_x(page, "porosity_pct", 30.4), y, steps=5)
        page.mouse.up()
        page.wait_for_function("document.getElementById('baseline-source').textContent.startsWith('chosen')")
        assert (page.input_value("#baseline-from"), page.input_value("#baseline-to")) == ("1", "30")
        loaded = int(page.evaluate("document.body.dataset.loaded"))
        page.wait_for_function(f"Number(document.body.dataset.loaded) >= {loaded + 2}"
                               " || document.querySelector('.chart-card .limits-line').textContent.includes('chosen')")

        page.click("#save")
        page.wait_for_function("document.getElementById('baseline-source').textContent.startsWith('saved')")
        page.wait_for_function("document.querySelectorAll('#alarm-list li[data-rule]').length > 0")
        porosity = page.locator(".chart-card[data-metric=porosity_pct]")
        porosity.locator(".limits-line", has_text="saved for alarms").wait_for()
        rules = porosity.locator(".breaks button").evaluate_all("buttons => buttons.map(b => b.dataset.rule)")
        assert {"N1", "N2", "N3", "N5", "N6"} <= set(rules)
        trend = porosity.locator(".breaks button[data-rule=N3]").inner_text()
        assert "↗" in trend and trend.endswith("–74")
        unmelted = page.locator(".chart-card[data-metric=unmelted_fraction_pct] .breaks").inner_text()
        assert "No rule break" in unmelted
        alarm_rules = page.locator("#alarm-list li").evaluate_all("items => items.map(i => i.dataset.rule)")
        assert "N3" in alarm_rules and "not published" in page.locator("#alarm-list li").first.inner_text()
        saved = json.loads((drift_state / "ui" / "spc.json").read_text())
        assert sorted(saved["metrics"]) == ["porosity_pct", "unmelted_fraction_pct"]
        assert (saved["baseline"]["first_seq"], saved["baseline"]["last_seq"]) == (1, 30)

        # Clicking a point of the drift opens that frame.
        page.mouse.move(chart_x(page, "porosity_pct", 70), chart_y(page, "porosity_pct", float(POROSITY[69])))
        page.mouse.down()
        page.mouse.up()
        page.locator("#frame-panel h2", has_text="Frame seq 70").wait_for()
        assert page.get_attribute("#open-review", "href") == "/review?key=seq-70"
        assert "N3" in page.locator("#frame-panel table").inner_text()
        page.wait_for_function("document.querySelector('#frame-panel img') && "
                               "document.querySelector('#frame-panel img').naturalWidth === 512")

        page.mouse.move(chart_x(page, "porosity_pct", 66), chart_y(page, "porosity_pct", float(POROSITY[65])))
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "trends.png"), full_page=True)
