"""The Analyse page: upload micrographs, get what `inspectd analyze` gets, download it as a workbook.

Routes (the interface; keep them as they are):
- `GET /analyse` the page;
- `POST /api/analyze` multipart: field `file` (one or more micrographs; a multi-page TIFF is
  several fields), optional field `engine` (`classical` | `unet`) -> the `<stem>.json`
  content `inspectd analyze` writes for the (first) field, plus `"id"`, `"fields": [{"key",
  "stem", "file", "field_index", "overlay", "review", "regions", "regions_total", "record"}]`
  (every field), `"sample"` and `"downloads"`; `record` is that field's `<stem>.json`
  content, `regions` its first `SHOWN_REGIONS`
  region rows (all of them are in the downloads), `overlay` its overlay as the shared
  `GET /api/frames/<key>/overlay.png` serves it and `review` its Review page;
- `GET /api/analyze/<id>` that answer again (the page shows `?id=<id>` after a reload);
- `GET /api/analyze/<id>.xlsx`, `GET /api/analyze/<id>.csv` the downloads (`inspectd.reports.workbook`);
- `GET /api/analyze/limits` what an upload may be, for the page to say so.

Why it is built this way:
- One code path: the hardened decoder with the `input:` limits, `Analyzer`, `result_record`
  and `render_overlay`, exactly what `inspectd analyze` runs, so the page shows the numbers
  the command line prints. Each engine is loaded once and kept (`context.areas`).
- The inspection line comes first: analyses run in a worker thread, one at a time (a lock),
  so an upload never takes more than one analysis' worth of CPU from the daemon; a few
  uploads may wait for their turn, more are refused (503) rather than queued without end.
- Uploads are bounded while they stream: a file over `input.max_file_bytes` is refused (413)
  as soon as its bytes pass the limit, before anything is decoded; a part is spooled to an
  anonymous temporary file under the UI's folder, never kept whole in memory.
- Nothing a user names reaches the file system: ids are random hex (`secrets`), spooled
  files have no name, a file name is only shown (escaped) and, reduced to `[A-Za-z0-9._-]`,
  used as the stem inside the downloads.
- An upload is analysed only when every file in it decodes: a truncated, corrupt or
  oversized image answers 4xx with a one-line `error` naming the file, and nothing is kept.
- What is kept is bounded: the last `KEPT_ANALYSES` analyses under `<ui dir>/analyses/<id>/`,
  the fields in the server's one `FrameStore` (`context.frames`: `<ui dir>/frames`, within
  `http.overlay_cache_mb`), where the Review page opens them as `upload-<id>-<n>`.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from inspectd.analysis.analyzer import Analyzer, FrameResult
from inspectd.analysis.decode import decode_bytes
from inspectd.config import Config
from inspectd.errors import (
    ConfigError,
    EngineError,
    ImageDecodeError,
    ImageTooLargeError,
    KernelResourceError,
)
from inspectd.escaping import printable
from inspectd.reports.report import field_stem, render_overlay, result_record, to_display_uint8
from inspectd.reports.workbook import (
    ExportField,
    region_rows,
    sample_statistics,
    write_csv,
    write_xlsx,
)
from inspectd.types import Frame
from inspectd.web.context import WebContext
from inspectd.web.frame_store import FrameStore
from inspectd.web.routing import static_page

logger = logging.getLogger(__name__)

AREA = "analyse"
ENGINES = ("classical", "unet")
MAX_FILES = 16  # per upload
MAX_WAITING = 4  # uploads waiting for the analysis lock; more are refused
KEPT_ANALYSES = 100
SHOWN_REGIONS = 200  # region rows in the answer; the downloads hold all of them
MAX_TEXT_FIELD_BYTES = 64
MAX_TEXT_FIELDS = 8  # form fields besides the files (the page sends one, `engine`)
DRAIN_LIMIT_BYTES = 64 << 20  # read (and drop) this much of a refused upload so a browser sees the answer
ID_PATTERN = re.compile(r"^[0-9a-f]{8,64}$")
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def routes(context: WebContext) -> list[BaseRoute]:
    area = context.areas.setdefault(AREA, AnalyseArea(context))
    return [
        static_page("analyse"),
        Route("/api/analyze", area.post, methods=["POST"]),
        Route("/api/analyze/limits", area.limits, methods=["GET"]),
        Route("/api/analyze/{analysis_id}.xlsx", area.download("analysis.xlsx", XLSX_TYPE), methods=["GET"]),
        Route("/api/analyze/{analysis_id}.csv", area.download("analysis.csv", "text/csv; charset=utf-8"),
              methods=["GET"]),
        Route("/api/analyze/{analysis_id}", area.get, methods=["GET"]),
    ]


class UploadRefused(Exception):
    """An upload answered with `status` and this one-line message (nothing was analysed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class UploadedFile:
    """One `file` part: the name shown (escaped, no folders), the stem for outputs, the spooled bytes."""

    name: str
    stem: str
    spool: IO[bytes]
    size: int = 0

    def read(self) -> bytes:
        self.spool.seek(0)
        return self.spool.read()


class AnalyseArea:
    """The analyses of one server: cached engines, the analysis lock, the kept results."""

    def __init__(self, context: WebContext) -> None:
        self.context = context
        self.analyses_dir = context.ui_dir / "analyses"
        self.spool_dir = context.ui_dir / "uploads"
        self._analyzers: dict[str, tuple[str, Analyzer]] = {}  # engine -> (segment settings, analyzer)
        self._analysis_lock = threading.Lock()
        self._waiting_lock = threading.Lock()
        self._waiting = 0

    @property
    def frames(self) -> FrameStore:
        """The server's one FrameStore (`context.frames`), where Live and Review find the same files."""
        return self.context.frames

    @property
    def config(self) -> Config:
        return self.context.config

    @property
    def default_engine(self) -> str:
        engine = self.config.segment.engine
        return engine if engine in ENGINES else ENGINES[0]

    # ---- routes -------------------------------------------------------------------------------

    async def limits(self, _request: Request) -> Response:
        return JSONResponse({"max_file_bytes": self.config.input.max_file_bytes,
                             "max_pixels": self.config.input.max_pixels, "max_files": MAX_FILES,
                             "engines": list(ENGINES), "default_engine": self.default_engine,
                             "shown_regions": SHOWN_REGIONS})

    async def post(self, request: Request) -> Response:
        uploads: list[UploadedFile] = []
        try:
            uploads, text_fields = await self._read_upload(request)
            engine = text_fields.get("engine") or self.default_engine
            if engine not in ENGINES:
                msg = f"unknown engine {printable(engine[:40])!r}: choose one of {', '.join(ENGINES)}"
                raise UploadRefused(400, msg)
            if not uploads:
                msg = "no micrograph in the upload: send one or more files in the multipart field 'file'"
                raise UploadRefused(400, msg)
            answer = await run_in_threadpool(self._analyse_in_turn, uploads, engine)
        except UploadRefused as refused:
            return JSONResponse({"error": str(refused)}, status_code=refused.status)
        finally:
            for upload in uploads:
                upload.spool.close()
        return JSONResponse(answer)

    async def get(self, request: Request) -> Response:
        try:
            folder = self._analysis_folder(request.path_params["analysis_id"])
        except UploadRefused as refused:
            return JSONResponse({"error": str(refused)}, status_code=refused.status)
        try:
            body = (folder / "analysis.json").read_bytes()
        except FileNotFoundError:  # removed with the oldest meanwhile
            return JSONResponse({"error": "this analysis is no longer kept"}, status_code=404)
        return Response(body, media_type="application/json")

    def download(self, name: str, media_type: str) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            try:
                folder = self._analysis_folder(request.path_params["analysis_id"])
            except UploadRefused as refused:
                return JSONResponse({"error": str(refused)}, status_code=refused.status)
            answer = json.loads((folder / "analysis.json").read_text(encoding="utf-8"))
            stem = answer["fields"][0]["stem"] if answer.get("fields") else "analysis"
            suffix = name.rsplit(".", 1)[1]
            return FileResponse(str(folder / name), media_type=media_type,
                                filename=f"inspectd-{stem}-{answer['id'][:8]}.{suffix}")
        return handler

    # ---- the upload ---------------------------------------------------------------------------

    async def _read_upload(self, request: Request) -> tuple[list[UploadedFile], dict[str, str]]:
        content_type, params = parse_options_header(request.headers.get("content-type", ""))
        boundary = params.get(b"boundary")
        if content_type != b"multipart/form-data" or not boundary:
            msg = "send the micrographs as multipart/form-data, in the field 'file'"
            raise UploadRefused(400, msg)
        max_file_bytes = self.config.input.max_file_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_FILES * (max_file_bytes + 4096):
            msg = (f"the upload is {int(declared):,} bytes, over {MAX_FILES} files of the limit of "
                   f"{max_file_bytes:,} bytes each (input.max_file_bytes)")
            raise UploadRefused(413, msg)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        reader = _MultipartReader(self.spool_dir, max_file_bytes)
        parser = MultipartParser(boundary, reader.callbacks())
        stream = request.stream()
        try:
            async for chunk in stream:
                parser.write(chunk)
                if reader.pending:
                    await run_in_threadpool(reader.flush)
            parser.finalize()
        except UploadRefused:
            reader.close()
            await _drain(stream)
            raise
        except FormParserError as exc:
            reader.close()
            msg = f"the upload is not valid multipart/form-data ({exc})"
            raise UploadRefused(400, msg) from exc
        except BaseException:
            reader.close()
            raise
        return reader.files, reader.text_fields

    # ---- the analysis -------------------------------------------------------------------------

    def _analyse_in_turn(self, uploads: list[UploadedFile], engine: str) -> dict[str, Any]:
        """Wait for the analysis lock (a few uploads may wait; more are refused), then analyse."""
        with self._waiting_lock:
            if self._waiting >= MAX_WAITING:
                msg = f"busy: {self._waiting} uploads are waiting to be analysed; try again shortly"
                raise UploadRefused(503, msg)
            self._waiting += 1
        with self._analysis_lock:
            with self._waiting_lock:
                self._waiting -= 1
            return self._analyse(uploads, engine)

    def _analyse(self, uploads: list[UploadedFile], engine: str) -> dict[str, Any]:
        analyzer = self._analyzer(engine)
        for upload in uploads[1:]:  # the first is decoded below before anything is analysed
            self._decode(upload)
        analysis_id = secrets.token_hex(16)
        fields: list[dict[str, Any]] = []
        exports: list[ExportField] = []
        for upload in uploads:
            frames = self._decode(upload)
            for frame in frames:
                result = analyzer.analyze(frame)
                stem = field_stem(upload.stem, frame.field_index, len(frames))
                number = len(fields)
                field_answer, export = self._field(analysis_id, number, upload, stem, result, analyzer)
                fields.append(field_answer)
                exports.append(export)
        stats = sample_statistics([export.record for export in exports])
        # The first field's `<stem>.json` at the top (for one image, exactly what `inspectd
        # analyze` writes), then what the page needs; none of these keys is a record's.
        answer = {
            **fields[0]["record"],
            "id": analysis_id,
            "fields": fields,
            "sample": {name: stat.to_dict() for name, stat in stats.items()},
            "downloads": {"xlsx": f"/api/analyze/{analysis_id}.xlsx", "csv": f"/api/analyze/{analysis_id}.csv"},
        }
        self._keep(analysis_id, answer, exports)
        logger.info("web UI: analysed %d field(s) of %d upload(s) with %s as %s", len(fields), len(uploads),
                    analyzer.engine.name, analysis_id)
        return answer

    def _field(self, analysis_id: str, number: int, upload: UploadedFile, stem: str, result: FrameResult,
               analyzer: Analyzer) -> tuple[dict[str, Any], ExportField]:
        engine = analyzer.engine
        record = _without_secrets(result_record(result, analyzer.cfg, engine_name=engine.name,
                                                backend=engine.backend, model_hash=engine.model_hash))
        regions = region_rows(result.measurements.regions) if result.measurements is not None else []
        key = f"upload-{analysis_id}-{number}"
        overlay = None
        if result.mask is not None and result.enhanced is not None:
            metrics = result.measurements.metrics if result.measurements is not None else None
            overlay = render_overlay(result.enhanced, result.mask, metrics)
        self.frames.put(key, image=result.frame.pixels,
                        enhanced=None if result.enhanced is None else to_display_uint8(result.enhanced),
                        mask=None if result.mask is None else result.mask.astype("uint8"),
                        overlay=overlay, meta=record)
        answer = {
            "key": key,
            "stem": stem,
            "file": upload.name,
            "field_index": result.frame.field_index,
            "overlay": None if overlay is None else f"/api/frames/{key}/overlay.png",
            "review": f"/review?key={key}",
            "regions": regions[:SHOWN_REGIONS],
            "regions_total": len(regions),
            "record": record,
        }
        return answer, ExportField(stem, record, regions)

    def _analyzer(self, engine: str) -> Analyzer:
        """The engine's analyzer, loaded and warmed up on first use and kept (called under the lock)."""
        # Keyed by the station's segment settings too: after a model swap (`Daemon.swap_model`
        # changes the config shared with the server) uploads use the model the line runs now.
        settings = self.config.segment.model_dump_json()
        cached = self._analyzers.get(engine)
        if cached is not None and cached[0] == settings:
            return cached[1]
        cfg = self.config.model_copy(deep=True)
        cfg.segment.engine = engine
        try:
            analyzer = Analyzer(cfg)
            analyzer.warm_up()
        except (EngineError, KernelResourceError, ConfigError) as exc:
            msg = f"the {engine} engine cannot start: {_one_line(exc)}"
            raise UploadRefused(503, msg) from exc
        self._analyzers[engine] = (settings, analyzer)
        return analyzer

    def _decode(self, upload: UploadedFile) -> list[Frame]:
        try:
            return decode_bytes(upload.read(), upload.name, max_pixels=self.config.input.max_pixels,
                                max_file_bytes=self.config.input.max_file_bytes)
        except ImageTooLargeError as exc:
            msg = f"{_one_line(exc)} (input.max_pixels)"
            raise UploadRefused(413, msg) from exc
        except ImageDecodeError as exc:
            raise UploadRefused(422, _one_line(exc)) from exc

    # ---- what is kept -------------------------------------------------------------------------

    def _keep(self, analysis_id: str, answer: dict[str, Any], exports: list[ExportField]) -> None:
        """Write answer and downloads into `<ui dir>/analyses/<id>/` whole, then remove the oldest."""
        self.analyses_dir.mkdir(parents=True, exist_ok=True)
        staging = self.analyses_dir / f".writing-{analysis_id}"
        staging.mkdir()
        try:
            (staging / "analysis.json").write_text(json.dumps(answer, allow_nan=False), encoding="utf-8")
            write_xlsx(staging / "analysis.xlsx", exports)
            write_csv(staging / "analysis.csv", exports)
            staging.rename(self.analyses_dir / analysis_id)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        kept = sorted((p for p in self.analyses_dir.iterdir() if p.is_dir() and ID_PATTERN.fullmatch(p.name)),
                      key=lambda p: p.stat().st_mtime)
        for old in kept[:-KEPT_ANALYSES]:
            shutil.rmtree(old, ignore_errors=True)

    def _analysis_folder(self, analysis_id: str) -> Path:
        if not ID_PATTERN.fullmatch(analysis_id):
            msg = f"not an analysis id: {printable(analysis_id[:80])!r} (8 to 64 lowercase hex digits)"
            raise UploadRefused(400, msg)
        folder = self.analyses_dir / analysis_id
        if not (folder / "analysis.json").is_file():
            msg = f"no analysis {analysis_id} is kept (unknown, or removed with the oldest beyond {KEPT_ANALYSES})"
            raise UploadRefused(404, msg)
        return folder


@dataclass
class _Part:
    name: str = ""
    file: UploadedFile | None = None
    text: bytearray = field(default_factory=bytearray)


class _MultipartReader:
    """python-multipart callbacks that spool `file` parts and count their bytes as they arrive.

    The size check is in `on_part_data`, so a file over the limit stops the upload at the
    chunk that crosses it; writes are queued and done off the event loop (`flush`).
    """

    def __init__(self, spool_dir: Path, max_file_bytes: int) -> None:
        self.spool_dir = spool_dir
        self.max_file_bytes = max_file_bytes
        self.files: list[UploadedFile] = []
        self.text_fields: dict[str, str] = {}
        self.pending: list[tuple[IO[bytes], bytes]] = []
        self._part = _Part()
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._stems: set[str] = set()
        self._text_parts = 0

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self._begin, "on_part_data": self._data, "on_part_end": self._end,
                "on_header_field": self._header_field, "on_header_value": self._header_value_data,
                "on_header_end": self._header_end, "on_headers_finished": self._headers_finished}

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for spool, chunk in pending:
            spool.write(chunk)

    def close(self) -> None:
        self.pending.clear()
        for upload in self.files:
            upload.spool.close()
        self.files.clear()

    def _begin(self) -> None:
        self._part = _Part()
        self._disposition = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._part.name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" not in options:
            self._text_parts += 1
            if self._text_parts > MAX_TEXT_FIELDS:
                msg = f"at most {MAX_TEXT_FIELDS} form fields besides the files per upload"
                raise UploadRefused(400, msg)
            return
        if self._part.name != "file":
            msg = f"files go in the multipart field 'file', not {printable(self._part.name[:40])!r}"
            raise UploadRefused(400, msg)
        if len(self.files) >= MAX_FILES:
            msg = f"at most {MAX_FILES} files per upload"
            raise UploadRefused(413, msg)
        name = display_name(options[b"filename"].decode("utf-8", "replace"))
        stem = _unique(output_stem(name), self._stems)
        # An anonymous file (no name on disk at all): the upload's own name never becomes a path.
        spool = tempfile.TemporaryFile(dir=self.spool_dir)
        self._part.file = UploadedFile(name, stem, spool)
        self.files.append(self._part.file)

    def _data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        upload = self._part.file
        if upload is None:
            if len(self._part.text) + len(chunk) > MAX_TEXT_FIELD_BYTES:
                msg = f"the field {printable(self._part.name[:40])!r} is too long"
                raise UploadRefused(400, msg)
            self._part.text += chunk
            return
        upload.size += len(chunk)
        if upload.size > self.max_file_bytes:
            msg = (f"{upload.name}: the file is over the upload limit of {self.max_file_bytes:,} bytes "
                   f"(input.max_file_bytes)")
            raise UploadRefused(413, msg)
        self.pending.append((upload.spool, chunk))

    def _end(self) -> None:
        if self._part.file is None and self._part.name:
            self.text_fields[self._part.name] = self._part.text.decode("utf-8", "replace").strip()


