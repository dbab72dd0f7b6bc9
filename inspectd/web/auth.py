"""Who may use the web UI: the access token, the login cookie, and cross-site requests.

Without a token (the default, loopback only) anyone on this machine may use the UI. With
one (required for any other address, `HttpConfig`), every request except `/healthz`,
`/login` and the login page's own files needs it: as `Authorization: Bearer TOKEN` or
`X-Inspectd-Token: TOKEN` (scripts, integrators) or as the HttpOnly, SameSite=Strict
session cookie that `POST /login` sets (browsers). The cookie holds an HMAC of the token,
not the token, so a cookie seen in a proxy log is not the password.

Cross-site request forgery: a request that changes state (POST, PUT, PATCH, DELETE) coming
from a browser on another site is refused whatever it carries — its `Origin` (or, without
one, `Referer`) must be this server's own, and `Sec-Fetch-Site: cross-site` is refused.
Scripts that send neither header (curl, an MES) are not browsers and pass to the token
check. This also protects the loopback UI without a token from a web page the operator
happens to open (such a page could otherwise POST to 127.0.0.1).

    >>> checker = AccessGuard("correct-horse-battery-staple")
    >>> checker.token_matches("correct-horse-battery-staple"), checker.token_matches("nope")
    (True, False)
    >>> checker.session_valid(checker.session_value()), AccessGuard(None).required
    (True, False)
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from inspectd.config import is_loopback_host
from inspectd.errors import ConfigError

SESSION_COOKIE = "inspectd_session"
TOKEN_HEADER = "x-inspectd-token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Reachable without the token: the load balancer's health check and what the login page needs.
OPEN_PATHS = frozenset({"/healthz", "/login", "/static/base.css", "/static/login.js"})


def read_token(token: str | None, token_file: Path | None) -> str | None:
    """The configured token, from the config or the first line of its file (None: no token)."""
    if token_file is None:
        return token
    try:
        text = Path(token_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"http.token_file {token_file}: cannot read it ({exc})"
        raise ConfigError(msg) from exc
    value = text[0].strip() if text else ""
    if len(value) < 16 or not value.isprintable() or " " in value:
        msg = f"http.token_file {token_file}: the first line must be a token of at least 16 printable characters"
        raise ConfigError(msg)
    return value


class AccessGuard:
    """Token and cookie checks; `required` is False when no token is configured."""

    def __init__(self, token: str | None) -> None:
        self._token = token
        self.required = token is not None

    def token_matches(self, candidate: str | None) -> bool:
        if self._token is None or not candidate:
            return False
        return hmac.compare_digest(candidate.encode(), self._token.encode())

    def session_value(self) -> str:
        """The cookie value a login sets: an HMAC of the token, never the token itself."""
        if self._token is None:
            return ""
        return hmac.new(self._token.encode(), b"inspectd-ui-session-v1", hashlib.sha256).hexdigest()

    def session_valid(self, candidate: str | None) -> bool:
        # Compared as bytes: a cookie may hold any byte (latin-1), and str comparison refuses non-ASCII.
        return bool(self._token) and bool(candidate) and hmac.compare_digest(
            candidate.encode(), self.session_value().encode())

    def request_allowed(self, headers: Headers, cookies: dict[str, str]) -> bool:
        if not self.required:
            return True
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("bearer ") and self.token_matches(authorization[7:].strip()):
            return True
        if self.token_matches(headers.get(TOKEN_HEADER)):
            return True
        return self.session_valid(cookies.get(SESSION_COOKIE))


def cross_site_reason(method: str, headers: Headers, scheme: str) -> str | None:
    """Why a state-changing request looks cross-site (None: it does not)."""
    if method not in UNSAFE_METHODS:
        return None
    if headers.get("sec-fetch-site") == "cross-site":
        return "cross-site request refused"
    own_host = headers.get("host", "")
    claimed = headers.get("origin") or headers.get("referer")
    if claimed is None:
        return None  # not a browser (curl, an MES): the token check decides
    parts = urlsplit(claimed)
    if claimed == "null" or parts.netloc != own_host or parts.scheme not in ("http", "https"):
        return f"request from another origin ({claimed[:100]}) refused"
    return None


def names_loopback(host_header: str) -> bool:
    """Whether a Host header names this machine by a loopback name (localhost, 127.0.0.0/8, [::1]).

    >>> names_loopback("127.0.0.1:8080"), names_loopback("[::1]:8080"), names_loopback("rebound.example:8080")
    (True, True, False)
    """
    try:
        host = urlsplit(f"//{host_header}").hostname
    except ValueError:
        return False
    return host is not None and is_loopback_host(host)


class AccessMiddleware:
    """ASGI middleware: host and cross-site checks first, then the token (401 for the API, login page for pages).

    `loopback_hosts_only` (a server on a loopback address without a token): a request whose
    Host header is not a loopback name is refused, so a web page on a host name made to
    resolve to 127.0.0.1 (DNS rebinding), which is same-origin with itself, cannot use the UI.
    """

    def __init__(self, app: ASGIApp, guard: AccessGuard, loopback_hosts_only: bool = False) -> None:
        self.app = app
        self.guard = guard
        self.loopback_hosts_only = loopback_hosts_only and not guard.required

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if self.loopback_hosts_only and host and not names_loopback(host):
            refused = {"error": f"host {host[:100]!r} refused: without a token this UI answers only to "
                                "127.0.0.1, localhost or [::1]"}
            await JSONResponse(refused, status_code=403)(scope, receive, send)
            return
        reason = cross_site_reason(scope["method"], headers, scope.get("scheme", "http"))
        if reason is not None:
            await JSONResponse({"error": reason}, status_code=403)(scope, receive, send)
            return
        path = scope["path"]
        if path in OPEN_PATHS or self.guard.request_allowed(headers, _cookies(headers)):
            await self.app(scope, receive, send)
            return
        response: Response
        if path.startswith("/api/") or scope["method"] != "GET":
            response = JSONResponse({"error": "authentication required: send the token (Authorization: Bearer "
                                              "TOKEN) or log in"}, status_code=401,
                                    headers={"WWW-Authenticate": 'Bearer realm="inspectd"'})
        else:
            response = RedirectResponse("/login", status_code=303)
        await response(scope, receive, send)


def _cookies(headers: Headers) -> dict[str, str]:
    jar: dict[str, str] = {}
    for part in headers.get("cookie", "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            jar[name] = value
    return jar
