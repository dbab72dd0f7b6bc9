"""The Review page: corrections made in a real chromium land pixel for pixel in the labelled set.

Frames are `inspectd synth --generator v3` micrographs segmented by the real `Analyzer`
and kept in the real FrameStore, as the Live and Analyse pages keep them.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from starlette.testclient import TestClient

from inspectd.analysis.analyzer import Analyzer
from inspectd.config import Config
from inspectd.data.labelled import find_pairs
from inspectd.data.labelled_set import LabelledSet
from inspectd.data.synth import generate_v3
from inspectd.types import Frame
from inspectd.web.app import create_app
from inspectd.web.server import WebServer
from tests.web.conftest import SCREENSHOTS, make_context

PORE, UNMELTED, MELTED = 2, 1, 0


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer(Config())


def keep_frame(context, analyzer: Analyzer, key: str, seed: int, height: int = 256, width: int = 256) -> np.ndarray:
    """Segment one generated micrograph and keep it in the context's FrameStore as `key`; returns its mask."""
    sample = generate_v3(height, width, seed)
    result = analyzer.analyze(Frame(sample.image, f"synthetic-{seed}.png"))
    assert result.mask is not None
    context.frames.put(key, image=sample.image, enhanced=result.enhanced, mask=result.mask, overlay=None,
                       meta={"seq": int(key.split("-")[1]), "verdict": result.verdict.result.value,
                             "source": f"/inbox/synthetic-{seed}.png",
                             "engine": {"name": analyzer.engine.name, "model_hash": analyzer.engine.model_hash}})
    return result.mask


def saved_mask(state: Path, key: str) -> np.ndarray:
    field = LabelledSet(state / "ui" / "labels").get(key)
    assert field is not None, f"{key} was not saved"
    return cv2.imread(str(field.mask_path), cv2.IMREAD_UNCHANGED)


