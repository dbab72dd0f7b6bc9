"""The delivery cursor: a real file, replaced atomically, refusing to guess when corrupt."""

from __future__ import annotations

import json
import os

import pytest

from inspectd.bridges.cursor import Cursor, CursorError


def test_missing_file_means_nothing_delivered(tmp_path):
    cursor = Cursor(tmp_path / "c.json")
    assert cursor.state is None and cursor.next_from_seq() is None
    assert not cursor.is_delivered("s1", 1, 1)


def test_save_survives_reopening_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "state" / "c.json"
    cursor = Cursor(path)
    for seq in range(1, 6):
        cursor.save(station="s1", epoch=2, seq=seq)
    reopened = Cursor(path)
    assert (reopened.last_seq, reopened.station, reopened.state.epoch) == (5, "s1", 2)
    assert reopened.next_from_seq() == 6
    assert os.listdir(path.parent) == ["c.json"]
    assert json.loads(path.read_text())["last_seq"] == 5


def test_duplicates_are_recognised_on_station_epoch_and_seq(tmp_path):
    cursor = Cursor(tmp_path / "c.json")
    cursor.save(station="s1", epoch=3, seq=10)
    assert cursor.is_delivered("s1", 3, 10)
    assert cursor.is_delivered("s1", 3, 4)
    assert not cursor.is_delivered("s1", 3, 11)  # after a daemon restart, seq goes on in the epoch
    assert not cursor.is_delivered("s1", 1, 4)  # another epoch: a new journal's seq 4
    assert not cursor.is_delivered("s1", 7, 4)  # larger or smaller, any other epoch is a new stream
    assert cursor.is_delivered("s1", None, 4)  # a message without an epoch: seq alone decides
    assert not cursor.is_delivered("other", 3, 5)


def test_a_cursor_from_before_epochs_named_streams_is_read_without_its_epoch(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"format": 1, "station": "s1", "epoch": 4, "last_seq": 10, "updated_utc": ""}))
    cursor = Cursor(path)
    assert (cursor.last_seq, cursor.state.epoch) == (10, None)
    assert cursor.is_delivered("s1", 3767274634948115, 10)  # format 1 epochs counted starts: seq decides


def test_an_interrupted_write_leaves_the_previous_cursor(tmp_path):
    path = tmp_path / "c.json"
    Cursor(path).save(station="s1", epoch=1, seq=7)
    (tmp_path / ".c.json.999.tmp").write_text('{"last_seq": 8')  # a write cut short by power loss
    assert Cursor(path).last_seq == 7


@pytest.mark.parametrize("content", ["", "{not json", "[]", '{"station": "s1"}', '{"last_seq": -1}',
                                     '{"last_seq": "7"}'])
def test_a_corrupt_cursor_is_refused_not_silently_reset(tmp_path, content):
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(CursorError, match="not valid"):
        Cursor(path)


def test_an_unwritable_location_raises_cursor_error(tmp_path):
    cursor = Cursor(tmp_path / "state" / "c.json")
    (tmp_path / "state").write_text("a file where the state folder should be")
    with pytest.raises(CursorError, match="cannot write"):
        cursor.save(station=None, epoch=None, seq=1)
    assert cursor.last_seq is None  # not recorded as delivered
