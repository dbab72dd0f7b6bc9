"""The Analyse page: uploads analysed as `inspectd analyze` does, refused cleanly when bad, downloadable.

API tests drive the app in-process; the page tests upload through a real chromium and read
the downloads back with openpyxl and csv.
"""

from __future__ import annotations

import io
import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import openpyxl
import pytest
import tifffile
from starlette.testclient import TestClient

from inspectd import cli
from inspectd.config import Config
from inspectd.data.synth import generate_v3
from inspectd.reports.workbook import (
    FRAMES_TABLE,
    REGION_COLUMNS,
    REGIONS_TABLE,
    SAMPLE_TABLE,
    read_csv_tables,
)
from inspectd.web import analyse
from inspectd.web.app import create_app
from inspectd.web.server import WebServer
from tests.web.conftest import SCREENSHOTS, make_context


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory) -> Path:
    """Micrographs from the v3 generator (what `inspectd synth --generator v3` writes), as files."""
    folder = tmp_path_factory.mktemp("frames")
    for seed in (21, 22, 23):
        cv2.imwrite(str(folder / f"coating_{seed}.png"), generate_v3(384, 512, seed=seed).image)
    pages = [generate_v3(256, 256, seed=seed).image for seed in (31, 32, 33)]
    tifffile.imwrite(folder / "stack.tif", np.stack(pages), photometric="minisblack")
    ok, jpeg = cv2.imencode(".jpg", generate_v3(256, 256, seed=41).image)
    assert ok
    (folder / "truncated.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) // 2])
    return folder


def _client(tmp_path: Path, config: Config | None = None) -> TestClient:
    return TestClient(create_app(make_context(tmp_path / "state", config=config)))


def _upload(client: TestClient, *paths: Path, engine: str | None = None, name: str | None = None):
    files = [("file", (name or path.name, path.read_bytes(), "application/octet-stream")) for path in paths]
    return client.post("/api/analyze", files=files, data={"engine": engine} if engine else None)


def _sheet_rows(sheet) -> list[dict]:
    values = list(sheet.iter_rows(values_only=True))
    return [dict(zip(values[0], row, strict=True)) for row in values[1:]]


def _check_workbook_matches(xlsx_bytes: bytes, answer: dict) -> None:
    """Every frame metric, the region count and every shown region's values are those of the JSON."""
    book = openpyxl.load_workbook(io.BytesIO(xlsx_bytes))
    assert book.sheetnames == [FRAMES_TABLE, REGIONS_TABLE, SAMPLE_TABLE]
    frames = _sheet_rows(book[FRAMES_TABLE])
    assert [row["stem"] for row in frames] == [field["stem"] for field in answer["fields"]]
    regions = _sheet_rows(book[REGIONS_TABLE])
    for row, field in zip(frames, answer["fields"], strict=True):
        record = field["record"]
        assert row["verdict"] == record["verdict"] and row["regions_count"] == record["regions_count"]
        for name, value in record["metrics"].items():
            assert row[name] == pytest.approx(value, rel=1e-15, abs=0), name
        own = [r for r in regions if r["stem"] == field["stem"]]
        assert len(own) == record["regions_count"] == field["regions_total"]
        for sheet_row, region in zip(own, field["regions"], strict=False):
            for column in REGION_COLUMNS[2:]:
                expected = region[column]
                assert sheet_row[column] == (pytest.approx(expected, rel=1e-15) if isinstance(expected, float)
                                             else expected), column
    sample = {row["metric"]: row for row in _sheet_rows(book[SAMPLE_TABLE])}
    for name, stat in answer["sample"].items():
        assert sample[name]["n"] == stat["n"] and sample[name]["mean"] == pytest.approx(stat["mean"], rel=1e-15)


def _check_csv_matches(csv_text: str, answer: dict, folder: Path) -> None:
    (folder / "download.csv").write_text(csv_text, encoding="utf-8")
    tables = read_csv_tables(folder / "download.csv")
    regions = tables[REGIONS_TABLE]
    for row, field in zip(tables[FRAMES_TABLE], answer["fields"], strict=True):
        for name, value in field["record"]["metrics"].items():
            assert (row[name] == "") if value is None else float(row[name]) == value, name
        own = [r for r in regions if r["stem"] == field["stem"]]
        assert len(own) == field["regions_total"]
        for csv_row, region in zip(own, field["regions"], strict=False):
            assert csv_row["class_name"] == region["class_name"]
            assert all(float(csv_row[c]) == region[c] for c in REGION_COLUMNS[2:]
                       if c != "class_name" and region[c] is not None)


# ---- the API -------------------------------------------------------------------------------------


def test_an_upload_gets_the_record_inspectd_analyze_writes(tmp_path, frames_dir):
    frame = frames_dir / "coating_21.png"
    client = _client(tmp_path)
    answer = _upload(client, frame).json()
    assert len(answer["id"]) == 32 and int(answer["id"], 16) >= 0
    [field] = answer["fields"]
    record = field["record"]

    out = tmp_path / "cli"
    assert cli.main(["analyze", str(frame), "--out", str(out), "--quiet"]) in (0, 1)
    written = json.loads((out / "coating_21.json").read_text(encoding="utf-8"))
    for key in ("verdict", "reason", "failed_rules", "warnings", "confidence", "out_of_distribution", "ood",
                "image", "metrics", "regions_count", "engine", "rules", "um_per_px", "schema_version"):
        assert record[key] == written[key], key
    assert record["source"] == "coating_21.png" and field["stem"] == "coating_21"
    cli_regions = (out / "coating_21_regions.csv").read_text(encoding="utf-8").splitlines()
    assert len(cli_regions) - 1 == field["regions_total"] == record["regions_count"] > 0

    xlsx = client.get(answer["downloads"]["xlsx"])
    assert xlsx.status_code == 200 and "attachment" in xlsx.headers["content-disposition"]
    _check_workbook_matches(xlsx.content, answer)
    _check_csv_matches(client.get(answer["downloads"]["csv"]).text, answer, tmp_path)

    assert field["overlay"] == f"/api/frames/{field['key']}/overlay.png"
    overlay = client.get(field["overlay"])
    assert overlay.headers["content-type"] == "image/png"
    shown = cv2.imdecode(np.frombuffer(overlay.content, np.uint8), cv2.IMREAD_COLOR)
    assert shown.shape == (384, 512, 3)
    assert client.get(f"/api/analyze/{answer['id']}").json() == answer
    assert field["review"] == f"/review?key={field['key']}" and field["key"] == f"upload-{answer['id']}-0"
    stored = tmp_path / "state" / "ui" / "frames" / field["key"]
    assert sorted(p.name for p in stored.iterdir()) == ["enhanced.png", "image.png", "mask.png", "meta.json",
                                                        "overlay.png"]


def test_a_multi_page_tiff_is_one_field_per_page(tmp_path, frames_dir):
    client = _client(tmp_path)
    answer = _upload(client, frames_dir / "stack.tif", frames_dir / "coating_22.png").json()
    assert [f["stem"] for f in answer["fields"]] == ["stack_field0", "stack_field1", "stack_field2", "coating_22"]
    assert [f["field_index"] for f in answer["fields"]] == [0, 1, 2, 0]
    assert [f["record"]["field_index"] for f in answer["fields"]] == [0, 1, 2, 0]
    assert len({f["key"] for f in answer["fields"]}) == 4
    analysed = sum(f["record"]["verdict"] in ("PASS", "FAIL") for f in answer["fields"])
    assert answer["sample"]["porosity_pct"]["n"] == analysed >= 2
    _check_workbook_matches(client.get(answer["downloads"]["xlsx"]).content, answer)


@pytest.mark.parametrize("engine", ["classical", "unet"])
def test_the_chosen_engine_analyses_the_upload(tmp_path, frames_dir, engine):
    answer = _upload(_client(tmp_path), frames_dir / "coating_23.png", engine=engine).json()
    record = answer["fields"][0]["record"]
    # One image: the answer is its `<stem>.json` content plus the page's keys.
    assert {key: answer[key] for key in record} == record and answer["id"]
    assert record["engine"]["name"] == engine
    assert record["config"]["segment"]["engine"] == engine
    if engine == "unet":
        assert record["engine"]["model_hash"]  # the bundled model
    assert record["verdict"] in ("PASS", "FAIL") and record["metrics"]["melted_fraction_pct"] is not None


def test_after_the_station_swaps_its_model_uploads_are_analysed_with_the_new_one(tmp_path, frames_dir):
    # `Daemon.swap_model` changes the config the server shares with the daemon (segment.unet.model);
    # an upload analysed after it must use the model the line now runs, not the one cached before.
    from inspectd.analysis.engines.unet import bundled_model_path, file_sha256

    first, second = bundled_model_path("fp32"), bundled_model_path("int8")
    config = Config.model_validate({"segment": {"engine": "unet", "unet": {"model": str(first)}}})
    context = make_context(tmp_path / "state", config=config)
    client = TestClient(create_app(context))
    frame = frames_dir / "coating_23.png"
    before = _upload(client, frame, engine="unet").json()["fields"][0]["record"]
    assert before["engine"]["model_hash"] == file_sha256(first)
    unet = context.config.segment.unet.model_copy(update={"model": second.resolve(), "engine_plan": None})
    context.config.segment = context.config.segment.model_copy(update={"unet": unet})
    after = _upload(client, frame, engine="unet").json()["fields"][0]["record"]
    assert after["engine"]["model_hash"] == file_sha256(second)


def test_an_unknown_engine_is_refused(tmp_path, frames_dir):
    answer = _upload(_client(tmp_path), frames_dir / "coating_23.png", engine="magic")
    assert answer.status_code == 400 and "classical, unet" in answer.json()["error"]


def test_an_oversized_upload_is_refused_while_it_streams_and_the_next_one_works(tmp_path, frames_dir):
    config = Config.model_validate({"input": {"max_file_bytes": 150_000}})
    client = _client(tmp_path, config)
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(400_000))
    refused = _upload(client, big)
    assert refused.status_code == 413
    assert refused.json()["error"] == ("big.png: the file is over the upload limit of 150,000 bytes "
                                       "(input.max_file_bytes)")
    assert list((tmp_path / "state" / "ui" / "uploads").iterdir()) == []  # nothing kept of it
    assert not (tmp_path / "state" / "ui" / "analyses").exists()
    assert _upload(client, frames_dir / "coating_21.png").status_code == 200


