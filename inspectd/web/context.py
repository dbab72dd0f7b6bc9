"""What the web UI's routers share: the config, the state dir, the journal reader, the daemon.

One `WebContext` per server. `daemon` is the running `Daemon` under `inspectd run --http`
and None under `inspectd ui` (offline: the journal and the files under the state dir are
all there is); a router that needs the live daemon (status facts, publishing an alarm,
swapping the model) checks it and says so when it is absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inspectd.config import Config
from inspectd.daemon.journal import JOURNAL_FILE
from inspectd.web.auth import AccessGuard
from inspectd.web.frame_store import FrameStore
from inspectd.web.journal_reader import JournalReader

if TYPE_CHECKING:
    from inspectd.daemon.app import Daemon

UI_DIR = "ui"  # under the state dir: overlays, uploads, labels of the web UI


@dataclass
class WebContext:
    config: Config
    state_dir: Path
    guard: AccessGuard
    daemon: Daemon | None = None
    # Per-area state the routers keep between requests (the live feed, the analyses of
    # uploads, the fine-tuning job), keyed by area name; set by each area's `routes()`.
    areas: dict[str, Any] = field(default_factory=dict)
    # Told of every verdict on the daemon's publish thread: (final message, FrameResult), the
    # daemon hands this list to its Pipeline (`Pipeline.add_observer`). Each must return at
    # once (queue the work for a thread of its own); unused under `inspectd ui`.
    verdict_observers: list[Any] = field(default_factory=list)
    _frames: FrameStore | None = field(default=None, init=False, repr=False)

    @property
    def frames(self) -> FrameStore:
        """The one FrameStore of this server (`<ui dir>/frames`, bounded by http.overlay_cache_mb),
        shared by every page so a frame opened anywhere is the same files."""
        if self._frames is None:
            self._frames = FrameStore(self.ui_dir / "frames", max_bytes=self.config.http.overlay_cache_mb * 1024 * 1024)
        return self._frames

    def close(self) -> None:
        """Stop what the areas run in the background (each area state's `close()`, if it has one)."""
        for state in list(self.areas.values()):
            close = getattr(state, "close", None)
            if callable(close):
                close()

    @property
    def station(self) -> str:
        return self.config.station

    @property
    def journal(self) -> JournalReader:
        return JournalReader(self.state_dir / JOURNAL_FILE)

    @property
    def ui_dir(self) -> Path:
        """`<state dir>/ui`: the only place the web UI writes."""
        return self.state_dir / UI_DIR

    @property
    def offline(self) -> bool:
        """True under `inspectd ui` (no daemon in this process)."""
        return self.daemon is None
