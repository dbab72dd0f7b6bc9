"""What every page area's router uses: its HTML page, integer query parameters, a 400 refusal.

Its own module (not `app.py`) because `app.py` imports every page area to build the
application, and the areas need these at import time.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import Route

STATIC_DIR = resources.files("inspectd.web") / "static"


def static_page(name: str) -> Route:
    """`GET /<name>` -> `static/<name>.html` (the page fetches its data from the API)."""
    page = STATIC_DIR / f"{name}.html"
    return Route(f"/{name}", lambda _request: FileResponse(str(page), media_type="text/html"))


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high]; a bad value is a 400, not a crash."""
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        msg = f"{name} must be an integer, got {text[:40]!r}"
        raise BadRequest(msg) from None
    if not low <= value <= high:
        msg = f"{name} must be between {low} and {high}, got {value}"
        raise BadRequest(msg)
    return value


class BadRequest(Exception):
    """A request the API refuses with 400 and this message."""


async def read_bounded_body(request: Request, limit: int) -> bytes:
    """The request body, refused (BadRequest) as soon as it passes `limit` bytes: a declared
    Content-Length over it is refused before reading, a chunked body while it streams, so a
    request can never make the server hold more than `limit` bytes of it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        msg = f"the request body is {int(declared)} bytes; at most {limit} are taken"
        raise BadRequest(msg)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            msg = f"the request body is over {limit} bytes; at most {limit} are taken"
            raise BadRequest(msg)
        chunks.append(chunk)
    return b"".join(chunks)
