"""The Review page: correct the engine's mask of a frame and keep it in the labelled set; fine-tune on it.

`GET /review?key=<frame key>` is the page (static/review.html + review.js): the enhanced
frame under its mask, brush / fill / undo / zoom, and Save. Its API:

- `GET /api/review/frames` recent frames of the FrameStore that can be labelled (newest first);
- `GET /api/review/frames/<key>` one frame: size, source, verdict, whether it is labelled;
- `GET /api/review/frames/<key>/enhanced.png` the frame as the engine saw it (8-bit);
- `GET /api/review/frames/<key>/mask.png` the saved label if there is one, else the engine's
  proposal; `.../proposal.png` always the proposal (class indices 0/1/2, one channel);
- `POST /api/review/labels/<key>` body: the corrected mask as a PNG of class indices
  (`Content-Type: image/png`, the frame's size, values 0/1/2 only; anything else is a 400
  saying what is wrong). The frame's decoded pixels (`image.png`) and the mask go into the
  labelled set (`inspectd.data.labelled_set`, under `<state dir>/ui/labels/`);
- `GET /api/review/labels` the labelled fields and the folders `inspectd train` reads;
- `POST /api/review/labels/<key>/held-out` `{"held_out": true|false}`; `DELETE /api/review/labels/<key>`.

Keys are checked by `frame_store.check_key` before anything else; no request names a path.
The fine-tuning routes (`/api/finetune...`) live in `finetune.py` and are mounted from here.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import cv2
import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from inspectd.analysis.preprocess import enhance
from inspectd.data.labelled_set import LabelError, LabelledSet, decode_mask_png
from inspectd.reports.report import to_display_uint8
from inspectd.web import finetune
from inspectd.web.context import WebContext
from inspectd.web.frame_store import UnknownFrameError, check_key
from inspectd.web.routing import BadRequest, query_int, read_bounded_body, static_page

logger = logging.getLogger(__name__)

MAX_MASK_BYTES = 64 * 2**20  # a class-index PNG compresses far below this even for 100 MP frames
PNG_HEADERS = {"Cache-Control": "no-store"}


class _Missing(Exception):
    """A frame or field the server does not keep (404 with this message)."""


class _Refused(Exception):
    """A request this page refuses (400 with this message)."""


def routes(context: WebContext) -> list[BaseRoute]:
    labels = finetune.tuner(context).labels
    review = _Review(context, labels)
    return [
        static_page("review"),
        Route("/api/review/frames", _json(review.recent_frames), methods=["GET"]),
        Route("/api/review/frames/{key}", _json(review.frame_info), methods=["GET"]),
        Route("/api/review/frames/{key}/{name}", review.frame_png, methods=["GET"]),
        Route("/api/review/labels", _json(review.label_list), methods=["GET"]),
        Route("/api/review/labels/{key}", review.save_label, methods=["POST"]),
        Route("/api/review/labels/{key}", _json(review.remove_label), methods=["DELETE"]),
        Route("/api/review/labels/{key}/held-out", _json(review.set_held_out), methods=["POST"]),
        *finetune.routes(context),
    ]


def _json(handler: Any) -> Any:
    """Run `handler(request)` (async, returning a JSON-able value) and map refusals to 400/404."""
    async def endpoint(request: Request) -> Response:
        try:
            return JSONResponse(await handler(request))
        except (BadRequest, _Refused, LabelError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except (_Missing, UnknownFrameError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
    return endpoint


class _Review:
    def __init__(self, context: WebContext, labels: LabelledSet) -> None:
        self.context = context
        self.labels = labels

    # ---- frames -------------------------------------------------------------------------

    async def recent_frames(self, request: Request) -> dict[str, Any]:
        limit = query_int(request, "limit", 50, 1, 500)
        return await run_in_threadpool(self._recent, limit)

    def _recent(self, limit: int) -> dict[str, Any]:
        store = self.context.frames
        labelled = {field.key: field.held_out for field in self.labels.fields()}
        frames = []
        for key in reversed(store.keys()):
            if store.path(key, "image.png") is None or store.path(key, "mask.png") is None:
                continue  # an ERROR frame without pixels or mask: nothing to label
            frames.append({**_summary(store.meta(key) or {}), "key": key, "labelled": key in labelled,
                           "held_out": labelled.get(key)})
            if len(frames) >= limit:
                break
        return {"frames": frames}

    async def frame_info(self, request: Request) -> dict[str, Any]:
        key = check_key(request.path_params["key"])
        return await run_in_threadpool(self._frame_info, key)

    def _frame_info(self, key: str) -> dict[str, Any]:
        store = self.context.frames
        field = self.labels.get(key)
        image_path = store.path(key, "image.png")
        if image_path is None and field is None:
            msg = f"frame {key} is no longer kept (the UI keeps the latest frames only) and is not labelled"
            raise _Missing(msg)
        meta = store.meta(key) or {}
        record = field.record if field else {}
        height, width = _png_size(image_path if image_path is not None else field.image_path)
        return {**_summary(meta), "key": key, "width": width, "height": height,
                "source": _summary(meta).get("source") or record.get("source"),
                "labelled": field is not None, "held_out": None if field is None else field.held_out,
                "has_proposal": store.path(key, "mask.png") is not None, "saved_at": record.get("saved_at")}

    async def frame_png(self, request: Request) -> Response:
        try:
            key = check_key(request.path_params["key"])
            name = request.path_params["name"]
            if name not in ("enhanced.png", "mask.png", "proposal.png"):
                msg = f"a frame has no {name[:40]!r} here (enhanced.png, mask.png or proposal.png)"
                raise _Missing(msg)
            content = await run_in_threadpool(self._frame_png, key, name)
        except (_Missing, UnknownFrameError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return Response(content, media_type="image/png", headers=PNG_HEADERS)

    def _frame_png(self, key: str, name: str) -> bytes:
        store = self.context.frames
        field = self.labels.get(key)
        if name == "mask.png" and field is not None:
            return field.mask_path.read_bytes()
        stored = store.path(key, "enhanced.png" if name == "enhanced.png" else "mask.png")
        if stored is not None:
            return stored.read_bytes()
        if name == "enhanced.png" and field is not None:
            # The store has let the frame go; the labelled image is enhanced as the engine would.
            pixels = cv2.imread(str(field.image_path), cv2.IMREAD_UNCHANGED)
            shown = to_display_uint8(enhance(pixels, self.context.config.preprocess, backend="cpu"))
            return cv2.imencode(".png", shown)[1].tobytes()
        msg = f"frame {key} has no {name} (no longer kept, or never segmented)"
        raise _Missing(msg)

    # ---- labels -------------------------------------------------------------------------

    async def label_list(self, _request: Request) -> dict[str, Any]:
        return await run_in_threadpool(self._label_list)

    def _label_list(self) -> dict[str, Any]:
        from inspectd.data.labelled_set import HELDOUT, HOLD_OUT_EVERY, TRAIN

        folders = {split: {"images": str(self.labels.folders(split)[0]), "masks": str(self.labels.folders(split)[1])}
                   for split in (TRAIN, HELDOUT)}
        return {"fields": [field.describe() for field in reversed(self.labels.fields())], "folders": folders,
                "hold_out_every": HOLD_OUT_EVERY}

    async def save_label(self, request: Request) -> Response:
        try:
            key = check_key(request.path_params["key"])
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type not in ("image/png", "application/octet-stream"):
                msg = f"send the mask as a PNG (Content-Type: image/png), not {content_type[:60] or 'nothing'}"
                raise _Refused(msg)
            body = await read_bounded_body(request, MAX_MASK_BYTES)
            saved = await run_in_threadpool(self._save, key, body)
        except (BadRequest, _Refused, LabelError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except (_Missing, UnknownFrameError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse(saved)

    def _save(self, key: str, body: bytes) -> dict[str, Any]:
        store = self.context.frames
        field = self.labels.get(key)
        image_path = store.path(key, "image.png")
        source_path = image_path if image_path is not None else (field.image_path if field else None)
        if source_path is None:
            msg = f"frame {key} is no longer kept (the UI keeps the latest frames only): open a newer frame"
            raise _Missing(msg)
        image = cv2.imread(str(source_path), cv2.IMREAD_UNCHANGED)
        if image is None or image.ndim != 2:
            msg = f"the pixels of frame {key} cannot be read as one grey channel"
            raise _Missing(msg)
        mask = decode_mask_png(body, image.shape)
        record: dict[str, Any] = {}
        meta = store.meta(key)
        if meta is not None:
            summary = _summary(meta)
            record.update(source=summary.get("source"), verdict=summary.get("verdict"),
                          proposed_by=summary.get("model_hash") or summary.get("engine"))
        proposal_path = store.path(key, "mask.png")
        if proposal_path is not None:
            proposal = cv2.imread(str(proposal_path), cv2.IMREAD_UNCHANGED)
            if proposal is not None and proposal.shape == mask.shape:
                record["corrected_px"] = int(np.count_nonzero(proposal != mask))
        saved = self.labels.save(key, image, mask, record=record)
        return saved.describe()

    async def set_held_out(self, request: Request) -> dict[str, Any]:
        key = check_key(request.path_params["key"])
        try:
            body = json.loads(await read_bounded_body(request, 4096) or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("held_out"), bool):
            msg = 'send {"held_out": true} or {"held_out": false}'
            raise _Refused(msg)
        return (await run_in_threadpool(self.labels.set_held_out, key, body["held_out"])).describe()

    async def remove_label(self, request: Request) -> dict[str, Any]:
        key = check_key(request.path_params["key"])
        if not await run_in_threadpool(self.labels.remove, key):
            msg = f"no labelled field {key}"
            raise _Missing(msg)
        return {"removed": key}


def _summary(meta: dict[str, Any]) -> dict[str, Any]:
    """What the page shows of a frame's meta.json (a verdict message or an analysis record)."""
    engine = meta.get("engine") if isinstance(meta.get("engine"), dict) else {}
    return {"source": meta.get("source"), "verdict": meta.get("verdict"), "seq": meta.get("seq"),
            "engine": engine.get("name"), "model_hash": engine.get("model_hash")}


def _png_size(path: Any) -> tuple[int, int]:
    """(height, width) from a PNG's header, without decoding it."""
    with open(path, "rb") as handle:
        header = handle.read(24)
    if len(header) < 24 or not header.startswith(b"\x89PNG"):
        pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        return int(pixels.shape[0]), int(pixels.shape[1])
    return int.from_bytes(header[20:24], "big"), int.from_bytes(header[16:20], "big")
