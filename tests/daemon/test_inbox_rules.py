"""The inbox rules, against real FIFOs, sockets, devices, links, odd names and racing writers.

Each test drops a real entry into a real folder watched by a real `FolderSource` and checks
that it ends: exactly one item (an error item for anything that is not a readable regular
file), then filed away or left with one report, and never taken again. The deadlines are
safety nets; no test asserts how fast anything happens.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inspectd.analysis.decode import decode_bytes, decode_file
from inspectd.daemon.journal import Journal
from inspectd.daemon.pipeline import file_dedupe_key, journaled_outcome
from inspectd.errors import ImageDecodeError
from inspectd.sources.base import ItemOutcome, SourceItem, StatusUpdate
from inspectd.sources.folder import FolderSource
from inspectd.sources.folder_entries import (
    EntryChangedError,
    EntryRefusedError,
    classify_entry,
    read_at_most,
    read_entry,
)
from inspectd.sources.folder_filing import CLAIM_DIR_NAME, claim
from tests.daemon.conftest import mounted_tmpfs

REPO_ROOT = Path(__file__).resolve().parents[2]
SAFETY_DEADLINE_S = 60.0
STABLE_S = 0.2
SECRET = "TOP-SECRET recipe: 42 parts unobtainium"
IS_ROOT = os.geteuid() == 0


# ---- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    folders = {name: tmp_path / name for name in ("inbox", "done", "quarantine")}
    folders["inbox"].mkdir()
    return folders


@pytest.fixture
def updates() -> list[StatusUpdate]:
    return []


@pytest.fixture
def make_source(
    dirs: dict[str, Path], updates: list[StatusUpdate]
) -> Iterator[Callable[..., FolderSource]]:
    started: list[FolderSource] = []

    def make(**settings: object) -> FolderSource:
        options: dict[str, object] = {
            "path": dirs["inbox"],
            "done_dir": dirs["done"],
            "quarantine_dir": dirs["quarantine"],
            "stable_s": STABLE_S,
            "rescan_interval_s": 0.3,
            "on_status": updates.append,
        }
        options.update(settings)
        source = FolderSource.from_settings(**options)
        started.append(source)
        return source

    yield make
    for source in started:
        source.stop(timeout_s=10.0)


@pytest.fixture
def other_fs(tmp_path: Path) -> Iterator[Path]:
    """A writable folder on another file system than tmp_path: /dev/shm, or a small tmpfs
    mounted for the test (root), or skip."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev:
        folder = Path(tempfile.mkdtemp(prefix="inspectd-other-fs-", dir=shm))
        yield folder
        shutil.rmtree(folder, ignore_errors=True)
        return
    if not IS_ROOT or shutil.which("mount") is None:
        pytest.skip("needs /dev/shm on another file system, or root to mount a tmpfs")
    mount_point = Path(tempfile.mkdtemp(prefix="inspectd-tmpfs-"))
    try:
        with mounted_tmpfs(mount_point):
            yield mount_point
    finally:
        mount_point.rmdir()


def collect(source: FolderSource, n_items: int, ack: ItemOutcome | None = None) -> list[SourceItem]:
    items: list[SourceItem] = []
    deadline = time.monotonic() + SAFETY_DEADLINE_S
    while len(items) < n_items and time.monotonic() < deadline:
        item = source.get(timeout_s=0.5)
        if item is None:
            continue
        items.append(item)
        if ack is not None:
            source.ack(item, ack if item.error is None else ItemOutcome.QUARANTINED)
    assert len(items) == n_items, f"got {len(items)} of {n_items} items; stats {source.stats()}"
    return items


def assert_nothing_more(source: FolderSource, quiet_s: float = 1.5) -> None:
    """No further item over several rescans and stability windows: nothing loops."""
    extra = source.get(timeout_s=quiet_s)
    assert extra is None, f"unexpected extra item {extra.source if extra else ''}: {extra and extra.error}"


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SAFETY_DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def events(updates: list[StatusUpdate], name: str) -> list[StatusUpdate]:
    return [update for update in updates if update.event == name]


