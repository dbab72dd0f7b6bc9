"""The web UI's ASGI application: core routes here, one router module per page area.

`create_app(context)` is all a server or a test needs: tests drive it in-process
(`starlette.testclient.TestClient`) and through a real browser against `server.WebServer`.

Core routes (the interface integrators use; keep them as they are):
- `GET /healthz` -> 200 `{"status": "ok" | "starting" | "stalled", ...}`, never needs the token.
- `GET /api/verdicts?since=SEQ&limit=N` -> JSON list of verdict messages (the wire JSON).
- `GET/POST /login`, `POST /logout` (only meaningful with a token).
- `/static/...` the pages' files; `GET /` -> the Live page.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from inspectd.web import analyse, live, review, trends
from inspectd.web.auth import SESSION_COOKIE, AccessMiddleware
from inspectd.web.context import WebContext
from inspectd.web.journal_reader import MAX_ROWS, JournalUnreadableError
from inspectd.web.routing import STATIC_DIR, BadRequest, query_int

logger = logging.getLogger(__name__)

PAGE_AREAS = (live, trends, analyse, review)


def create_app(context: WebContext, *, loopback_hosts_only: bool = False) -> Starlette:
    """`loopback_hosts_only`: without a token, refuse requests whose Host is not a loopback name
    (`auth.AccessMiddleware`); the server sets it, an in-process test client need not."""
    routes: list[BaseRoute] = [
        Route("/", lambda _request: RedirectResponse("/live", status_code=307)),
        Route("/healthz", _healthz(context)),
        Route("/api/verdicts", _verdicts(context)),
        Route("/login", _login_page, methods=["GET"]),
        Route("/login", _login(context), methods=["POST"]),
        Route("/logout", _logout, methods=["POST"]),
    ]
    for area in PAGE_AREAS:
        routes += area.routes(context)
    routes.append(Mount("/static", app=StaticFiles(directory=str(STATIC_DIR)), name="static"))
    app = Starlette(routes=routes, middleware=[Middleware(AccessMiddleware, guard=context.guard,
                                                           loopback_hosts_only=loopback_hosts_only)],
                    exception_handlers={Exception: _internal_error})
    app.state.context = context
    return app


def _healthz(context: WebContext) -> Any:
    async def handler(_request: Request) -> Response:
        if context.daemon is None:
            return JSONResponse({"status": "ok", "mode": "offline", "station": context.station})
        daemon = context.daemon
        status = "ok" if daemon.ready else "starting"
        if daemon.ready and daemon.watchdog is not None and daemon.watchdog.stalled:
            status = "stalled"
        return JSONResponse({"status": status, "mode": "daemon", "station": context.station})
    return handler


def _verdicts(context: WebContext) -> Any:
    async def handler(request: Request) -> Response:
        try:
            since = query_int(request, "since", 0, 0, 2**63 - 1)
            limit = query_int(request, "limit", 100, 1, MAX_ROWS)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        try:
            messages = await run_in_threadpool(context.journal.since, since, limit)
        except JournalUnreadableError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        return JSONResponse(messages)
    return handler


async def _login_page(_request: Request) -> Response:
    return FileResponse(str(STATIC_DIR / "login.html"), media_type="text/html")


def _login(context: WebContext) -> Any:
    async def handler(request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=4)
        token = form.get("token")
        if not context.guard.required:
            return RedirectResponse("/live", status_code=303)
        if not isinstance(token, str) or not context.guard.token_matches(token):
            return RedirectResponse("/login?failed=1", status_code=303)
        response = RedirectResponse("/live", status_code=303)
        response.set_cookie(SESSION_COOKIE, context.guard.session_value(), httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")
        return response
    return handler


async def _logout(_request: Request) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


async def _internal_error(request: Request, exc: Exception) -> Response:
    # A failing handler fails its request only: logged with the path, answered 500 in one line.
    logger.exception("web UI: %s %s failed", request.method, request.url.path)
    return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)