def capsule(shape: tuple[int, int], a: tuple[int, int], b: tuple[int, int], size: int) -> np.ndarray:
    """Pixels whose centre is within size/2 of the segment a-b: the brush geometry, computed independently."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    (ax, ay), (bx, by) = a, b
    dx, dy = bx - ax, by - ay
    t = np.clip(((xs - ax) * dx + (ys - ay) * dy) / float(dx * dx + dy * dy), 0.0, 1.0)
    distance = np.hypot(xs - (ax + t * dx), ys - (ay + t * dy))
    return distance <= size / 2 + 1e-9


def open_review(page, server: WebServer, key: str):
    page.goto(f"{server.url}/review?key={key}")
    page.wait_for_selector("#canvas[data-ready='1']")
    assert page.inner_text("#zoom-value") == "100 %"
    return page.locator("#canvas").bounding_box()


def choose(page, name: str, value: str) -> None:
    page.locator(f"input[name='{name}'][value='{value}']").check(force=True)


def set_size(page, size: int) -> None:
    page.eval_on_selector("#size", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", size)


def stroke(page, box, a: tuple[int, int], b: tuple[int, int]) -> None:
    """Press at the centre of pixel a, move once to the centre of pixel b, release (zoom 1, no pan)."""
    page.mouse.move(box["x"] + a[0] + 0.5, box["y"] + a[1] + 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + b[0] + 0.5, box["y"] + b[1] + 0.5, steps=1)
    page.mouse.up()


def save(page, count: int) -> None:
    page.click("#save")
    page.wait_for_function("n => document.querySelectorAll('#labels tbody tr').length === n", arg=count)
    page.wait_for_selector("#save-status .message.info")


@pytest.fixture
def served(tmp_path, analyzer):
    context = make_context(tmp_path / "state")
    masks = {f"seq-{n}": keep_frame(context, analyzer, f"seq-{n}", seed=300 + n) for n in (1, 2, 3)}
    with WebServer(context, "127.0.0.1", 0) as server:
        yield server, context, masks
    context.close()


def test_a_brush_stroke_changes_exactly_the_pixels_under_the_brush(page, served) -> None:
    server, context, masks = served
    box = open_review(page, server, "seq-1")
    choose(page, "cls", str(PORE))
    set_size(page, 7)
    a, b = (40, 50), (120, 91)
    stroke(page, box, a, b)
    save(page, 1)

    before = masks["seq-1"]
    expected = before.copy()
    expected[capsule(before.shape, a, b, 7)] = PORE
    after = saved_mask(context.state_dir, "seq-1")
    changed = np.argwhere(after != before)
    assert changed.size, "the stroke changed nothing"
    assert set(map(tuple, changed)) == set(map(tuple, np.argwhere(expected != before)))
    assert np.array_equal(after, expected)
    # The image saved beside it is the frame's decoded pixels, what training reads.
    image = cv2.imread(str(LabelledSet(context.state_dir / "ui" / "labels").get("seq-1").image_path),
                       cv2.IMREAD_UNCHANGED)
    assert np.array_equal(image, cv2.imread(str(context.frames.path("seq-1", "image.png")), cv2.IMREAD_UNCHANGED))
    assert "px differ from the engine's proposal" in page.inner_text("#save-status")


def test_fill_takes_the_connected_region_and_undo_steps_back(page, served) -> None:
    server, context, masks = served
    before = masks["seq-2"]
    count, components = cv2.connectedComponents((before == UNMELTED).astype(np.uint8), connectivity=4)
    sizes = np.bincount(components.ravel(), minlength=count)
    sizes[0] = 0
    region = components == int(sizes.argmax())
    y, x = (int(v) for v in np.argwhere(region)[len(np.argwhere(region)) // 2])
    box = open_review(page, server, "seq-2")

    choose(page, "tool", "fill")
    choose(page, "cls", str(PORE))
    page.mouse.click(box["x"] + x + 0.5, box["y"] + y + 0.5)
    choose(page, "tool", "brush")
    choose(page, "cls", str(MELTED))
    stroke(page, box, (5, 5), (60, 20))
    assert page.inner_text("#undo") == "undo (2)"
    page.click("#undo")  # the stroke goes, the fill stays
    save(page, 1)
    filled = before.copy()
    filled[region] = PORE
    assert np.array_equal(saved_mask(context.state_dir, "seq-2"), filled)

    page.click("#undo")  # and the fill: back to the engine's proposal
    save(page, 1)
    assert np.array_equal(saved_mask(context.state_dir, "seq-2"), before)
    assert "0 px differ" in page.inner_text("#save-status")


def test_the_review_page_with_a_correction_screenshot(page, tmp_path, analyzer) -> None:
    context = make_context(tmp_path / "state")
    keep_frame(context, analyzer, "seq-1", seed=310)
    unet = Analyzer(Config.model_validate({"segment": {"engine": "unet", "backend": "cpu"}}))
    keep_frame(context, unet, "seq-7", seed=311, height=480, width=640)
    with WebServer(context, "127.0.0.1", 0) as server:
        page.goto(f"{server.url}/review?key=seq-1")
        page.wait_for_selector("#canvas[data-ready='1']")
        save(page, 1)
        box = open_review(page, server, "seq-7")
        choose(page, "cls", str(PORE))
        set_size(page, 12)
        stroke(page, box, (380, 140), (470, 170))
        choose(page, "cls", str(MELTED))
        set_size(page, 20)
        stroke(page, box, (120, 330), (200, 400))
        save(page, 2)
        assert "held out" in page.inner_text("#facts")
        page.eval_on_selector("#opacity", "el => { el.value = 55; el.dispatchEvent(new Event('input')); }")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "review.png"), full_page=True)
    context.close()


def test_bad_masks_are_refused_saying_what_is_wrong(tmp_path, analyzer) -> None:
    context = make_context(tmp_path / "state")
    keep_frame(context, analyzer, "seq-1", seed=320)
    client = TestClient(create_app(context))

    def post(key: str, mask: np.ndarray | bytes, content_type: str = "image/png"):
        body = mask if isinstance(mask, bytes) else cv2.imencode(".png", mask)[1].tobytes()
        return client.post(f"/api/review/labels/{key}", content=body, headers={"Content-Type": content_type})

    wrong_size = post("seq-1", np.zeros((256, 255), np.uint8))
    assert wrong_size.status_code == 400
    assert wrong_size.json()["error"] == ("the mask is 255x256 px but the image is 256x256 px; a mask has the size "
                                          "of its image")
    seven = np.zeros((256, 256), np.uint8)
    seven[10:12, 10:13] = 7
    bad_value = post("seq-1", seven)
    assert bad_value.status_code == 400
    assert bad_value.json()["error"] == ("the mask holds the value 7 (6 pixels); a mask holds only 0 melted, "
                                         "1 unmelted, 2 pore")
    scaled = post("seq-1", np.full((256, 256), 255, np.uint8))
    assert "the value 255 (65536 pixels)" in scaled.json()["error"]
    colour = np.zeros((256, 256, 3), np.uint8)
    colour[..., 2] = 1
    assert "colour picture" in post("seq-1", colour).json()["error"]
    assert "not a PNG" in post("seq-1", b"GIF89a not a png").json()["error"]
    assert "Content-Type: image/png" in post("seq-1", np.zeros((256, 256), np.uint8), "text/plain").json()["error"]
    assert post("seq-9", np.zeros((256, 256), np.uint8)).status_code == 404
    for key in ("..%2F..%2Fetc", "seq-1x", "upload-zz-1"):
        assert post(key, np.zeros((256, 256), np.uint8)).status_code in (400, 404)
    assert client.get("/api/review/labels").json()["fields"] == []
    assert not (context.ui_dir / "labels").exists() or not any((context.ui_dir / "labels").rglob("*.png"))


def _png_declaring(width: int, height: int, colour_type: int, payload: bytes) -> bytes:
    """A PNG file whose header says width x height (8 bits per channel), with `payload` as its only IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", payload) + chunk(b"IEND", b"")


