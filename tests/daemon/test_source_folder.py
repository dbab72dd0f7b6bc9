"""Folder source against real folders, real watchdog observers and real threads.

The deadlines below are safety nets so a broken source fails instead of hanging; no test
asserts how fast anything happens.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inspectd.errors import ConfigError, SourceConnectionError
from inspectd.sources.base import (
    FileKey,
    ItemOutcome,
    SourceItem,
    SourceState,
    StatusUpdate,
)
from inspectd.sources.folder import FolderSource, unique_name

REPO_ROOT = Path(__file__).resolve().parents[2]
SAFETY_DEADLINE_S = 60.0
STABLE_S = 0.2


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    folders = {name: tmp_path / name for name in ("inbox", "done", "quarantine")}
    folders["inbox"].mkdir()
    return folders


@pytest.fixture
def make_source(dirs: dict[str, Path]) -> Iterator[Callable[..., FolderSource]]:
    started: list[FolderSource] = []

    def make(**settings: object) -> FolderSource:
        options: dict[str, object] = {
            "path": dirs["inbox"],
            "done_dir": dirs["done"],
            "quarantine_dir": dirs["quarantine"],
            "stable_s": STABLE_S,
            "rescan_interval_s": 0.5,
        }
        options.update(settings)
        source = FolderSource.from_settings(**options)
        started.append(source)
        return source

    yield make
    for source in started:
        source.stop(timeout_s=10.0)


def collect(source: FolderSource, n_items: int, ack: ItemOutcome | None = None) -> list[SourceItem]:
    """Take `n_items` (acking each if asked); fails if they do not come before the deadline."""
    items: list[SourceItem] = []
    deadline = time.monotonic() + SAFETY_DEADLINE_S
    while len(items) < n_items and time.monotonic() < deadline:
        item = source.get(timeout_s=0.5)
        if item is None:
            continue
        items.append(item)
        if ack is not None:
            source.ack(item, ack)
    assert len(items) == n_items, f"got {len(items)} of {n_items} items; stats {source.stats()}"
    return items


def assert_nothing_more(source: FolderSource, quiet_s: float = 1.0) -> None:
    """No further item within a window covering stability checks and two rescans."""
    extra = source.get(timeout_s=quiet_s)
    assert extra is None, f"unexpected extra item {extra.source if extra else ''}"


def write_files(folder: Path, n_files: int, prefix: str = "f") -> dict[str, bytes]:
    contents = {}
    for index in range(n_files):
        body = f"{prefix}-{index}".encode() * 3
        path = folder / f"{prefix}{index:05d}.png"
        path.write_bytes(body)
        contents[str(path)] = body
    return contents


# ---- delivery -----------------------------------------------------------------------------


def test_each_dropped_file_is_delivered_once_with_its_bytes(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    source = make_source()
    source.start()
    assert source.state is SourceState.RUNNING
    assert source.stats()["observer"] == "inotify"
    contents = write_files(dirs["inbox"], 25)
    items = collect(source, 25, ack=ItemOutcome.OK)
    assert_nothing_more(source)
    assert sorted(item.source for item in items) == sorted(contents)
    for item in items:
        assert item.kind == "file" and item.payload == contents[item.source]
        assert item.sha256 == hashlib.sha256(contents[item.source]).hexdigest()
        assert item.path == Path(item.source) and item.part_id == Path(item.source).stem
        assert item.capture_time.tzinfo is not None
        assert item.metadata["relative_path"] == Path(item.source).name
    assert sorted(p.name for p in dirs["done"].iterdir()) == sorted(Path(p).name for p in contents)
    assert list(dirs["inbox"].iterdir()) == []
    stats = source.stats()
    assert stats["items"] == 25 and stats["drops"] == 0 and stats["in_flight"] == 0


def test_file_written_slowly_in_chunks_is_delivered_only_complete(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    """Pauses longer than stable_s: inotify knows a write is pending until close-after-write."""
    source = make_source()
    source.start()
    chunks = [bytes([index]) * 4096 for index in range(5)]
    target = dirs["inbox"] / "slow.tif"
    early: list[SourceItem | None] = []
    with open(target, "wb") as handle:
        # created empty and left so for a while: still open in its writer, not a 0-byte file
        early.append(source.get(timeout_s=STABLE_S * 1.75))
        for chunk in chunks:
            handle.write(chunk)
            handle.flush()
            early.append(source.get(timeout_s=STABLE_S * 1.75))
    item = collect(source, 1, ack=ItemOutcome.OK)[0]
    assert early == [None] * (len(chunks) + 1)
    assert item.payload == b"".join(chunks)
    assert_nothing_more(source)


def test_file_never_closed_is_taken_after_max_open_wait_with_a_warning(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    """A writer that crashed (or a close event lost in an overflow) must not block a file forever."""
    updates: list[StatusUpdate] = []
    source = make_source(max_open_wait_s=1.5, on_status=updates.append)
    source.start()
    with open(dirs["inbox"] / "orphan.png", "wb") as handle:
        handle.write(b"written, never closed")
        handle.flush()
        assert source.get(timeout_s=STABLE_S * 3) is None  # stable, but a write is pending
        item = collect(source, 1, ack=ItemOutcome.OK)[0]
    assert item.payload == b"written, never closed"
    assert [u.event for u in updates].count("no_close_event") == 1


def test_file_closed_and_reopened_to_append_is_delivered_once_complete(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    source = make_source()
    source.start()
    target = dirs["inbox"] / "append.png"
    parts = [b"header" * 100, b"body" * 1000, b"trailer" * 10]
    for part in parts:
        with open(target, "ab") as handle:
            handle.write(part)
        time.sleep(STABLE_S / 4)  # reopened well inside the stability window
    item = collect(source, 1, ack=ItemOutcome.OK)[0]
    assert item.payload == b"".join(parts)
    assert_nothing_more(source)


def test_hidden_temp_and_excluded_files_are_ignored_until_renamed(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    source = make_source(exclude=("*_ref.png",))
    source.start()
    inbox = dirs["inbox"]
    for name in (".hidden.png", "a.png.part", "b.tmp", "c.png~", "notes.txt", "d_ref.png"):
        (inbox / name).write_bytes(b"ignored")
    assert_nothing_more(source)
    os.rename(inbox / "a.png.part", inbox / "a.png")
    item = collect(source, 1, ack=ItemOutcome.OK)[0]
    assert item.source == str(inbox / "a.png") and item.payload == b"ignored"
    assert_nothing_more(source)


def test_upper_case_extensions_match_the_default_include(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    (dirs["inbox"] / "SCAN01.TIF").write_bytes(b"tif")
    source = make_source()
    source.start()
    assert collect(source, 1)[0].part_id == "SCAN01"


def test_files_present_before_start_are_found_by_the_initial_rescan(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    contents = write_files(dirs["inbox"], 40)
    source = make_source(rescan_interval_s=600.0)  # only the initial scan can find them
    source.start()
    items = collect(source, 40, ack=ItemOutcome.OK)
    assert sorted(item.source for item in items) == sorted(contents)
    assert_nothing_more(source)


def test_burst_while_the_consumer_is_not_consuming_is_delivered_exactly_once(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    """The watcher blocks on a full 2-slot buffer while 1,000 files arrive: a folder waits."""
    source = make_source(buffer_size=2)
    source.start()
    contents = write_files(dirs["inbox"], 1000)
    time.sleep(1.0)  # nobody consumes meanwhile: the source must block, not drop
    assert source.stats()["drops"] == 0
    items = collect(source, 1000, ack=ItemOutcome.OK)
    assert_nothing_more(source)
    assert sorted(item.source for item in items) == sorted(contents)
    assert source.stats()["drops"] == 0


def test_files_whose_events_never_arrive_are_found_by_the_periodic_rescan(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    source = make_source(rescan_interval_s=0.3)
    source.start()
    # Remove the inotify watch while the observer thread lives on: from now on the handler
    # is told nothing, as when the kernel queue overflows.
    assert source._observer is not None
    source._observer.unschedule_all()
    contents = write_files(dirs["inbox"], 300)
    items = collect(source, 300, ack=ItemOutcome.OK)
    assert_nothing_more(source)
    assert sorted(item.source for item in items) == sorted(contents)
    assert source.stats()["found_without_event"] == 300


def test_polling_mode_delivers_complete_files(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    source = make_source(polling=True, poll_interval_s=0.1, stable_s=0.5)
    source.start()
    assert source.stats()["observer"] == "polling"
    contents = write_files(dirs["inbox"], 10)
    target = dirs["inbox"] / "chunked.png"
    with open(target, "wb") as handle:
        for index in range(4):  # gaps shorter than stable_s: the contract in polling mode
            handle.write(bytes([index]) * 1000)
            handle.flush()
            time.sleep(0.1)
    items = collect(source, 11, ack=ItemOutcome.OK)
    assert_nothing_more(source)
    by_source = {item.source: item.payload for item in items}
    assert by_source.pop(str(target)) == b"".join(bytes([i]) * 1000 for i in range(4))
    assert by_source == contents


# ---- ack: done, quarantine, name clashes, journal -----------------------------------------


def test_ack_moves_to_done_and_quarantine_with_reason_and_never_overwrites(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    dirs["done"].mkdir()
    dirs["quarantine"].mkdir()
    (dirs["done"] / "a.png").write_bytes(b"older a")
    (dirs["quarantine"] / "b.png").write_bytes(b"older b")
    (dirs["quarantine"] / "b.png.reason.txt").write_text("older reason\n")
    (dirs["quarantine"] / "b-1.png.reason.txt").write_text("orphan reason\n")
    source = make_source()
    source.start()
    (dirs["inbox"] / "a.png").write_bytes(b"new a")
    (dirs["inbox"] / "b.png").write_bytes(b"new b")
    items = {Path(item.source).name: item for item in collect(source, 2)}

    done_path = source.ack(items["a.png"], ItemOutcome.OK)
    quarantined = source.ack(items["b.png"], ItemOutcome.QUARANTINED, "truncated PNG: no IEND")
    assert done_path == dirs["done"] / "a-1.png" and done_path.read_bytes() == b"new a"
    assert (dirs["done"] / "a.png").read_bytes() == b"older a"
    assert quarantined == dirs["quarantine"] / "b-2.png"
    assert quarantined.read_bytes() == b"new b"
    assert (dirs["quarantine"] / "b-2.png.reason.txt").read_text() == "truncated PNG: no IEND\n"
    assert (dirs["quarantine"] / "b.png.reason.txt").read_text() == "older reason\n"
    assert (dirs["quarantine"] / "b-1.png.reason.txt").read_text() == "orphan reason\n"
    assert list(dirs["inbox"].iterdir()) == []
    stats = source.stats()
    assert stats["done"] == 1 and stats["quarantined"] == 1 and stats["in_flight"] == 0


def test_same_name_dropped_twice_lands_twice_in_done(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    source = make_source()
    source.start()
    for body in (b"first", b"second", b"third"):
        (dirs["inbox"] / "same.png").write_bytes(body)
        collect(source, 1, ack=ItemOutcome.OK)
    names = {p.name: p.read_bytes() for p in dirs["done"].iterdir()}
    assert names == {"same.png": b"first", "same-1.png": b"second", "same-2.png": b"third"}


def test_unique_name_keeps_the_extension() -> None:
    assert [unique_name("x.tar.png", i) for i in range(3)] == [
        "x.tar.png",
        "x.tar-1.png",
        "x.tar-2.png",
    ]
    assert unique_name(".png", 1) == ".png-1"


def test_left_in_place_files_are_not_redelivered_until_their_content_changes(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    source = make_source(move_done=False, rescan_interval_s=0.2)
    source.start()
    target = dirs["inbox"] / "keep.png"
    target.write_bytes(b"version 1")
    first = collect(source, 1, ack=ItemOutcome.OK)[0]
    assert target.exists() and first.payload == b"version 1"
    assert_nothing_more(source)  # several rescans pass over the settled file
    target.write_bytes(b"version 2")
    second = collect(source, 1, ack=ItemOutcome.OK)[0]
    assert second.payload == b"version 2" and second.sha256 != first.sha256
    assert_nothing_more(source)


def test_journaled_files_are_not_redelivered_after_a_restart(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    """The journal (here a set, as the daemon's is_done callable sees it) decides."""
    journal: dict[FileKey, ItemOutcome] = {}

    def is_done(key: FileKey) -> ItemOutcome | None:
        return journal.get(key)

    contents = write_files(dirs["inbox"], 10)
    first = make_source(is_done=is_done)
    first.start()
    items = collect(first, 10)
    # the pipeline journals every verdict but crashes before moving 6 of the files
    for index, item in enumerate(items):
        outcome = ItemOutcome.QUARANTINED if index == 0 else ItemOutcome.OK
        journal[FileKey(item.source, item.sha256)] = outcome
        if index >= 6:
            first.ack(item, outcome)
    first.stop()
    (dirs["inbox"] / "new.png").write_bytes(b"arrived while down")

    second = make_source(is_done=is_done)
    second.start()
    fresh = collect(second, 1, ack=ItemOutcome.OK)
    assert [item.source for item in fresh] == [str(dirs["inbox"] / "new.png")]
    assert_nothing_more(second)
    assert second.stats()["already_done"] == 6
    assert list(dirs["inbox"].iterdir()) == []
    assert len(list(dirs["done"].iterdir())) == 10
    quarantined_name = Path(items[0].source).name
    reason = (dirs["quarantine"] / f"{quarantined_name}.reason.txt").read_text()
    assert "journaled as quarantined" in reason
    assert len(contents) == 10


def _other_file_system_folder(near: Path) -> Path:
    """A writable folder on another file system than `near` (/dev/shm), or skip."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK) or shm.stat().st_dev == near.stat().st_dev:
        pytest.skip("needs a writable /dev/shm on another file system than the test folder")
    return Path(tempfile.mkdtemp(prefix="inspectd-done-", dir=shm))


@pytest.mark.parametrize("done_elsewhere", [False, True], ids=["hard-link", "copy"])
def test_move_cut_short_by_a_crash_is_finished_not_repeated_after_a_restart(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path], done_elsewhere: bool
) -> None:
    """kill -9 between claiming done/<name> and unlinking the original leaves both; the
    restart finishes that move instead of filing a second `-1` twin."""
    done = _other_file_system_folder(dirs["inbox"]) if done_elsewhere else dirs["done"]
    try:
        journal: dict[FileKey, ItemOutcome] = {}
        write_files(dirs["inbox"], 2)
        first = make_source(done_dir=done, is_done=journal.get)
        first.start()
        items = sorted(collect(first, 2), key=lambda item: item.source)
        first.stop()
        done.mkdir(exist_ok=True)
        for item in items:
            journal[FileKey(item.source, item.sha256)] = ItemOutcome.OK
            interrupted = done / Path(item.source).name
            if done_elsewhere:
                shutil.copy2(item.source, interrupted)  # the claimed copy, times kept
            else:
                os.link(item.source, interrupted)
        # a different file already filed under the second name is never taken for a twin
        second_name = done / Path(items[1].source).name
        second_name.unlink()
        second_name.write_bytes(b"an older, different file")

        second = make_source(done_dir=done, is_done=journal.get)
        second.start()
        deadline = time.monotonic() + SAFETY_DEADLINE_S
        while any(dirs["inbox"].iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(dirs["inbox"].iterdir()) == []
        assert second.stats()["already_done"] == 2
        filed = {path.name: path.read_bytes() for path in done.iterdir()}
        first_name, other_name = (Path(item.source).name for item in items)
        assert filed == {
            first_name: items[0].payload,
            other_name: b"an older, different file",
            unique_name(other_name, 1): items[1].payload,
        }
    finally:
        if done_elsewhere:
            shutil.rmtree(done, ignore_errors=True)


def test_quarantine_cut_short_after_its_reason_keeps_that_reason_after_a_restart(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    journal: dict[FileKey, ItemOutcome] = {}
    (dirs["inbox"] / "bad.png").write_bytes(b"not a png")
    first = make_source(is_done=journal.get)
    first.start()
    (item,) = collect(first, 1)
    first.stop()
    journal[FileKey(item.source, item.sha256)] = ItemOutcome.QUARANTINED
    dirs["quarantine"].mkdir()
    os.link(item.source, dirs["quarantine"] / "bad.png")  # claimed, reason written, then kill -9
    (dirs["quarantine"] / "bad.png.reason.txt").write_text("not an image: unknown signature\n")

    second = make_source(is_done=journal.get)
    second.start()
    deadline = time.monotonic() + SAFETY_DEADLINE_S
    while any(dirs["inbox"].iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(dirs["inbox"].iterdir()) == []
    assert {path.name: path.read_bytes() for path in dirs["quarantine"].iterdir()} == {
        "bad.png": b"not a png",
        "bad.png.reason.txt": b"not an image: unknown signature\n",
    }


def test_ack_across_file_systems_copies_under_a_free_name_and_leaves_no_temporary(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    done = _other_file_system_folder(dirs["inbox"])
    try:
        (done / "a.png").write_bytes(b"older a")
        source = make_source(done_dir=done)
        source.start()
        (dirs["inbox"] / "a.png").write_bytes(b"new a")
        (dirs["inbox"] / "b.png").write_bytes(b"new b")
        for item in collect(source, 2):
            source.ack(item, ItemOutcome.OK)
        filed = {path.name: path.read_bytes() for path in done.iterdir()}
        assert filed == {"a.png": b"older a", "a-1.png": b"new a", "b.png": b"new b"}
        assert list(dirs["inbox"].iterdir()) == []
    finally:
        shutil.rmtree(done, ignore_errors=True)


def test_oversized_file_is_handed_on_as_an_error_item(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    updates: list[StatusUpdate] = []
    source = make_source(max_file_bytes=1000, on_status=updates.append)
    source.start()
    (dirs["inbox"] / "huge.png").write_bytes(b"\0" * 5000)
    item = collect(source, 1)[0]
    assert item.payload is None and item.pixels is None and "max_file_bytes" in (item.error or "")
    destination = source.ack(item, ItemOutcome.QUARANTINED)
    assert destination == dirs["quarantine"] / "huge.png"
    reason = (dirs["quarantine"] / "huge.png.reason.txt").read_text()
    assert "5000 bytes" in reason
    events = {update.event for update in updates}
    assert {"file_unreadable", "file_quarantined"} <= events


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_retried_then_handed_on_as_an_error_item(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    source = make_source()
    target = dirs["inbox"] / "locked.png"
    target.write_bytes(b"secret")
    target.chmod(0)
    source.start()
    item = collect(source, 1)[0]
    assert item.error and "cannot read" in item.error
    assert source.stats()["read_retries"] >= 3


# ---- part ids, recursion ------------------------------------------------------------------


def test_part_id_pattern(make_source: Callable[..., FolderSource], dirs: dict[str, Path]) -> None:
    source = make_source(part_id_pattern=r"^(?P<part>[A-Z]+-\d+)_field\d+")
    source.start()
    (dirs["inbox"] / "AB-12_field3.png").write_bytes(b"1")
    (dirs["inbox"] / "overview.png").write_bytes(b"2")
    parts = {Path(item.source).name: item.part_id for item in collect(source, 2)}
    assert parts == {"AB-12_field3.png": "AB-12", "overview.png": None}
    with pytest.raises(ConfigError, match="named group"):
        FolderSource.from_settings(path=dirs["inbox"], part_id_pattern=r"^(\d+)")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        FolderSource.from_settings(path=dirs["inbox"], part_id_pattern=r"(?P<part>")


def test_recursive_mode_takes_subfolders_but_never_done_or_quarantine(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    inbox = dirs["inbox"]
    (inbox / "lot7").mkdir()
    (inbox / ".cache").mkdir()
    (inbox / "lot7" / "early.png").write_bytes(b"early")
    (inbox / ".cache" / "thumb.png").write_bytes(b"thumb")
    # done/ and quarantine/ inside the watched folder (the defaults)
    source = make_source(recursive=True, done_dir=None, quarantine_dir=None)
    source.start()
    (inbox / "lot8").mkdir()
    time.sleep(0.2)  # let the observer add its watch on the new folder
    (inbox / "lot8" / "late.png").write_bytes(b"late")
    (inbox / "top.png").write_bytes(b"top")
    items = collect(source, 3)
    assert sorted(item.metadata["relative_path"] for item in items) == [
        "lot7/early.png",
        "lot8/late.png",
        "top.png",
    ]
    for item in items:
        source.ack(item, ItemOutcome.OK if item.payload != b"top" else ItemOutcome.QUARANTINED)
    assert_nothing_more(source)  # files now under inbox/done and inbox/quarantine
    assert (inbox / "done" / "lot7" / "early.png").read_bytes() == b"early"
    assert (inbox / "quarantine" / "top.png").exists()


def test_non_recursive_mode_ignores_subfolders(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    (dirs["inbox"] / "sub").mkdir()
    (dirs["inbox"] / "sub" / "deep.png").write_bytes(b"deep")
    source = make_source()
    source.start()
    assert_nothing_more(source)


# ---- lifecycle ----------------------------------------------------------------------------


def test_missing_folder_fails_start_with_a_connection_error(tmp_path: Path) -> None:
    updates: list[StatusUpdate] = []
    source = FolderSource.from_settings(path=tmp_path / "absent", on_status=updates.append)
    with pytest.raises(SourceConnectionError, match="absent"):
        source.start()
    assert source.state is SourceState.ERROR
    assert updates[-1].event == "state_changed" and updates[-1].payload["new"] == "ERROR"
    source.stop()
    assert source.state is SourceState.ENDED


def test_stop_returns_while_the_watcher_is_blocked_on_a_full_buffer(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    source = make_source(buffer_size=1)
    source.start()
    write_files(dirs["inbox"], 5)
    collect(source, 1)  # the watcher is now blocked on the next put
    time.sleep(STABLE_S * 2)
    worker = source._worker
    source.stop(timeout_s=10.0)
    assert worker is not None and not worker.is_alive()
    assert source.state is SourceState.ENDED
    # queued items stay takeable after stop, and an ack still files them away
    queued = source.get(timeout_s=0)
    assert queued is not None
    assert source.ack(queued, ItemOutcome.OK) is not None


def test_folder_removed_and_recreated_reconnects(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    updates: list[StatusUpdate] = []
    source = make_source(rescan_interval_s=0.2, on_status=updates.append)
    source.start()
    shutil.rmtree(dirs["inbox"])
    deadline = time.monotonic() + SAFETY_DEADLINE_S
    while source.state is not SourceState.RECONNECTING and time.monotonic() < deadline:
        time.sleep(0.05)
    assert source.state is SourceState.RECONNECTING
    dirs["inbox"].mkdir()
    (dirs["inbox"] / "back.png").write_bytes(b"back")
    item = collect(source, 1, ack=ItemOutcome.OK)[0]
    assert item.payload == b"back"
    assert source.state is SourceState.RUNNING
    assert source.stats()["reconnects"] >= 1
    states = [u.payload["new"] for u in updates if u.event == "state_changed"]
    assert states[:4] == ["INITIALISING", "RUNNING", "RECONNECTING", "RUNNING"]


def test_restart_after_stop(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    source = make_source()
    source.start()
    source.stop()
    (dirs["inbox"] / "later.png").write_bytes(b"later")
    source.start()
    assert collect(source, 1)[0].payload == b"later"


# ---- a whole process stopped with SIGSTOP: the kernel's inotify queue overflows -------------

_CHILD = textwrap.dedent(
    """
    import json, logging, sys
    from inspectd.sources.base import ItemOutcome
    from inspectd.sources.folder import FolderSource

    # log_level ERROR: watchdog's overflow warning is never even formatted, so the overflow
    # must be heard from the event stream itself
    logging.basicConfig(level=logging.ERROR)
    inbox, done, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
    source = FolderSource.from_settings(path=inbox, done_dir=done, stable_s=0.2, rescan_interval_s=1.0)
    source.start()
    print("ready", flush=True)
    seen = 0
    while seen < expected:
        item = source.get(timeout_s=60.0)
        if item is None:
            break
        print(item.source, flush=True)
        source.ack(item, ItemOutcome.OK)
        seen += 1
    extra = source.get(timeout_s=2.5)  # covers two rescans: a duplicate would show here
    if extra is not None:
        print(extra.source, flush=True)
    print("stats " + json.dumps(source.stats()), flush=True)
    source.stop()
    """
)


def _burst_while_sigstopped(tmp_path: Path, n_files: int) -> None:
    inbox, done = tmp_path / "inbox", tmp_path / "done"
    inbox.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(inbox), str(done), str(n_files)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        os.kill(child.pid, signal.SIGSTOP)
        contents = write_files(inbox, n_files)
        os.kill(child.pid, signal.SIGCONT)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(child.stdout or []), daemon=True)
        reader.start()
        child.wait(timeout=300)
        reader.join(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0
    stats = json.loads(lines[-1].removeprefix("stats "))
    delivered = [line.strip() for line in lines[:-1]]
    assert len(delivered) == len(set(delivered)), "a file was delivered twice"
    assert sorted(delivered) == sorted(contents)
    assert stats["drops"] == 0
    assert len(list(done.iterdir())) == n_files
    queue_events = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if n_files * 4 > queue_events:  # create, modify, close-write (+open) per file
        assert stats["event_overflows"] >= 1
        assert stats["found_without_event"] > 0


def test_burst_while_process_sigstopped_is_delivered_exactly_once(tmp_path: Path) -> None:
    """~4 inotify events per file: 5,000 files overflow the default 16,384-event queue."""
    _burst_while_sigstopped(tmp_path, 5000)


@pytest.mark.slow
def test_big_burst_while_process_sigstopped_is_delivered_exactly_once(tmp_path: Path) -> None:
    _burst_while_sigstopped(tmp_path, 20_000)