def test_an_image_over_the_pixel_limit_is_refused_in_one_line(tmp_path, frames_dir):
    config = Config.model_validate({"input": {"max_pixels": 100_000}})
    refused = _upload(_client(tmp_path, config), frames_dir / "coating_21.png")
    assert refused.status_code == 413
    error = refused.json()["error"]
    assert error.startswith("coating_21.png: ") and "max_pixels" in error and "\n" not in error


def test_a_truncated_jpeg_is_refused_and_nothing_is_analysed(tmp_path, frames_dir):
    client = _client(tmp_path)
    refused = _upload(client, frames_dir / "coating_21.png", frames_dir / "truncated.jpg")
    assert refused.status_code == 422
    assert refused.json()["error"].startswith("truncated.jpg: truncated JPEG")
    assert not (tmp_path / "state" / "ui" / "frames").exists()  # the good file was not analysed either
    assert _upload(client, frames_dir / "coating_21.png").status_code == 200


@pytest.mark.parametrize("path", ["/api/analyze/0123456789abcdef", "/api/analyze/0123456789abcdef.xlsx",
                                  "/api/analyze/0123456789abcdef.csv"])
def test_an_unknown_analysis_is_404(tmp_path, path):
    answer = _client(tmp_path).get(path)
    assert answer.status_code == 404 and answer.json()["error"]