def visible(folder: Path) -> list[str]:
    """Entry names in `folder`, hidden ones (claims, temporaries) included."""
    return sorted(os.listdir(folder)) if folder.exists() else []


def quarantine_one(source: FolderSource, dirs: dict[str, Path]) -> SourceItem:
    """Take exactly one item, which must be an error item, and quarantine it."""
    (item,) = collect(source, 1)
    assert item.error and item.payload is None and item.sha256 == ""
    source.ack(item, ItemOutcome.QUARANTINED)
    return item


# ---- the inbox holds only what it should read -----------------------------------------------


def test_symlink_to_dev_zero_gets_one_error_and_is_moved_aside_unfollowed(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    os.symlink("/dev/zero", dirs["inbox"] / "zero.png")
    source = make_source()
    source.start()
    item = quarantine_one(source, dirs)
    assert "symbolic link" in (item.error or "") and "follow_symlinks" in (item.error or "")
    assert_nothing_more(source)
    moved = dirs["quarantine"] / "zero.png"
    assert moved.is_symlink() and os.readlink(moved) == "/dev/zero"
    assert "symbolic link" in (dirs["quarantine"] / "zero.png.reason.txt").read_text()
    assert visible(dirs["inbox"]) == []


@pytest.mark.parametrize("follow_symlinks", [False, True], ids=["default", "follow"])
def test_fifo_never_blocks_the_folder_and_gets_one_error(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path], follow_symlinks: bool
) -> None:
    """A FIFO opened for reading would block until a writer came: it is never opened."""
    os.mkfifo(dirs["inbox"] / "fifo.png")
    source = make_source(follow_symlinks=follow_symlinks)
    source.start()
    (dirs["inbox"] / "after.png").write_bytes(b"the folder still works")
    items = {Path(item.source).name: item for item in collect(source, 2, ack=ItemOutcome.OK)}
    assert items["after.png"].payload == b"the folder still works"
    assert "named pipe" in (items["fifo.png"].error or "")
    assert_nothing_more(source)
    assert stat.S_ISFIFO(os.lstat(dirs["quarantine"] / "fifo.png").st_mode)
    assert visible(dirs["inbox"]) == []


def test_socket_and_directory_named_like_images_get_one_error_each(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(dirs["inbox"] / "socket.png"))
        (dirs["inbox"] / "folder.png").mkdir()
        (dirs["inbox"] / "folder.png" / "inner.png").write_bytes(b"not taken: not recursive")
        source = make_source()
        source.start()
        reasons = {Path(i.source).name: i.error for i in collect(source, 2, ack=ItemOutcome.OK)}
        assert_nothing_more(source)
    finally:
        listener.close()
    assert "a socket" in (reasons["socket.png"] or "")
    assert "a directory" in (reasons["folder.png"] or "")
    assert (dirs["quarantine"] / "folder.png" / "inner.png").read_bytes() == b"not taken: not recursive"
    assert stat.S_ISSOCK(os.lstat(dirs["quarantine"] / "socket.png").st_mode)
    assert visible(dirs["inbox"]) == []