def display_name(raw: str) -> str:
    """The upload's file name as shown: no folders (either slash), escaped to one line, at most 120 characters.

    >>> display_name("C:\\\\fakepath\\\\../tile\\n1.png"), display_name("..")
    ('tile\\\\n1.png', 'upload')
    """
    name = re.split(r"[/\\]", raw)[-1].strip()
    name = printable(name)[:120]
    return "upload" if name in ("", ".", "..") else name


def output_stem(name: str) -> str:
    """The stem in the downloads: the name without its extension, reduced to `[A-Za-z0-9._-]`.

    >>> output_stem("tile c (1).png"), output_stem("=cmd|.tif"), output_stem("...")
    ('tile_c_1', 'cmd', 'upload')
    """
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")[:80]
    return stem or "upload"


def _unique(stem: str, taken: set[str]) -> str:
    candidate, suffix = stem, 2
    while candidate in taken:
        candidate, suffix = f"{stem}_{suffix}", suffix + 1
    taken.add(candidate)
    return candidate


def _without_secrets(record: dict[str, Any]) -> dict[str, Any]:
    """The record with the UI's access token hidden: the answer is kept and may be passed on."""
    http = (record.get("config") or {}).get("http")
    if isinstance(http, dict) and http.get("token") is not None:
        http["token"] = "(hidden)"
    return record


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


async def _drain(stream: Any) -> None:
    """Read and drop the rest of a refused upload (up to DRAIN_LIMIT_BYTES).

    A browser still sending its body when the server answers and closes often reports a
    network error instead of the answer; reading the rest lets it show the 413's message.
    """
    drained = 0
    try:
        async for chunk in stream:
            drained += len(chunk)
            if drained > DRAIN_LIMIT_BYTES:
                break
    except Exception:  # noqa: BLE001 - the client went away; the refusal stands
        logger.debug("web UI: a refused upload ended while it was drained", exc_info=True)