def test_a_mask_declaring_another_size_is_refused_from_its_header_before_it_is_decoded(tmp_path, analyzer) -> None:
    # A few kilobytes that would decode to 30000 x 30000 RGBA (3.6 GB): the size in the header
    # is checked against the frame first, so nothing of that size is ever allocated.
    context = make_context(tmp_path / "state")
    keep_frame(context, analyzer, "seq-1", seed=321)
    client = TestClient(create_app(context))
    rows = zlib.compress(b"\x00" * 4096)
    bomb = _png_declaring(30000, 30000, 6, rows)
    answer = client.post("/api/review/labels/seq-1", content=bomb, headers={"Content-Type": "image/png"})
    assert answer.status_code == 400
    assert answer.json()["error"] == ("the mask is 30000x30000 px but the image is 256x256 px; a mask has the "
                                      "size of its image")
    assert client.get("/api/review/labels").json()["fields"] == []


def test_labelled_set_layout_is_what_training_reads_and_every_third_is_held_out(tmp_path, analyzer) -> None:
    context = make_context(tmp_path / "state")
    proposals = {f"seq-{n}": keep_frame(context, analyzer, f"seq-{n}", seed=330 + n) for n in (1, 2, 3, 4, 5)}
    client = TestClient(create_app(context))
    for key, mask in proposals.items():
        answer = client.post(f"/api/review/labels/{key}", content=cv2.imencode(".png", mask)[1].tobytes(),
                             headers={"Content-Type": "image/png"})
        assert answer.status_code == 200, answer.text
    listing = client.get("/api/review/labels").json()
    held = sorted(f["key"] for f in listing["fields"] if f["held_out"])
    assert held == ["seq-2", "seq-5"]
    train = listing["folders"]["train"]
    assert [p.sample_id for p in find_pairs(train["images"], train["masks"])] == ["seq-1", "seq-3", "seq-4"]

    moved = client.post("/api/review/labels/seq-3/held-out", json={"held_out": True})
    assert moved.status_code == 200 and moved.json()["held_out"] is True
    heldout = listing["folders"]["heldout"]
    assert [p.sample_id for p in find_pairs(heldout["images"], heldout["masks"])] == ["seq-2", "seq-3", "seq-5"]
    # Saving a field again keeps its split.
    again = client.post("/api/review/labels/seq-3", content=cv2.imencode(".png", proposals["seq-3"])[1].tobytes(),
                        headers={"Content-Type": "image/png"})
    assert again.json()["held_out"] is True and again.json()["corrected_px"] == 0
    assert client.delete("/api/review/labels/seq-4").status_code == 200
    assert client.delete("/api/review/labels/seq-4").status_code == 404
    assert client.post("/api/review/labels/seq-1/held-out", json={"held_out": "yes"}).status_code == 400

    # A labelled field stays reviewable after the FrameStore let it go.
    shutil.rmtree(context.frames.root / "seq-1")
    info = client.get("/api/review/frames/seq-1").json()
    assert info["labelled"] is True and (info["width"], info["height"]) == (256, 256)
    enhanced = cv2.imdecode(np.frombuffer(client.get("/api/review/frames/seq-1/enhanced.png").content, np.uint8),
                            cv2.IMREAD_UNCHANGED)
    assert enhanced.shape == (256, 256) and enhanced.dtype == np.uint8
    assert client.get("/api/review/frames/seq-1/proposal.png").status_code == 404
    assert [f["key"] for f in client.get("/api/review/frames").json()["frames"]] == ["seq-5", "seq-4", "seq-3", "seq-2"]


def test_without_a_key_the_page_lists_the_frames_kept_and_opens_one(page, served) -> None:
    server, _context, _masks = served
    page.goto(f"{server.url}/review")
    page.wait_for_selector("#frames tbody tr a")
    assert page.locator("#frames tbody tr a").all_inner_texts() == ["seq-3", "seq-2", "seq-1"]
    page.click("#frames a:text('seq-2')")
    page.wait_for_selector("#canvas[data-ready='1']")
    assert page.inner_text("#field-title") == "seq-2"
    page.goto(f"{server.url}/review?key=seq-99")
    page.wait_for_selector("#message .message.error")
    assert "no longer kept" in page.inner_text("#message")
