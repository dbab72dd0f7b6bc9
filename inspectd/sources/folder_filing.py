"""Claiming an inbox entry before it is read, and filing it into done/ or quarantine/ after.

Why claims: a name in the inbox is not an identity. A writer that replaces latest.png
atomically every second reuses one name for many frames; reading latest.png and later
moving "latest.png" to done/ files whichever frame is there by then, so one frame lands in
done/ unanalysed and the analysed one never does. So a file is claimed before it is read:
hard-linked (or, where hard links are refused, renamed) into a private folder beside it,
`<folder>/.inspectd-claimed/<token>/<name>` (same directory, so same file system, and
hidden, so never taken). From then on the claimed inode is what is read, hashed and
filed; the inbox name may be replaced by the writer's next frame at any time, and is
removed after filing only while it still holds the filed inode.

Filing never overwrites: a name already taken in done/ or quarantine/ gets a `-N` suffix,
a name too long for the suffix or for `<name>.reason.txt` is shortened to fit NAME_MAX,
and a hard link (or, across file systems, a finished copy under a short hidden temporary
name) claims the new name atomically before the original is unlinked. A move that a crash
cut short is finished on the next try, not repeated under a `-N` name. Entries that are not
regular files are moved only by rename or hard link (a symbolic link is re-created); across
file systems they cannot move and `file_entry` raises, so the caller reports them once.
"""

from __future__ import annotations

import errno
import filecmp
import hashlib
import itertools
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path

CLAIM_DIR_NAME = ".inspectd-claimed"
REASON_SUFFIX = ".reason.txt"
_NO_HARD_LINK = (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK)
_COPY_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DEFAULT_NAME_MAX = 255

# Claims are made on the folder thread and released on the pipeline's: one lock keeps a
# claim folder from being removed between its creation and its first use.
_CLAIM_LOCK = threading.Lock()
_COPY_COUNTER = itertools.count()


# ---- claims ------------------------------------------------------------------------------


def claim(path: str, *, move: bool = False) -> tuple[str, bool]:
    """Take `path` out of the writer's hands before it is read: hard-link it into a fresh
    claim folder beside it, or, where hard links are refused (or `move`), rename it there.

    Returns (claimed path, whether the inbox name still holds the entry). A hard link
    keeps the file visible under its name while it is in flight, and the writer may still
    replace that name: the claim holds the inode that was read. Raises OSError when the
    folder cannot hold a claim (read-only share); FileNotFoundError when the entry is gone.
    """
    folder, name = os.path.split(path)
    root = os.path.join(folder, CLAIM_DIR_NAME)
    with _CLAIM_LOCK:
        try:
            os.mkdir(root, 0o700)
        except FileExistsError:
            pass
        token_dir = tempfile.mkdtemp(prefix="c", dir=root)
        claimed = os.path.join(token_dir, name)
        try:
            if not move:
                try:
                    os.link(path, claimed, follow_symlinks=False)
                except OSError as exc:
                    if exc.errno not in _NO_HARD_LINK:
                        raise
                else:
                    return claimed, True
            os.rename(path, claimed)
        except OSError:
            _remove_empty(token_dir)
            raise
    return claimed, False


def is_claimed(path: str) -> bool:
    """True for a path inside a claim folder."""
    return os.path.basename(os.path.dirname(os.path.dirname(path))) == CLAIM_DIR_NAME


def origin_of(claimed: str) -> str:
    """The inbox path a claimed entry came from.

    >>> origin_of("/in/lot7/.inspectd-claimed/c1x2/a.png")
    '/in/lot7/a.png'
    """
    token_dir, name = os.path.split(claimed)
    return os.path.join(os.path.dirname(os.path.dirname(token_dir)), name)


def release_claim(claimed: str) -> None:
    """Remove a claim's folder (and the claim root) once empty; never raises."""
    remove_empty_claim(os.path.dirname(claimed))


def remove_empty_claim(token_dir: str) -> None:
    """Remove an empty claim folder (left by a crash between its creation and its use)."""
    with _CLAIM_LOCK:
        _remove_empty(token_dir)


def _remove_empty(token_dir: str) -> None:
    for folder in (token_dir, os.path.dirname(token_dir)):
        try:
            os.rmdir(folder)
        except OSError:
            return


