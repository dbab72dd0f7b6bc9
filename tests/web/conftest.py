"""Fixtures of the web UI tests: a served app on 127.0.0.1 and a real headless chromium.

The browser is Debian's `chromium` driven by Playwright through `executable_path` (no
browser download at install); browser tests skip where it is not installed.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from inspectd.config import Config
from inspectd.web.auth import AccessGuard
from inspectd.web.context import WebContext
from inspectd.web.server import WebServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture(scope="session")
def browser():
    """One headless chromium for the whole run (each test opens its own page)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).is_file():
        pytest.skip("chromium is not installed (apt install chromium)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    yield opened
    context.close()


def make_context(state_dir: Path, *, token: str | None = None, config: Config | None = None) -> WebContext:
    state_dir.mkdir(parents=True, exist_ok=True)
    cfg = (config or Config()).model_copy(update={"state_dir": state_dir})
    return WebContext(cfg, state_dir, AccessGuard(token))


@pytest.fixture
def offline_server(tmp_path) -> Iterator[WebServer]:
    """The UI alone over an empty state dir (as `inspectd ui`), on a free port."""
    with WebServer(make_context(tmp_path / "state"), "127.0.0.1", 0) as server:
        yield server