@pytest.mark.skipif(not IS_ROOT, reason="creating device nodes needs root")
def test_character_and_block_devices_are_never_opened(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    os.mknod(dirs["inbox"] / "zero.png", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero
    os.mknod(dirs["inbox"] / "disk.tif", stat.S_IFBLK | 0o600, os.makedev(7, 250))
    source = make_source()
    source.start()
    reasons = {Path(i.source).name: i.error for i in collect(source, 2, ack=ItemOutcome.OK)}
    assert_nothing_more(source)
    assert "a character device" in (reasons["zero.png"] or "")
    assert "a block device" in (reasons["disk.tif"] or "")
    assert stat.S_ISCHR(os.lstat(dirs["quarantine"] / "zero.png").st_mode)


def test_huge_sparse_file_is_refused_without_being_read(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    huge = dirs["inbox"] / "huge.png"
    with open(huge, "wb") as handle:
        handle.truncate(8 << 30)  # 8 GiB of holes: reading it would take the memory
    source = make_source(max_file_bytes=1 << 20)
    source.start()
    item = quarantine_one(source, dirs)
    assert "max_file_bytes" in (item.error or "")
    assert (dirs["quarantine"] / "huge.png").stat().st_size == 8 << 30


def test_the_byte_bound_holds_for_bytes_read_not_for_a_stat(tmp_path: Path) -> None:
    """A pipe has no size to stat: only the count of bytes read can stop it."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"x" * 5000)
        with pytest.raises(EntryRefusedError, match="max_file_bytes"):
            read_at_most(read_end, 1000)
    finally:
        os.close(read_end)
        os.close(write_end)
    exact = tmp_path / "exact.png"
    exact.write_bytes(b"y" * 1000)
    entry = classify_entry(str(exact), inbox=str(tmp_path))
    assert read_entry(entry, str(tmp_path), max_bytes=1000) == b"y" * 1000


def test_a_file_truncated_after_it_was_judged_stable_is_looked_at_again(tmp_path: Path) -> None:
    target = tmp_path / "cut.png"
    target.write_bytes(b"z" * 4096)
    entry = classify_entry(str(target), inbox=str(tmp_path))
    with open(target, "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(EntryChangedError):
        read_entry(entry, str(tmp_path), max_bytes=1 << 20)


def test_file_rewritten_and_truncated_while_taken_ends_with_one_item_of_its_final_bytes(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    source = make_source()
    source.start()
    target = dirs["inbox"] / "rewritten.png"
    for size in (200_000, 50, 300_000, 10):  # each rewrite truncates what was there
        with open(target, "wb") as handle:
            handle.write(bytes([size % 251]) * size)
        time.sleep(STABLE_S / 4)
    (item,) = collect(source, 1, ack=ItemOutcome.OK)
    assert item.payload == bytes([10]) * 10
    assert_nothing_more(source)


def test_symlink_to_a_secret_outside_is_quarantined_as_a_link_and_never_quoted(
    make_source: Callable[..., FolderSource],
    dirs: dict[str, Path],
    tmp_path: Path,
    other_fs: Path,
) -> None:
    """State dir on another file system: the link must move as a link, not as a copy of
    the secret it points at, and no reason may quote the secret."""
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    os.symlink(secret, dirs["inbox"] / "leak.png")
    for follow_symlinks in (False, True):
        source = make_source(quarantine_dir=other_fs / "quarantine", follow_symlinks=follow_symlinks)
        source.start()
        item = quarantine_one(source, dirs)
        source.stop()
        assert SECRET[:10] not in (item.error or "")
        expected = "follow_symlinks is off" if not follow_symlinks else "outside the inbox"
        assert expected in (item.error or "")
        filed = other_fs / "quarantine" / ("leak.png" if not follow_symlinks else "leak-1.png")
        assert filed.is_symlink() and Path(os.readlink(filed)) == secret
        assert SECRET[:10] not in filed.with_name(filed.name + ".reason.txt").read_text()
        os.symlink(secret, dirs["inbox"] / "leak.png")  # the same kind of entry, again
    assert secret.read_text() == SECRET


def test_follow_symlinks_reads_a_target_inside_the_inbox_and_files_the_bytes_analysed(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    store = dirs["inbox"] / "store"
    store.mkdir()
    (store / "frame-0001.png").write_bytes(b"frame one")
    os.symlink("store/frame-0001.png", dirs["inbox"] / "latest.png")
    source = make_source(follow_symlinks=True)
    source.start()
    (item,) = collect(source, 1, ack=ItemOutcome.OK)
    assert item.error is None and item.payload == b"frame one"
    assert item.sha256 == hashlib.sha256(b"frame one").hexdigest()
    done = dirs["done"] / "latest.png"
    assert not done.is_symlink() and done.read_bytes() == b"frame one"
    assert (store / "frame-0001.png").read_bytes() == b"frame one"  # the target stays
    assert visible(dirs["inbox"]) == ["store"]
    assert_nothing_more(source)


def test_follow_symlinks_refuses_loops_dangling_links_and_targets_that_are_not_files(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    inbox = dirs["inbox"]
    (inbox / "sub").mkdir()
    os.mkfifo(inbox / "sub" / "pipe")
    os.symlink("loop-b.png", inbox / "loop-a.png")
    os.symlink("loop-a.png", inbox / "loop-b.png")
    os.symlink("missing.png", inbox / "dangling.png")
    os.symlink("sub", inbox / "dir.png")
    os.symlink("sub/pipe", inbox / "pipe.png")
    (inbox / "done").mkdir()
    (inbox / "done" / "old.png").write_bytes(b"filed before")
    os.symlink("done/old.png", inbox / "again.png")
    source = make_source(follow_symlinks=True, done_dir=inbox / "done")
    source.start()
    reasons = {Path(i.source).name: i.error or "" for i in collect(source, 6, ack=ItemOutcome.OK)}
    assert_nothing_more(source)
    assert "loop" in reasons["loop-a.png"] and "loop" in reasons["loop-b.png"]
    assert "missing target" in reasons["dangling.png"]
    assert "a directory" in reasons["dir.png"]
    assert "named pipe" in reasons["pipe.png"]
    assert "own folders" in reasons["again.png"]
    assert visible(inbox) == ["done", "sub"]
    assert (inbox / "done" / "old.png").read_bytes() == b"filed before"
    assert stat.S_ISFIFO(os.lstat(inbox / "sub" / "pipe").st_mode)  # never touched


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_recursive_inbox_never_takes_files_through_a_linked_directory(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path], tmp_path: Path, polling: bool
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.png").write_bytes(b"not ours")
    os.symlink(outside, dirs["inbox"] / "linked")
    source = make_source(recursive=True, polling=polling, poll_interval_s=0.1)
    source.start()
    (outside / "y.png").write_bytes(b"not ours either")
    (dirs["inbox"] / "ours.png").write_bytes(b"ours")
    (item,) = collect(source, 1, ack=ItemOutcome.OK)
    assert item.payload == b"ours"
    assert_nothing_more(source, quiet_s=2.0)
    assert visible(outside) == ["x.png", "y.png"]


def test_decoder_reasons_never_quote_the_content(tmp_path: Path) -> None:
    for content in (SECRET.encode(), b"<html><body>" + SECRET.encode(), bytes(range(200, 256)) * 3):
        with pytest.raises(ImageDecodeError) as excinfo:
            decode_bytes(content, "leak.png")
        assert SECRET[:10] not in excinfo.value.reason
        assert "c8 c9" not in excinfo.value.reason  # no hex dump of the first bytes either


def test_decode_file_on_a_fifo_or_device_fails_at_once_instead_of_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    for path in (tmp_path / "pipe.png", Path("/dev/zero")):
        with pytest.raises(ImageDecodeError, match="not a regular file"):
            decode_file(path, max_file_bytes=1 << 20)


# ---- every entry ends --------------------------------------------------------------------------


def _journal_callbacks(journal: Journal) -> tuple[Callable[..., object], Callable[[SourceItem], None]]:
    """The daemon's two journal touch points: the source's lookup, the pipeline's commit."""

    def commit(item: SourceItem) -> None:
        verdict = "ERROR" if item.error else "PASS"
        journal.commit({"station": "s", "verdict": verdict, "source": item.source}, file_dedupe_key(*item.key))

    return functools.partial(journaled_outcome, journal), commit


def test_name_that_is_not_utf8_gets_one_verdict_shown_escaped_and_survives_a_restart(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path], tmp_path: Path, updates: list[StatusUpdate]
) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    is_done, commit = _journal_callbacks(journal)
    try:
        raw_names = [b"caf\xe9.png", b"\xff\xfe-scan.png"]
        for raw in raw_names:
            with open(os.path.join(os.fsencode(dirs["inbox"]), raw), "wb") as handle:
                handle.write(raw * 3)
        first = make_source(is_done=is_done)
        first.start()
        items = collect(first, 2)
        for item in items:
            item.source.encode("utf-8")  # valid text everywhere it goes
            assert item.part_id is not None
            item.part_id.encode("utf-8")
            commit(item)
        assert {i.source for i in items} == {str(dirs["inbox"]) + "/caf\\xe9.png",
                                             str(dirs["inbox"]) + "/\\xff\\xfe-scan.png"}
        first.stop()  # journaled, then a crash before the files were moved

        second = make_source(is_done=is_done)
        second.start()
        wait_until(lambda: second.stats().get("already_done") == 2, "the restart to finish both moves")
        assert_nothing_more(second)
    finally:
        journal.close()
    assert sorted(os.listdir(os.fsencode(dirs["done"]))) == sorted(raw_names)
    assert visible(dirs["inbox"]) == []
    assert not events(updates, "journal_lookup_failed")


def test_names_with_newlines_and_control_characters_get_one_item_each(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    names = ["a\nseq=9999 PASS part=A-17.png", "tab\there.png", "esc\x1b[31mred.png", "bell\x07.png"]
    for name in names:
        (dirs["inbox"] / name).write_bytes(name.encode())
    source = make_source()
    source.start()
    items = collect(source, len(names), ack=ItemOutcome.OK)
    assert_nothing_more(source)
    assert sorted(Path(i.source).name for i in items) == sorted(names)
    assert sorted(visible(dirs["done"])) == sorted(names)


def test_names_at_name_max_are_filed_on_another_file_system_without_overlong_temporaries(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path], other_fs: Path, updates: list[StatusUpdate]
) -> None:
    long_ascii = "a" * 251 + ".png"  # 255 bytes, NAME_MAX
    long_utf8 = "é" * 125 + ".png"  # 254 bytes in 129 characters
    source = make_source(done_dir=other_fs / "done", quarantine_dir=other_fs / "quarantine")
    source.start()
    for round_index in range(2):  # the second round clashes: "-1" must still fit
        for name in (long_ascii, long_utf8):
            (dirs["inbox"] / name).write_bytes(f"{name[:3]} round {round_index}".encode())
        for item in collect(source, 2):
            outcome = ItemOutcome.OK if round_index == 0 else ItemOutcome.QUARANTINED
            assert source.ack(item, outcome, "not an image" if round_index else None) is not None
    assert_nothing_more(source)
    assert not events(updates, "move_failed")
    assert visible(dirs["inbox"]) == []
    filed = [*visible(other_fs / "done"), *visible(other_fs / "quarantine")]
    assert len(filed) == 6  # 2 done, 2 quarantined + 2 reasons
    assert all(len(os.fsencode(name)) <= 255 and not name.startswith(".") for name in filed)
    assert sorted(visible(other_fs / "done")) == sorted([long_ascii, long_utf8])


def test_entry_that_cannot_be_moved_is_reported_once_and_never_taken_again(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path], other_fs: Path, updates: list[StatusUpdate]
) -> None:
    """A FIFO cannot move to another file system: one ERROR item, one report, then peace."""
    os.mkfifo(dirs["inbox"] / "stuck.png")
    source = make_source(quarantine_dir=other_fs / "quarantine")
    source.start()
    quarantine_one(source, dirs)
    assert_nothing_more(source, quiet_s=2.0)  # several rescans pass over it
    assert len(events(updates, "move_failed")) == 1
    assert len(events(updates, "file_unreadable")) == 1
    assert visible(dirs["inbox"]) == ["stuck.png"]


def test_symlink_to_a_directory_ends_with_one_error_instead_of_a_read_retry_loop(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path], tmp_path: Path, updates: list[StatusUpdate]
) -> None:
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", dirs["inbox"] / "dir.png")
    source = make_source()
    source.start()
    quarantine_one(source, dirs)
    assert_nothing_more(source)
    assert len(events(updates, "file_unreadable")) == 1
    assert (dirs["quarantine"] / "dir.png").is_symlink()