def drop_claim(claimed: str) -> None:
    """Unlink a claim that is not needed any more (a hard link beside a file left in place)."""
    try:
        os.unlink(claimed)
    except FileNotFoundError:
        pass
    release_claim(claimed)


def put_back(claimed: str) -> str | None:
    """Return a claimed entry to its inbox name, never over another entry; the path where
    it now is, or None when that name is taken again (it then stays claimed)."""
    origin = origin_of(claimed)
    try:
        os.link(claimed, origin, follow_symlinks=False)
    except FileExistsError:
        return None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINK or not _rename_if_free(claimed, origin):
            return None
        release_claim(claimed)
        return origin
    drop_claim(claimed)
    return origin


def _rename_if_free(source: str, destination: str) -> bool:
    if os.path.lexists(destination):
        return False
    try:
        os.rename(source, destination)
    except OSError:
        return False
    return True


# ---- names -------------------------------------------------------------------------------


def unique_name(name: str, index: int) -> str:
    """`name` with a `-index` suffix before the extension (index 0: unchanged).

    >>> unique_name("P-17.png", 0), unique_name("P-17.png", 2), unique_name("P-17", 1)
    ('P-17.png', 'P-17-2.png', 'P-17-1')
    """
    if index == 0:
        return name
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem:
        return f"{name}-{index}"
    return f"{stem}-{index}.{extension}"


def fit_name(name: str, reserve_bytes: int, name_max: int = _DEFAULT_NAME_MAX) -> str:
    """`name`, its stem shortened (extension kept) so that it and `reserve_bytes` more fit
    in `name_max` bytes; names that fit are unchanged.

    >>> short = fit_name("a" * 250 + ".png", 17)
    >>> short[-8:], len(short.encode())
    ('aaa~.png', 238)
    >>> fit_name("P-17.png", 17)
    'P-17.png'
    """
    budget = name_max - reserve_bytes

    def size(text: str) -> int:
        return len(os.fsencode(text))

    if size(name) <= budget:
        return name
    stem, dot, extension = name.rpartition(".")
    tail = f".{extension}" if dot and stem and size(extension) <= 16 else ""
    head = name[: len(name) - len(tail)] if tail else name
    while head and size(head) + size(tail) + 1 > budget:
        head = head[:-1]
    return f"{head}~{tail}"


