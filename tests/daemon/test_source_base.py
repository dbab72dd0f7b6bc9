"""Frame-source framework: state machine, status events, items, bounded buffer, registry."""

from __future__ import annotations

import hashlib
import sys
import textwrap
import threading
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from inspectd.errors import ConfigError, SourceConnectionError
from inspectd.sources import registry
from inspectd.sources.base import (
    ALLOWED_TRANSITIONS,
    FrameBuffer,
    FrameSource,
    ItemOutcome,
    Severity,
    SourceItem,
    SourceState,
    SourceStateError,
    StatusUpdate,
    check_transition,
    sha256_of_pixels,
)
from inspectd.sources.folder import FolderSource


class CountingSource(FrameSource):
    """A real (if tiny) source: a producer thread publishing numbered frames."""

    KEY = "counting-test"

    def __init__(self, n_frames: int, **kwargs: object) -> None:
        super().__init__("count0", **kwargs)  # type: ignore[arg-type]
        self.n_frames = n_frames
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._set_state(SourceState.INITIALISING)
        self._set_state(SourceState.RUNNING)
        self._thread = threading.Thread(target=self._produce, daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        for index in range(self.n_frames):
            pixels = np.full((4, 4), index % 256, np.uint8)
            self._publish(SourceItem.from_pixels(self.source_id, pixels, index), timeout_s=5.0)

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._close_buffer()
        self._set_state(SourceState.ENDED)


# ---- FrameBuffer --------------------------------------------------------------------------


def test_drop_oldest_buffer_counts_drops_and_keeps_the_newest() -> None:
    dropped: list[int] = []
    buffer: FrameBuffer[int] = FrameBuffer(3, drop_oldest=True, on_drop=dropped.append)
    for value in range(10):
        assert buffer.put(value) is True  # never blocks, never refuses while open
    assert buffer.drops == 7
    assert dropped == list(range(7))
    assert [buffer.get(timeout_s=0) for _ in range(3)] == [7, 8, 9]
    assert buffer.get(timeout_s=0) is None


def test_blocking_buffer_never_drops_and_keeps_order() -> None:
    buffer: FrameBuffer[int] = FrameBuffer(2, drop_oldest=False)
    n_items = 500
    received: list[int] = []

    def produce() -> None:
        for value in range(n_items):
            assert buffer.put(value, timeout_s=30.0)

    producer = threading.Thread(target=produce)
    producer.start()
    while len(received) < n_items:
        item = buffer.get(timeout_s=30.0)
        assert item is not None
        received.append(item)
    producer.join()
    assert received == list(range(n_items))
    assert buffer.drops == 0


def test_blocking_buffer_put_times_out_when_full_without_dropping() -> None:
    buffer: FrameBuffer[str] = FrameBuffer(1, drop_oldest=False)
    assert buffer.put("a", timeout_s=0.0)
    assert buffer.put("b", timeout_s=0.05) is False
    assert buffer.drops == 0
    assert buffer.get(timeout_s=0) == "a"


def test_close_wakes_a_blocked_producer_and_consumer() -> None:
    buffer: FrameBuffer[int] = FrameBuffer(1, drop_oldest=False)
    buffer.put(1)
    results: dict[str, object] = {}

    def blocked_put() -> None:
        results["put"] = buffer.put(2)  # no timeout: only close() can end this

    thread = threading.Thread(target=blocked_put)
    thread.start()
    thread.join(0.1)
    assert thread.is_alive()
    buffer.close()
    thread.join(10.0)
    assert not thread.is_alive()
    assert results["put"] is False
    # queued items stay takeable after close, then get() returns None instead of waiting
    assert buffer.get() == 1
    assert buffer.get() is None
    buffer.reopen()
    assert buffer.put(3) and buffer.get(timeout_s=0) == 3


def test_buffer_rejects_zero_size() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        FrameBuffer(0, drop_oldest=True)


# ---- state machine and status events ------------------------------------------------------


def test_transition_table_covers_every_state() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(SourceState)
    for state, targets in ALLOWED_TRANSITIONS.items():
        assert state not in targets
        assert targets <= set(SourceState)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (SourceState.NOT_STARTED, SourceState.RUNNING),
        (SourceState.ENDED, SourceState.RUNNING),
        (SourceState.RECONNECTING, SourceState.PAUSED),
        (SourceState.NOT_STARTED, SourceState.PAUSED),
    ],
)
def test_illegal_transitions_raise(current: SourceState, new: SourceState) -> None:
    with pytest.raises(SourceStateError, match=f"{current.value} -> {new.value}"):
        check_transition(current, new)


def test_source_lifecycle_emits_status_updates_and_counts_items() -> None:
    updates: list[StatusUpdate] = []
    source = CountingSource(5, buffer_size=8, drop_oldest=True, on_status=updates.append)
    assert source.state is SourceState.NOT_STARTED
    source.start()
    items = [source.get(timeout_s=10.0) for _ in range(5)]
    source.stop()
    assert [item.frame_number for item in items if item is not None] == [0, 1, 2, 3, 4]
    assert source.state is SourceState.ENDED
    assert source.finished
    stats = source.stats()
    assert stats["items"] == 5 and stats["drops"] == 0 and stats["state"] == "ENDED"
    changes = [(u.payload["old"], u.payload["new"]) for u in updates if u.event == "state_changed"]
    assert changes == [
        ("NOT_STARTED", "INITIALISING"),
        ("INITIALISING", "RUNNING"),
        ("RUNNING", "ENDED"),
    ]
    assert all(u.source_id == "count0" and u.time.tzinfo is not None for u in updates)
    # an illegal transition raises and leaves the state alone
    with pytest.raises(SourceStateError):
        source._set_state(SourceState.RUNNING)
    assert source.state is SourceState.ENDED