_UNPRIVILEGED_CHILD = textwrap.dedent(
    """
    import json, os, sys
    from inspectd.sources.base import ItemOutcome
    from inspectd.sources.folder import FolderSource

    root = sys.argv[1]
    source = FolderSource.from_settings(path=root + "/inbox", done_dir=root + "/done",
                                        quarantine_dir=root + "/quarantine", stable_s=0.2, rescan_interval_s=0.3)
    source.start()
    items = []
    while len(items) < 2:
        item = source.get(timeout_s=60.0)
        if item is None:
            break
        items.append({"name": os.path.basename(item.source), "error": item.error})
        source.ack(item, ItemOutcome.QUARANTINED if item.error else ItemOutcome.OK)
    extra = source.get(timeout_s=1.5)
    print(json.dumps({"items": items, "extra": extra is not None, "stats": source.stats()}))
    source.stop()
    """
)


def test_file_that_cannot_be_read_gets_one_error_after_a_few_tries(tmp_path: Path) -> None:
    """EACCES. Root reads any file, so as root the source runs without the capabilities that
    override file permissions (setpriv)."""
    command = [sys.executable, "-c", _UNPRIVILEGED_CHILD, str(tmp_path)]
    if IS_ROOT:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root reads files whatever their mode, and setpriv is not there to drop that")
        command = [setpriv, "--inh-caps=-all", "--ambient-caps=-all",
                   "--bounding-set=-dac_override,-dac_read_search", *command]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    locked = inbox / "locked.png"
    locked.write_bytes(b"cannot be read")
    locked.chmod(0)
    (inbox / "open.png").write_bytes(b"readable")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    by_name = {item["name"]: item["error"] for item in report["items"]}
    assert by_name == {"open.png": None, "locked.png": "cannot read file: Permission denied"}
    assert not report["extra"]
    assert report["stats"]["read_retries"] == 3
    assert (tmp_path / "quarantine" / "locked.png").exists()
    assert visible(inbox) == []