def name_max(folder: Path) -> int:
    """Longest file name (bytes) the file system of `folder` takes."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return _DEFAULT_NAME_MAX


def reason_path(destination: Path) -> Path:
    return destination.with_name(destination.name + REASON_SUFFIX)


# ---- filing ------------------------------------------------------------------------------


def file_entry(
    source: Path, folder: Path, reason: str | None = None, *, content: bytes | None = None
) -> Path:
    """File `source` into `folder` under its name or the first free `-N` variant, with
    `<name>.reason.txt` beside it when a reason is given; returns where it went.

    `content` files those bytes as a regular file instead of `source` itself (a followed
    link: done/ keeps what was analysed, not a pointer to what is there now).
    Raises OSError when it cannot be filed; the entry then stays where it was.
    """
    names = _NameChoices(source.name, reason is not None, name_max(folder))
    st = os.lstat(source)
    if content is not None:
        return _file_by_link(source, folder, names, reason, _Copy(content=content))
    if stat.S_ISDIR(st.st_mode):
        return _file_directory(source, folder, names, reason)
    if st.st_dev == os.stat(folder).st_dev:
        try:
            return _file_by_link(source, folder, names, reason, None)
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINK:
                raise
    if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
        return _file_by_link(source, folder, names, reason, _Copy())
    msg = "it is not a regular file and cannot be moved to another file system"
    raise OSError(errno.EXDEV, msg)


class _NameChoices:
    """The names to try in turn: the entry's own, then `-1`, `-2` ... variants, each
    shortened only as far as NAME_MAX needs (with room for `.reason.txt` when one goes
    beside it), so a name that fits is kept and the choice is the same after a restart."""

    def __init__(self, name: str, with_reason: bool, limit: int) -> None:
        self.name = name
        self.reserve = len(REASON_SUFFIX) if with_reason else 0
        self.limit = limit

    def __call__(self, index: int) -> str:
        suffix_bytes = len(f"-{index}") if index else 0
        return unique_name(fit_name(self.name, self.reserve + suffix_bytes, self.limit), index)


class _Copy:
    """How a copy is made: from `content`, or from the source (a file's bytes or a link's text)."""

    def __init__(self, content: bytes | None = None) -> None:
        self.content = content


def _file_by_link(
    source: Path, folder: Path, names: _NameChoices, reason: str | None, copy: _Copy | None
) -> Path:
    origin = _copy_beside(source, folder, copy) if copy is not None else source
    try:
        for index in range(100_000):
            destination = folder / names(index)
            if _is_earlier_move_of(source, destination, copy):
                break
            if reason is not None and reason_path(destination).exists():
                continue  # an orphan reason keeps its name free
            try:
                os.link(origin, destination, follow_symlinks=False)
            except FileExistsError:
                continue
            break
        else:
            msg = f"no free name in {folder}"
            raise FileExistsError(errno.EEXIST, msg)
    finally:
        if copy is not None:
            origin.unlink(missing_ok=True)
    _write_reason(destination, reason)
    os.unlink(source)
    return destination


def _file_directory(source: Path, folder: Path, names: _NameChoices, reason: str | None) -> Path:
    """A directory cannot be hard-linked: rename it under the first free name."""
    for index in range(100_000):
        destination = folder / names(index)
        if os.path.lexists(destination) or (
            reason is not None and reason_path(destination).exists()
        ):
            continue
        os.rename(source, destination)
        _write_reason(destination, reason)
        return destination
    msg = f"no free name in {folder}"
    raise FileExistsError(errno.EEXIST, msg)


def _write_reason(destination: Path, reason: str | None) -> None:
    if reason is None:
        return
    try:
        with open(reason_path(destination), "x", encoding="utf-8", errors="backslashreplace") as handle:
            handle.write(reason.rstrip("\n") + "\n")
    except FileExistsError:
        pass  # written before the move was cut short: the original reason stays


def _copy_beside(source: Path, folder: Path, copy: _Copy) -> Path:
    """A full copy in `folder` under a short hidden temporary name (NAME_MAX holds for any
    source name), ready to be linked into place."""
    temporary = folder / f".inspectd-copy-{os.getpid()}-{next(_COPY_COUNTER)}"
    temporary.unlink(missing_ok=True)
    if copy.content is None and stat.S_ISLNK(os.lstat(source).st_mode):
        os.symlink(os.readlink(source), temporary)
        shutil.copystat(source, temporary, follow_symlinks=False)
        return temporary
    try:
        with open(temporary, "xb") as writer:
            if copy.content is not None:
                writer.write(copy.content)
            else:
                reader_fd = os.open(source, _COPY_FLAGS)
                with os.fdopen(reader_fd, "rb") as reader:
                    if not stat.S_ISREG(os.fstat(reader.fileno()).st_mode):
                        msg = "not a regular file"
                        raise OSError(errno.EINVAL, msg)
                    shutil.copyfileobj(reader, writer, length=1 << 20)
            writer.flush()
            os.fsync(writer.fileno())
        if copy.content is None:
            shutil.copystat(source, temporary, follow_symlinks=False)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _is_earlier_move_of(source: Path, destination: Path, copy: _Copy | None) -> bool:
    """True when `destination` is what an interrupted filing of `source` left behind.

    A hard-linked move leaves the very same file; a copied one a file with the source's
    bytes (size and modification time too), a re-created link the same link text, a filing
    of `content` exactly those bytes. A later file of the same name is none of these.
    """
    try:
        if copy is None:
            here, there = os.lstat(source), os.lstat(destination)
            return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
        there = os.lstat(destination)
        if copy.content is not None:
            if not stat.S_ISREG(there.st_mode) or there.st_size != len(copy.content):
                return False
            with open(destination, "rb") as handle:
                return hashlib.sha256(handle.read()).digest() == hashlib.sha256(copy.content).digest()
        here = os.lstat(source)
        if stat.S_IFMT(here.st_mode) != stat.S_IFMT(there.st_mode):
            return False
        if (here.st_size, here.st_mtime_ns) != (there.st_size, there.st_mtime_ns):
            return False
        if stat.S_ISLNK(here.st_mode):
            return os.readlink(source) == os.readlink(destination)
        return filecmp.cmp(source, destination, shallow=False)
    except OSError:
        return False
