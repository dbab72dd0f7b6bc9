"""Watchdog events for a folder source: hints about entries, and news that events were lost.

Events are only hints (the folder is rescanned anyway), so the handler does nothing on the
observer thread but pass them on. A lost-events notice comes from the event stream itself
(watchdog's `EventsLostEvent`, queued when the kernel's inotify queue overflowed), so it is
counted whatever the log level.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from watchdog.events import EventsLostEvent, FileSystemEvent, FileSystemEventHandler

# (path, "created" | "modified" | "closed" | "moved_in", is_directory)
OnHint = Callable[[str, str, bool], None]


class EventHints(FileSystemEventHandler):
    """Forwards watchdog events to `on_hint` / `on_lost`; cheap, on the observer thread.

    Directory events are passed on too: a directory named like an image, in a folder not
    watched recursively, is an entry to refuse, and the source decides that.
    """

    def __init__(self, on_hint: OnHint, on_lost: Callable[[], None]) -> None:
        self._on_hint = on_hint
        self._on_lost = on_lost

    def on_created(self, event: FileSystemEvent) -> None:
        self._on_hint(os.fsdecode(event.src_path), "created", event.is_directory)

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._on_hint(os.fsdecode(event.src_path), "modified", False)

    def on_closed(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._on_hint(os.fsdecode(event.src_path), "closed", False)

    def on_moved(self, event: FileSystemEvent) -> None:
        if event.dest_path:
            self._on_hint(os.fsdecode(event.dest_path), "moved_in", event.is_directory)

    def on_events_lost(self, event: EventsLostEvent) -> None:
        self._on_lost()