# ---- identity is content, not name ------------------------------------------------------------


def test_name_replaced_while_its_first_frame_is_in_flight_files_each_frame_it_delivered(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    inbox = dirs["inbox"]
    source = make_source()
    source.start()
    (inbox / ".latest.tmp").write_bytes(b"frame 1")
    os.replace(inbox / ".latest.tmp", inbox / "latest.png")
    (first,) = collect(source, 1)
    (inbox / ".latest.tmp").write_bytes(b"frame 2, longer")
    os.replace(inbox / ".latest.tmp", inbox / "latest.png")  # while frame 1 is in the pipeline
    (second,) = collect(source, 1)
    assert (first.payload, second.payload) == (b"frame 1", b"frame 2, longer")
    assert source.ack(first, ItemOutcome.OK) == dirs["done"] / "latest.png"
    assert source.ack(second, ItemOutcome.OK) == dirs["done"] / "latest-1.png"
    assert (dirs["done"] / "latest.png").read_bytes() == b"frame 1"
    assert (dirs["done"] / "latest-1.png").read_bytes() == b"frame 2, longer"
    assert visible(inbox) == []


@pytest.mark.parametrize("move_done", [True, False], ids=["move-done", "leave-in-place"])
def test_atomic_writer_replacing_one_name_many_times_gets_a_verdict_for_exactly_what_is_filed(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path], move_done: bool
) -> None:
    """A writer renames 40 frames over latest.png at random intervals around stable_s while
    a slow consumer acks: every frame taken has one item, and done/ holds exactly the
    bytes of the items, no frame unanalysed and none analysed but lost."""
    inbox = dirs["inbox"]
    source = make_source(move_done=move_done)
    source.start()
    written: list[bytes] = []
    rng = random.Random(14)

    def writer() -> None:
        for index in range(40):
            body = f"frame {index:03d} ".encode() * (1 + index % 7)
            (inbox / ".latest.part").write_bytes(body)
            os.replace(inbox / ".latest.part", inbox / "latest.png")
            written.append(body)
            time.sleep(rng.uniform(0.02, 2.5 * STABLE_S))

    thread = threading.Thread(target=writer)
    thread.start()
    items: list[SourceItem] = []
    while thread.is_alive() or (item := source.get(timeout_s=2.0)) is not None:
        if thread.is_alive():
            item = source.get(timeout_s=0.1)
        if item is None:
            continue
        time.sleep(rng.uniform(0.0, STABLE_S))  # the pipeline takes its time
        source.ack(item, ItemOutcome.OK)
        items.append(item)
    thread.join()
    assert_nothing_more(source)
    payloads = [item.payload for item in items]
    assert len(payloads) == len(set(payloads)), "a frame was delivered twice"
    assert set(payloads) <= set(written) and payloads[-1] == written[-1]
    if move_done:
        filed = sorted((dirs["done"] / name).read_bytes() for name in visible(dirs["done"]))
        assert filed == sorted(payloads)
        assert visible(inbox) == []
    else:
        assert (inbox / "latest.png").read_bytes() == written[-1]
        assert visible(inbox) == ["latest.png"]