@pytest.mark.parametrize("analysis_id", ["ABCDEF0123", "abc", "...", "0123456789abcdeg", "%2e%2e", "journal.sqlite3"])
def test_a_malformed_id_is_refused(tmp_path, analysis_id):
    client = _client(tmp_path)
    for path in (f"/api/analyze/{analysis_id}.xlsx", f"/api/analyze/{analysis_id}.csv", f"/api/analyze/{analysis_id}"):
        answer = client.get(path)
        assert answer.status_code == 400, path
        assert answer.json()["error"].startswith("not an analysis"), path


def test_an_upload_name_never_becomes_a_path(tmp_path, frames_dir):
    client = _client(tmp_path)
    answer = _upload(client, frames_dir / "coating_21.png", name="../../journal.sqlite3\u202e=cmd|x.png").json()
    field = answer["fields"][0]
    assert field["file"] == "journal.sqlite3\\u202e=cmd|x.png" and field["stem"] == "journal.sqlite3_u202e_cmd_x"
    state = tmp_path / "state"
    names = {p.relative_to(state).as_posix() for p in state.rglob("*")}
    assert names == {"ui", "ui/uploads", "ui/analyses", f"ui/analyses/{answer['id']}",
                     *(f"ui/analyses/{answer['id']}/analysis.{kind}" for kind in ("json", "xlsx", "csv")),
                     "ui/frames", f"ui/frames/{field['key']}",
                     *(f"ui/frames/{field['key']}/{name}" for name in ("image.png", "enhanced.png", "mask.png",
                                                                        "overlay.png", "meta.json"))}
    disposition = client.get(answer["downloads"]["xlsx"]).headers["content-disposition"]
    assert disposition == f'attachment; filename="inspectd-journal.sqlite3_u202e_cmd_x-{answer["id"][:8]}.xlsx"'


