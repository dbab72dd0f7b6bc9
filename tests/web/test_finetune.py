"""Fine-tuning from the Review page: start -> progress -> before/after scores -> confirmed activation.

Real all the way: fields labelled through the Review API from generated v3 frames, a real
`inspectd train --init` child process (a tiny run: one epoch of 8 tiles), `inspectd
evaluate` on the held-out field, and under a running `Daemon` the hot swap, after which
the next verdict carries the new model's hash. Offline (`inspectd ui`) the page says
which config key activates the model and where its file is.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import pytest
from starlette.testclient import TestClient

from inspectd.analysis.analyzer import Analyzer
from inspectd.analysis.engines.unet import bundled_model_path, file_sha256
from inspectd.data.synth import generate_v3
from inspectd.types import Frame
from inspectd.web.app import create_app
from inspectd.web.auth import AccessGuard
from inspectd.web.context import WebContext
from inspectd.web.finetune import AREA, FineTuneOptions, FineTuner
from inspectd.web.server import WebServer
from tests.daemon.test_model_swap import unet_daemon, wait_for_verdicts
from tests.web.conftest import SCREENSHOTS, make_context

pytest.importorskip("torch")

TINY_RUN = FineTuneOptions(extra_train_args=("--epochs", "1", "--tiles-per-epoch", "8", "--batch-size", "4",
                                             "--replay", "0"))


def label_fields(client: TestClient, context: WebContext, analyzer: Analyzer, seeds: tuple[int, ...]) -> None:
    """Keep generated frames with the engine's proposal, then save their true masks as the corrections."""
    for index, seed in enumerate(seeds, start=1):
        sample = generate_v3(256, 256, seed)
        result = analyzer.analyze(Frame(sample.image, f"field-{seed}.png"))
        context.frames.put(f"seq-{index}", image=sample.image, enhanced=result.enhanced, mask=result.mask,
                           overlay=None, meta={"seq": index, "source": f"field-{seed}.png"})
        answer = client.post(f"/api/review/labels/seq-{index}", content=cv2.imencode(".png", sample.mask)[1].tobytes(),
                             headers={"Content-Type": "image/png"})
        assert answer.status_code == 200, answer.text


def run_to_the_end(client: TestClient) -> tuple[dict, list[dict]]:
    started = client.post("/api/finetune")
    assert started.status_code == 202, started.text
    again = client.post("/api/finetune")
    assert again.status_code == 409 and "already" in again.json()["error"]
    seen = []
    deadline = time.monotonic() + 600  # a hang guard only
    while time.monotonic() < deadline:
        status = client.get("/api/finetune").json()
        seen.append(status)
        if status["state"] != "running":
            return status, seen
        time.sleep(0.1)
    pytest.fail("the fine-tuning run did not finish")


def check_finished_run(status: dict, seen: list[dict], before_hash: str) -> Path:
    assert status["state"] == "done", status.get("message")
    assert status["progress"] == 1.0
    if len(seen) > 1:  # the run as polled
        progress = [s["progress"] for s in seen]
        assert progress == sorted(progress)  # the bar never goes back
        assert any(0.0 < p < 1.0 for p in progress)
        assert {"training", "scoring"} <= {s["phase"] for s in seen if s["state"] == "running"}
    assert status["fields"] == {"train": 1, "heldout": 1}
    assert any("epoch 1/1" in line for line in status["log_tail"])
    scores = status["scores"]
    assert scores["n_images"] == 1 and scores["metric"] == "IoU"
    rows = {row["class"]: row for row in scores["rows"]}
    assert set(rows) == {"melted", "unmelted", "pore", "pixel accuracy"}
    for row in rows.values():
        assert 0.0 <= row["before"] <= 1.0 and 0.0 <= row["after"] <= 1.0
        assert row["change"] == pytest.approx(row["after"] - row["before"])
    model = Path(status["model"]["path"])
    assert model.is_file() and model.with_suffix(".json").is_file()
    assert scores["before_hash"] == before_hash
    assert scores["after_hash"] == status["model"]["sha256"] == file_sha256(model)
    return model