def test_claims_go_back_to_their_names_at_a_stop_and_a_crash_leftover_is_finished(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path]
) -> None:
    inbox = dirs["inbox"]
    (inbox / "a.png").write_bytes(b"taken, never acked")
    first = make_source()
    first.start()
    collect(first, 1)
    first.stop()
    assert visible(inbox) == ["a.png"]  # an operator sees every unfinished file by its name
    (inbox / "b.png").write_bytes(b"claimed, then kill -9")
    claim(str(inbox / "b.png"))  # what a crash after the claim leaves
    assert visible(inbox) == [CLAIM_DIR_NAME, "a.png", "b.png"]
    second = make_source()
    second.start()
    items = collect(second, 2, ack=ItemOutcome.OK)
    assert sorted((i.source, i.payload) for i in items) == [
        (str(inbox / "a.png"), b"taken, never acked"),
        (str(inbox / "b.png"), b"claimed, then kill -9"),
    ]
    assert_nothing_more(second)  # the claim and its inbox name are one file, taken once
    assert visible(inbox) == []
    assert visible(dirs["done"]) == ["a.png", "b.png"]


def test_refused_entry_replaced_under_the_same_name_gets_a_verdict_of_its_own(
    make_source: Callable[..., FolderSource], dirs: dict[str, Path], tmp_path: Path
) -> None:
    """No content, so identity is the entry itself: a second FIFO under the old name is not
    'already journaled'."""
    journal = Journal(tmp_path / "journal.sqlite3")
    is_done, commit = _journal_callbacks(journal)
    try:
        source = make_source(is_done=is_done)
        source.start()
        for _ in range(2):
            os.mkfifo(dirs["inbox"] / "pipe.png")
            (item,) = collect(source, 1)
            commit(item)
            source.ack(item, ItemOutcome.QUARANTINED)
        assert_nothing_more(source)
    finally:
        journal.close()
    assert sorted(visible(dirs["quarantine"])) == [
        "pipe-1.png", "pipe-1.png.reason.txt", "pipe.png", "pipe.png.reason.txt"]