def test_two_files_of_the_same_name_get_their_own_stems(tmp_path, frames_dir):
    frame = frames_dir / "coating_21.png"
    answer = _upload(_client(tmp_path), frame, frame).json()
    assert [f["stem"] for f in answer["fields"]] == ["coating_21", "coating_21_2"]


@pytest.mark.parametrize(("request_kwargs", "status", "words"), [
    ({"data": {"engine": "unet"}}, 400, "multipart"),
    ({"files": [("picture", ("a.png", b"x", "image/png"))]}, 400, "field 'file'"),
    ({"files": [("engine", (None, "classical"))]}, 400, "no micrograph"),
])
def test_a_request_without_a_micrograph_is_refused(tmp_path, request_kwargs, status, words):
    answer = _client(tmp_path).post("/api/analyze", **request_kwargs)
    assert answer.status_code == status and words in answer.json()["error"]


def test_an_upload_of_many_form_fields_is_refused_before_they_pile_up(tmp_path, frames_dir):
    # Each text field is short, but their number is what a chunked upload could grow without end.
    fields = [(f"note{n:05d}" + "x" * 2000, (None, "v")) for n in range(2000)]
    files = [("file", ("coating_21.png", (frames_dir / "coating_21.png").read_bytes(), "image/png")), *fields]
    answer = _client(tmp_path).post("/api/analyze", files=files)
    assert answer.status_code == 400
    assert answer.json()["error"] == f"at most {analyse.MAX_TEXT_FIELDS} form fields besides the files per upload"


def test_only_the_latest_analyses_are_kept(tmp_path, frames_dir, monkeypatch):
    monkeypatch.setattr(analyse, "KEPT_ANALYSES", 2)
    client = _client(tmp_path)
    ids = [_upload(client, frames_dir / "coating_21.png").json()["id"] for _ in range(3)]
    assert client.get(f"/api/analyze/{ids[0]}.xlsx").status_code == 404
    assert all(client.get(f"/api/analyze/{i}.xlsx").status_code == 200 for i in ids[1:])


def test_uploads_at_the_same_time_are_analysed_one_after_the_other(tmp_path, frames_dir):
    client = _client(tmp_path)
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda path: _upload(client, path), sorted(frames_dir.glob("coating_*.png"))))
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert len({a.json()["id"] for a in answers}) == 3


def test_uploads_beyond_those_allowed_to_wait_are_refused_as_busy(tmp_path, frames_dir, monkeypatch):
    monkeypatch.setattr(analyse, "MAX_WAITING", 0)
    refused = _upload(_client(tmp_path), frames_dir / "coating_21.png")
    assert refused.status_code == 503 and refused.json()["error"].startswith("busy:")


def test_the_limits_say_what_an_upload_may_be(tmp_path):
    limits = _client(tmp_path, Config.model_validate({"input": {"max_file_bytes": 5_000_000}})).get(
        "/api/analyze/limits").json()
    assert limits["max_file_bytes"] == 5_000_000 and limits["engines"] == ["classical", "unet"]


# ---- the page in a real browser ------------------------------------------------------------------