def test_under_the_daemon_a_confirmed_model_is_swapped_in_and_the_next_verdict_carries_its_hash(tmp_path) -> None:
    daemon = unet_daemon(tmp_path)
    try:
        context = WebContext(daemon.cfg, Path(daemon.cfg.state_dir), AccessGuard(None), daemon=daemon)
        context.areas[AREA] = FineTuner(context, TINY_RUN)
        client = TestClient(create_app(context))
        label_fields(client, context, daemon.analyzer, (601, 602))
        idle = client.get("/api/finetune").json()
        assert idle["state"] == "idle" and idle["mode"] == "daemon"
        assert idle["active"]["init"] == "bundled" and idle["active"]["model_hash"] == file_sha256(bundled_model_path())

        status, seen = run_to_the_end(client)
        model = check_finished_run(status, seen, file_sha256(bundled_model_path()))
        # Not active until confirmed.
        assert daemon.status_facts()["engine"]["model_hash"] == file_sha256(bundled_model_path())

        activated = client.post("/api/finetune/activate")
        assert activated.status_code == 200, activated.text
        new_hash = file_sha256(model)
        assert activated.json()["state"] == "activated"
        assert activated.json()["activation"]["engine"]["model_hash"] == new_hash
        assert f"segment.unet.model: {model}" in activated.json()["activation"]["note"]
        assert daemon.status_facts()["engine"]["model_hash"] == new_hash

        image = generate_v3(256, 256, 777).image
        cv2.imwrite(str(Path(daemon.cfg.sources[0].path) / "after-swap.png"), image)
        messages = wait_for_verdicts(daemon, 1)
        assert [m["engine"]["model_hash"] for m in messages] == [new_hash]
        # A fine-tuning started now starts from the active model.
        assert client.get("/api/finetune").json()["active"]["init"] == str(model)
    finally:
        context.close()
        daemon.stop()
        daemon.context.term()


def test_offline_the_page_names_the_config_key_and_the_model_file(page, tmp_path) -> None:
    context = make_context(tmp_path / "state")
    context.areas[AREA] = FineTuner(context, TINY_RUN)
    client = TestClient(create_app(context))
    refused = client.post("/api/finetune")
    assert refused.status_code == 400 and "at least one training field and one held-out field" in refused.json()["error"]
    label_fields(client, context, Analyzer(context.config), (611, 612))
    with WebServer(context, "127.0.0.1", 0) as server:
        page.goto(f"{server.url}/review?key=seq-2")
        page.wait_for_selector("#canvas[data-ready='1']")
        page.click("#finetune-start")
        page.wait_for_selector("#finetune[data-state='running']")
        page.wait_for_function("() => { const bar = document.getElementById('finetune-bar');"
                               " return bar.value > 0 && bar.value < 1; }", timeout=600_000)
        page.wait_for_selector("#finetune[data-state='done']", timeout=600_000)
        status = client.get("/api/finetune").json()
        model = check_finished_run(status, [status], status["scores"]["before_hash"])
        hint = page.inner_text("#finetune-activate")
        assert f"segment.unet.model: {model}" in hint and "segment.engine: unet" in hint
        assert page.locator("#finetune-activate-button").count() == 0
        assert page.locator("#scores tbody tr").count() == 4
        page.locator("#finetune").screenshot(path=str(SCREENSHOTS / "review-finetune.png"))
    refused = client.post("/api/finetune/activate")
    assert refused.status_code == 409 and f"segment.unet.model: {model}" in refused.json()["error"]
    # The station runs the classical engine here: "before" is that engine, scored on the same field.
    assert status["before"]["engine"] == "classical" and status["scores"]["before_hash"] is None
    context.close()