# ---- the whole daemon ------------------------------------------------------------------------


def test_daemon_gives_each_hostile_entry_one_verdict_and_stays_healthy(tmp_path: Path, other_fs: Path) -> None:
    """`inspectd run` with its state dir on another file system than the inbox, fed every
    kind of entry at once: one journaled verdict each, no reason quoting a file, no loop."""
    from inspectd.clients.health import health_problems
    from inspectd.data import synth
    from tests.daemon.daemon_process import DaemonProcess

    images = synth.write_dataset(tmp_path / "images", 3, 192, 256, seed=11)
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    (other_fs / "work").mkdir()
    daemon = DaemonProcess(other_fs / "work", inbox=tmp_path / "inbox")
    inbox = daemon.inbox
    os.mkfifo(inbox / "fifo.png")
    os.symlink("/dev/zero", inbox / "zero.png")
    os.symlink(secret, inbox / "leak.png")
    (inbox / "folder.tif").mkdir()
    text = inbox / "notes.png"
    text.write_text(SECRET)
    named = {
        b"caf\xe9.png": images[0],
        b"line\nseq=9999 PASS part=A-17.png": images[1],
        b"a" * 251 + b".png": images[2],
    }
    for raw, image in named.items():
        with open(os.path.join(os.fsencode(inbox), raw), "wb") as handle:
            handle.write(image.read_bytes())
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(inbox / "socket.png"))
    expected = 9
    try:
        daemon.start()
        daemon.wait_processed(expected)
        time.sleep(3.0)  # three rescans: an entry that loops would get a second verdict
        status = daemon.status()
        assert status["last_seq"] == expected, daemon.log_text()
        assert health_problems(status) == []
        (folder_stats,) = [source["stats"] for source in status["sources"]]
        assert folder_stats["left_in_place"] == 3 and folder_stats["pending"] == 0
    finally:
        listener.close()
        exit_code = daemon.terminate()
    assert exit_code == 0
    with sqlite3.connect(daemon.state_dir / "journal.sqlite3") as conn:
        messages = [json.loads(row[0]) for row in conn.execute("SELECT message_json FROM verdicts")]
    by_name = {os.path.basename(m["source"]): m for m in messages}
    assert len(by_name) == expected
    for name in ("fifo.png", "zero.png", "leak.png", "folder.tif", "socket.png", "notes.png"):
        assert by_name[name]["verdict"] == "ERROR" and by_name[name]["reason"], name
    assert by_name["caf\\xe9.png"]["verdict"] in ("PASS", "FAIL")
    assert by_name["line\nseq=9999 PASS part=A-17.png"]["verdict"] in ("PASS", "FAIL")
    assert by_name["a" * 251 + ".png"]["verdict"] in ("PASS", "FAIL")
    assert all(SECRET[:10] not in json.dumps(m) for m in messages)
    done = daemon.state_dir / "done"
    assert sorted(os.listdir(os.fsencode(done))) == sorted(named)
    # what could not cross to the other file system stayed where it was, reported once
    assert sorted(visible(inbox)) == ["fifo.png", "folder.tif", "socket.png"]
    quarantined = visible(daemon.state_dir / "quarantine")
    assert {"zero.png", "leak.png", "notes.png"} <= set(quarantined)
    assert (daemon.state_dir / "quarantine" / "zero.png").is_symlink()


def test_follow_symlinks_is_a_folder_source_config_key_that_reaches_the_source(tmp_path: Path) -> None:
    from inspectd import config
    from inspectd.sources.registry import create_source

    cfg = config.parse_object({"sources": [{"kind": "folder", "path": str(tmp_path), "follow_symlinks": True}]})
    (folder_cfg,) = cfg.sources
    assert folder_cfg.follow_symlinks is True
    assert config.parse_object({"sources": [{"kind": "folder", "path": str(tmp_path)}]}).sources[0].follow_symlinks is False
    source = create_source("folder", **folder_cfg.model_dump(exclude={"kind", "id"}))
    assert isinstance(source, FolderSource) and source.follow_symlinks is True
