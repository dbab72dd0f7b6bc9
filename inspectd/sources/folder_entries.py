"""The inbox rules: what an entry of a watched folder is, and how its bytes are read.

An inbox is written by people and machines that make mistakes (a symbolic link to
/dev/zero, a named pipe, a directory called scan.png, a name that is not UTF-8), so
nothing here trusts an entry:

* The decision is made from `lstat`, before anything is opened: only a regular file is
  read. Anything else gets a `refusal` (the reason of its ERROR verdict) and is never
  opened, so a FIFO cannot block the folder thread and a device cannot feed it endless
  bytes.
* A symbolic link is refused unless `follow_symlinks` is on. Then its target must resolve
  (no loop, not dangling) to a regular file inside the inbox, outside done/quarantine and
  the claim area, and it is opened one path component at a time without following any
  further link, so the link cannot be re-pointed between the check and the open.
* Every open is non-blocking and refuses a link in the last component
  (`O_NONBLOCK | O_NOFOLLOW`); `fstat` after the open confirms a regular file; reading
  stops one byte past `max_file_bytes`, so the limit holds for the bytes actually read,
  also for a file that grows while it is read.
* A reason never quotes the file's content, and a name is shown with `display_path`
  (valid text whatever bytes the name holds).

Example::

    >>> import tempfile, pathlib
    >>> inbox = pathlib.Path(tempfile.mkdtemp())
    >>> os.mkfifo(inbox / "pipe.png")
    >>> classify_entry(str(inbox / "pipe.png"), inbox=str(inbox)).refusal
    'a named pipe (FIFO), not a regular file; it was not opened'
    >>> _ = (inbox / "a.png").write_bytes(b"12345")
    >>> entry = classify_entry(str(inbox / "a.png"), inbox=str(inbox))
    >>> entry.refusal is None, read_entry(entry, str(inbox), max_bytes=10)
    (True, b'12345')
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from inspectd.errors import InspectdError

# (st_dev, st_ino, st_size, st_mtime_ns) of the entry, plus the same four of a followed
# link's target: a new inode under the same name is a different entry.
Signature = tuple[int, ...]

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_CHUNK = 1 << 20
_MAX_READ = 0x7FFFF000  # Linux returns at most this many bytes from one read()


class EntryRefusedError(InspectdError):
    """The inbox entry will not be analysed; the message is the reason of its ERROR verdict."""


class EntryChangedError(InspectdError):
    """The entry changed while it was read (a writer still at work): read it again later."""


@dataclass(frozen=True)
class Entry:
    """One inbox entry as `lstat` found it: `refusal` says why it will not be read."""

    path: str
    st: os.stat_result
    target: str | None = None  # a followed symbolic link: its resolved regular file
    target_st: os.stat_result | None = None
    refusal: str | None = None

    @property
    def signature(self) -> Signature:
        own = _four(self.st)
        return own if self.target_st is None else own + _four(self.target_st)

    @property
    def entry_id(self) -> str:
        """Which entry this is, for one without readable content (its journal identity).

        Type, device, inode, size and modification time: a FIFO or unreadable file put
        under an old name is a new entry with a verdict of its own (a reused inode number
        comes with a new time), while claiming or moving an entry changes none of these.
        """
        st = self.st
        return (
            f"entry:{kind_name(st.st_mode)}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
        )


def _four(st: os.stat_result) -> Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def kind_name(mode: int) -> str:
    """Short name of a file type, for identities and logs.

    >>> kind_name(stat.S_IFIFO), kind_name(stat.S_IFREG)
    ('fifo', 'file')
    """
    for test, name in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "char-device"),
        (stat.S_ISBLK, "block-device"),
    ):
        if test(mode):
            return name
    return "other"


_DESCRIPTIONS = {
    "directory": "a directory",
    "symlink": "a symbolic link",
    "fifo": "a named pipe (FIFO)",
    "socket": "a socket",
    "char-device": "a character device",
    "block-device": "a block device",
    "other": "a special file",
}


def describe_kind(mode: int) -> str:
    """How a reason names a file type.

    >>> describe_kind(stat.S_IFCHR)
    'a character device'
    """
    return _DESCRIPTIONS.get(kind_name(mode), "a regular file")


def display_path(path: str) -> str:
    """`path` as valid text: unchanged when its bytes are UTF-8, else each byte that is not
    shown as `\\xNN`, so journals, messages and logs can carry it.

    >>> display_path(os.fsdecode(b"/in/caf\\xe9.png"))
    '/in/caf\\\\xe9.png'
    >>> display_path("/in/café.png")
    '/in/café.png'
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = os.fsencode(path)
        except UnicodeEncodeError:  # a lone surrogate that no file name produces
            return path.encode("utf-8", "backslashreplace").decode("ascii")
        return raw.decode("utf-8", "backslashreplace")
    return path


def is_within(path: str, folder: str) -> bool:
    """True when `path` lies strictly below `folder` (both absolute, resolved)."""
    folder = folder.rstrip(os.sep) or os.sep
    return path != folder and os.path.commonpath([path, folder]) == folder


def classify_entry(
    path: str,
    *,
    inbox: str,
    origin_dir: str | None = None,
    follow_symlinks: bool = False,
    forbidden: Iterable[str] = (),
    private_names: Iterable[str] = (),
) -> Entry:
    """`lstat` `path` and decide whether it may be read; never opens it.

    `origin_dir` is the folder a relative symbolic link is resolved from (the entry's folder
    in the inbox, also once the link was claimed elsewhere); a followed link may not point
    into the `forbidden` folders nor through a folder named in `private_names`. Raises
    `FileNotFoundError` when the entry is gone.
    """
    st = os.lstat(path)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return Entry(path, st)
    if not stat.S_ISLNK(mode):
        return Entry(path, st, refusal=f"{describe_kind(mode)}, not a regular file; it was not opened")
    if not follow_symlinks:
        return Entry(
            path,
            st,
            refusal="a symbolic link; the inbox takes regular files only (source.follow_symlinks is off)",
        )
    base = origin_dir if origin_dir is not None else os.path.dirname(path)
    try:
        target, target_st = _resolve_link(path, base, inbox, forbidden, private_names)
    except EntryRefusedError as exc:
        return Entry(path, st, refusal=str(exc))
    return Entry(path, st, target=target, target_st=target_st)