def test_free_run_source_drops_oldest_when_nobody_takes() -> None:
    source = CountingSource(50, buffer_size=4, drop_oldest=True)
    source.start()
    source.stop()  # joins the producer: all 50 published into a 4-slot buffer
    stats = source.stats()
    assert stats["items"] == 50
    assert stats["drops"] == 46
    remaining = []
    while (item := source.get(timeout_s=0)) is not None:
        remaining.append(item.frame_number)
    assert remaining == [46, 47, 48, 49]


def test_a_failing_status_callback_never_escapes() -> None:
    def explode(update: StatusUpdate) -> None:
        msg = "subscriber bug"
        raise RuntimeError(msg)

    source = CountingSource(1, on_status=explode)
    source.start()
    assert source.get(timeout_s=10.0) is not None
    source.stop()
    assert source.state is SourceState.ENDED


def test_error_event_is_remembered_as_last_error() -> None:
    source = CountingSource(0)
    source._emit("frame_timeout", Severity.ERROR, waited_ms=500)
    assert "frame_timeout" in source.stats()["last_error"]
    assert source.ack(SourceItem.from_pixels("c", np.zeros(1, np.uint8), 0), ItemOutcome.OK) is None


# ---- SourceItem ---------------------------------------------------------------------------


def test_item_from_pixels_hashes_the_raw_bytes() -> None:
    pixels = np.arange(12, dtype=np.uint16).reshape(3, 4)
    item = SourceItem.from_pixels("cam", pixels, 3, camera_id="gige-1", part_id="P7")
    assert item.sha256 == hashlib.sha256(pixels.tobytes()).hexdigest() == sha256_of_pixels(pixels)
    assert item.source == "gige-1#3" and item.kind == "camera" and item.part_id == "P7"
    # a non-contiguous view hashes like its C-ordered copy
    assert sha256_of_pixels(pixels.T) == hashlib.sha256(pixels.T.copy().tobytes()).hexdigest()


def test_item_needs_exactly_one_kind_of_data() -> None:
    now = datetime.now(timezone.utc)
    common = {"source_id": "s", "kind": "file", "source": "/x.png", "capture_time": now}
    with pytest.raises(ValueError, match="not both"):
        SourceItem(**common, sha256="", payload=b"x", pixels=np.zeros(1))
    with pytest.raises(ValueError, match="must carry an error"):
        SourceItem(**common, sha256="")
    with pytest.raises(ValueError, match="kind"):
        SourceItem(**{**common, "kind": "video"}, sha256="", payload=b"")
    with pytest.raises(ValueError, match="timezone"):
        SourceItem(**{**common, "capture_time": datetime.now()}, sha256="", payload=b"")
    unreadable = SourceItem(**common, sha256="", error="permission denied")
    assert unreadable.key == ("/x.png", "")


# ---- registry -----------------------------------------------------------------------------


def test_registry_finds_the_folder_source_and_every_entry_is_a_frame_source() -> None:
    assert registry.SOURCES["folder"] is FolderSource
    for key, cls in registry.SOURCES.items():
        assert issubclass(cls, FrameSource)
        assert cls.KEY == key
        for method in ("start", "stop", "get", "ack", "stats"):
            assert callable(getattr(cls, method))


def test_create_source_builds_and_rejects(tmp_path: Path) -> None:
    source = registry.create_source("folder", path=tmp_path)
    assert isinstance(source, FolderSource) and source.state is SourceState.NOT_STARTED
    with pytest.raises(ConfigError, match="unknown source type 'nope'; available: .*folder"):
        registry.create_source("nope")
    with pytest.raises(ConfigError, match="bad settings"):
        registry.create_source("folder", path=tmp_path, no_such_option=1)


def test_plugin_with_missing_runtime_is_skipped_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real package with one good plugin and one whose import fails (like Aravis without gi)."""
    package = tmp_path / "fake_sources_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "good_source.py").write_text(
        textwrap.dedent(
            """
            from inspectd.sources.base import FrameSource

            class GoodSource(FrameSource):
                KEY = "good"
                def start(self): pass
                def stop(self, timeout_s=5.0): pass
            """
        )
    )
    (package / "gigecam_camera.py").write_text(
        "import gi_module_that_is_not_installed\n"
        "from inspectd.sources.base import FrameSource\n"
        "class GigECamSource(FrameSource):\n"
        "    KEY = 'gigecam'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        found = registry.load_sources("fake_sources_pkg")
        assert set(found.classes) == {"good"}
        failure = found.failures["fake_sources_pkg.gigecam_camera"]
        assert failure.missing == "gi_module_that_is_not_installed" and failure.keys == ("gigecam",)
        monkeypatch.setattr(registry, "REGISTRY", found)
        monkeypatch.setattr(registry, "SOURCES", found.classes)
        with pytest.raises(
            SourceConnectionError, match="gigecam.*not usable here.*gi_module_that_is_not_installed.*available: good"
        ):
            registry.create_source("gigecam")
    finally:
        for name in [m for m in sys.modules if m.startswith("fake_sources_pkg")]:
            del sys.modules[name]