def _screenshot_frame(frames_dir: Path) -> Path:
    # A generated frame: the shipped screenshot must not carry the real sample tiles.
    return frames_dir / "coating_21.png"


def _fetch_json(url: str) -> dict:
    with urllib.request.urlopen(url) as answer:  # noqa: S310 - the test's own server on 127.0.0.1
        return json.load(answer)


def test_page_upload_shows_the_overlay_and_downloads_the_same_numbers(page, offline_server, frames_dir, tmp_path):
    frame = _screenshot_frame(frames_dir)
    page.goto(f"{offline_server.url}/analyse")
    page.select_option("#engine", "classical")
    page.set_input_files("#files", str(frame))
    page.click("#analyse-button")
    card = page.locator("section.field")
    card.wait_for()
    page.wait_for_function("document.querySelector('img.overlay') && document.querySelector('img.overlay').complete "
                           "&& document.querySelector('img.overlay').naturalWidth > 0")
    analysis_id = page.evaluate("new URLSearchParams(location.search).get('id')")
    answer = _fetch_json(f"{offline_server.url}/api/analyze/{analysis_id}")
    [field] = answer["fields"]
    width = page.evaluate("document.querySelector('img.overlay').naturalWidth")
    assert width == field["record"]["image"]["width"]
    assert card.locator(".badge").inner_text() == field["record"]["verdict"]
    assert card.locator("a.review").get_attribute("href") == f"/review?key={field['key']}"
    assert card.locator(".scroll.regions tbody tr").count() == min(field["regions_total"], analyse.SHOWN_REGIONS)
    shown_porosity = card.locator(".scroll.metrics tr", has_text="porosity_pct").first.locator("td.num").inner_text()
    assert float(shown_porosity) == pytest.approx(field["record"]["porosity_pct"], abs=0.01)

    with page.expect_download() as xlsx_download:
        page.click("a.download-xlsx")
    _check_workbook_matches(Path(xlsx_download.value.path()).read_bytes(), answer)
    with page.expect_download() as csv_download:
        page.click("a.download-csv")
    _check_csv_matches(Path(csv_download.value.path()).read_text(encoding="utf-8"), answer, tmp_path)

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "analyse.png"), full_page=True)

    page.reload()  # the result stays at its address
    page.locator("section.field").wait_for()
    assert page.locator("section.field .badge").inner_text() == field["record"]["verdict"]


@pytest.fixture
def small_limit_server(tmp_path):
    config = Config.model_validate({"input": {"max_file_bytes": 150_000}})
    with WebServer(make_context(tmp_path / "state", config=config), "127.0.0.1", 0) as server:
        yield server


def test_page_shows_why_an_upload_is_refused_and_the_next_one_works(page, small_limit_server, frames_dir):
    page.goto(f"{small_limit_server.url}/analyse")
    page.set_input_files("#files", files=[{"name": "huge.tif", "mimeType": "image/tiff",
                                           "buffer": b"II*\x00" + bytes(2_000_000)}])
    page.click("#analyse-button")
    message = page.locator("#message .message.error")
    message.wait_for()
    assert message.inner_text() == "huge.tif: the file is over the upload limit of 150,000 bytes (input.max_file_bytes)"

    page.set_input_files("#files", str(frames_dir / "truncated.jpg"))
    page.click("#analyse-button")
    page.locator("#message .message.error", has_text="truncated JPEG").wait_for()
    assert page.locator("#message .message.error").inner_text().startswith("truncated.jpg: truncated JPEG")
    assert page.locator("section.field").count() == 0

    page.set_input_files("#files", str(frames_dir / "coating_22.png"))
    page.click("#analyse-button")
    page.locator("section.field img.overlay").wait_for()
    assert page.locator("#message").inner_text() == ""


def test_page_shows_several_fields_and_their_sample_statistics(page, offline_server, frames_dir):
    page.goto(f"{offline_server.url}/analyse")
    page.set_input_files("#files", str(frames_dir / "stack.tif"))
    page.click("#analyse-button")
    page.locator("section.field").nth(2).wait_for()
    assert page.locator("section.field").count() == 3
    assert "3 fields" in page.locator(".summary-card").inner_text()
    assert page.locator(".summary-card table tbody tr").count() == 3