def _resolve_link(
    link: str, base_dir: str, inbox: str, forbidden: Iterable[str], private_names: Iterable[str]
) -> tuple[str, os.stat_result]:
    try:
        text = os.readlink(link)
        resolved = os.path.realpath(os.path.join(base_dir, text), strict=True)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            msg = "a symbolic link in a loop"
        elif exc.errno in (errno.ENOENT, errno.ENOTDIR):
            msg = "a symbolic link to a missing target"
        else:
            msg = f"a symbolic link that cannot be resolved ({exc.strerror or type(exc).__name__})"
        raise EntryRefusedError(msg) from exc
    inbox_real = os.path.realpath(inbox)
    if not is_within(resolved, inbox_real):
        msg = "a symbolic link to a target outside the inbox; it was not followed"
        raise EntryRefusedError(msg)
    private = set(private_names)
    inside = os.path.relpath(resolved, inbox_real).split(os.sep)
    if any(
        resolved == os.path.realpath(folder) or is_within(resolved, os.path.realpath(folder))
        for folder in forbidden
    ) or private.intersection(inside):
        msg = "a symbolic link into the daemon's own folders; it was not followed"
        raise EntryRefusedError(msg)
    try:
        target_st = os.lstat(resolved)
    except OSError as exc:
        msg = "a symbolic link to a missing target"
        raise EntryRefusedError(msg) from exc
    if not stat.S_ISREG(target_st.st_mode):
        msg = f"a symbolic link to {describe_kind(target_st.st_mode)}, not to a regular file"
        raise EntryRefusedError(msg)
    return resolved, target_st


def entry_signature(
    path: str, *, origin_dir: str | None = None, follow_symlinks: bool = False
) -> Signature:
    """What "unchanged" means for an entry, from `lstat` (and a followed link's target);
    never opens anything. Raises OSError (FileNotFoundError when gone)."""
    st = os.lstat(path)
    own = _four(st)
    if follow_symlinks and stat.S_ISLNK(st.st_mode):
        base = origin_dir if origin_dir is not None else os.path.dirname(path)
        try:
            return own + _four(os.stat(os.path.join(base, os.readlink(path))))
        except OSError:
            return own  # dangling or looping: refused when taken
    return own


def read_entry(entry: Entry, inbox: str, *, max_bytes: int) -> bytes:
    """All bytes of a regular file (or a followed link's target), at most `max_bytes`.

    Raises `EntryRefusedError` (too large, not a regular file once opened, a link swapped
    in), `EntryChangedError` (written to while read) or OSError (cannot read).
    """
    if entry.refusal is not None:
        raise EntryRefusedError(entry.refusal)
    fd = _open_target(entry.target, inbox) if entry.target is not None else _open_plain(entry.path)
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            msg = f"{describe_kind(before.st_mode)}, not a regular file"
            raise EntryRefusedError(msg)
        if before.st_size > max_bytes:
            msg = f"file is {before.st_size} bytes, more than max_file_bytes ({max_bytes})"
            raise EntryRefusedError(msg)
        expected = entry.target_st if entry.target_st is not None else entry.st
        if _four(before) != _four(expected):
            msg = "the entry was replaced or written to since it was last looked at"
            raise EntryChangedError(msg)
        payload = read_at_most(fd, max_bytes, size_hint=before.st_size)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if _four(after) != _four(before) or len(payload) != after.st_size:
        msg = "the file changed while it was read"
        raise EntryChangedError(msg)
    return payload


def read_at_most(fd: int, max_bytes: int, *, size_hint: int = 0) -> bytes:
    """Read `fd` to its end, refusing once more than `max_bytes` were read.

    The first read asks for the expected size plus one byte, so a file read whole takes one
    allocation and no copy.

    >>> r, w = os.pipe(); _ = os.write(w, b"x" * 10); os.close(w)
    >>> read_at_most(r, 4)
    Traceback (most recent call last):
    ...
    inspectd.sources.folder_entries.EntryRefusedError: file grew past max_file_bytes (4) while it was read
    >>> os.close(r)
    """
    chunks: list[bytes] = []
    total = 0
    want = min(max(size_hint, 0), max_bytes) + 1
    while True:
        chunk = os.read(fd, min(want, max_bytes + 1 - total, _MAX_READ))
        if not chunk:
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            msg = f"file grew past max_file_bytes ({max_bytes}) while it was read"
            raise EntryRefusedError(msg)
        want = _READ_CHUNK


def _open_plain(path: str) -> int:
    try:
        return os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            msg = "the entry became a symbolic link before it was opened"
            raise EntryChangedError(msg) from exc
        raise


def _open_target(target: str, inbox: str) -> int:
    """Open `target` (resolved, inside the inbox) component by component from the inbox,
    following no link, so a directory swapped for a link meanwhile is refused."""
    root = os.path.realpath(inbox)
    parts = os.path.relpath(target, root).split(os.sep)
    dir_fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        return os.open(parts[-1], _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            msg = "the link's target was re-pointed while it was opened"
            raise EntryChangedError(msg) from exc
        raise
    finally:
        os.close(dir_fd)
