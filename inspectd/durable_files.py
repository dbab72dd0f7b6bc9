"""Files that survive a crash or a power cut whole: write beside, fsync, rename, fsync the folder.

One place for the pattern the journal's side files, the bridges' cursors, the labelled set
and the control-chart settings all need: a reader (or the next start) sees the old file or
the new one, never half of one.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "settings" / "spc.json"
    >>> write_atomically(path, b"{}")
    >>> path.read_bytes(), sorted(p.name for p in path.parent.iterdir())
    (b'{}', ['spc.json'])
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make a rename durable: the directory entry lives in the folder, so the folder is synced too.

    Best effort: a file system that cannot sync a directory (some network mounts) still has
    the renamed file, so an error here is not the caller's failure.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(path: Path, content: bytes) -> None:
    """Replace `path` with `content` whole (its folder is created); OSError when it cannot.

    The temporary name is unique per process and thread, so two writers of the same file
    never trip over each other's temporary file: the last rename wins whole.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with temporary.open("wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_dir(path.parent)
