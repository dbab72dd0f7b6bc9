"""Frames the web UI can show and relabel: image, enhanced view, mask, overlay, on disk, bounded.

Live (daemon verdicts), Analyse (uploads) and Review (labelling) share this one store, so a
frame opened from any page is the same files. An entry is a folder `<root>/<key>/`:

- `image.png`    the frame's pixels as decoded (8- or 16-bit grey, lossless): what a labelled
                 set and `inspectd train` take, the engine's own input;
- `enhanced.png` 8-bit, as the engine saw it after preprocessing (what a person looks at);
- `mask.png`     class indices (0 melted, 1 unmelted, 2 pore), the engine's proposal;
- `overlay.png`  the same overlay as `inspectd analyze` writes;
- `meta.json`    the verdict message (or the analysis record) of the frame.

Keys are `seq-<N>` for a journaled verdict and `upload-<id>-<field>` for an analysed upload;
`check_key` refuses anything else, so no request can name a path outside the store. The
total size stays under `max_bytes`: after each `put` the oldest entries (by the time they
were written) are removed; a missing entry is simply "no longer kept".

    >>> import tempfile
    >>> store = FrameStore(Path(tempfile.mkdtemp()), max_bytes=10_000_000)
    >>> grey = np.zeros((8, 8), np.uint8); mask = np.zeros((8, 8), np.uint8)
    >>> entry = store.put("seq-1", image=grey, enhanced=grey, mask=mask, overlay=None, meta={"seq": 1})
    >>> sorted(p.name for p in entry.iterdir())
    ['enhanced.png', 'image.png', 'mask.png', 'meta.json']
    >>> store.path("seq-1", "mask.png").is_file(), store.path("seq-2", "mask.png")
    (True, None)
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from inspectd.errors import InspectdError

logger = logging.getLogger(__name__)

KEY_PATTERN = re.compile(r"^(seq-[0-9]{1,19}|upload-[0-9a-f]{8,64}-[0-9]{1,5})$")
FILES = ("image.png", "enhanced.png", "mask.png", "overlay.png", "meta.json")


class UnknownFrameError(InspectdError):
    """A frame key that is malformed or names no frame the store keeps."""


def check_key(key: str) -> str:
    """The key if it is one the store could hold; else UnknownFrameError (no path ever built from it)."""
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        msg = f"not a frame key: {str(key)[:80]!r} (seq-<N> or upload-<id>-<field>)"
        raise UnknownFrameError(msg)
    return key


class FrameStore:
    """See the module docstring; thread-safe (the pipeline's observer writes, requests read)."""

    def __init__(self, root: Path, *, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()

    def put(self, key: str, *, image: np.ndarray | None, enhanced: np.ndarray | None, mask: np.ndarray | None,
            overlay: np.ndarray | None, meta: Mapping[str, Any]) -> Path:
        """Write one entry (replacing an older one of the same key) and trim the store to its size."""
        folder = self.root / check_key(key)
        staging = self.root / f".writing-{key}-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name, pixels in (("image.png", image), ("enhanced.png", enhanced), ("mask.png", mask),
                             ("overlay.png", overlay)):
            if pixels is not None and not cv2.imwrite(str(staging / name), pixels):
                shutil.rmtree(staging, ignore_errors=True)
                msg = f"could not write {name} of frame {key} under {self.root}"
                raise InspectdError(msg)
        (staging / "meta.json").write_text(json.dumps(meta, allow_nan=False, default=str), encoding="utf-8")
        with self._lock:
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)  # readers see a whole entry or none
            self._trim()
        return folder

    def path(self, key: str, name: str) -> Path | None:
        """The file `name` (one of FILES) of entry `key`, or None when it is not kept."""
        if name not in FILES:
            msg = f"a frame has no file {name[:40]!r} (one of {', '.join(FILES)})"
            raise UnknownFrameError(msg)
        candidate = self.root / check_key(key) / name
        return candidate if candidate.is_file() else None

    def meta(self, key: str) -> dict[str, Any] | None:
        path = self.path(key, "meta.json")
        return None if path is None else json.loads(path.read_text(encoding="utf-8"))

    def keys(self) -> list[str]:
        """Kept entries, oldest first."""
        if not self.root.is_dir():
            return []
        entries = [p for p in self.root.iterdir() if p.is_dir() and KEY_PATTERN.fullmatch(p.name)]
        return [p.name for p in sorted(entries, key=_mtime)]

    def _trim(self) -> None:
        entries = sorted((p for p in self.root.iterdir() if p.is_dir() and KEY_PATTERN.fullmatch(p.name)),
                         key=_mtime)
        sizes = {p: sum(f.stat().st_size for f in p.iterdir() if f.is_file()) for p in entries}
        total = sum(sizes.values())
        for entry in entries[:-1]:  # the entry just written always stays
            if total <= self.max_bytes:
                break
            shutil.rmtree(entry, ignore_errors=True)
            total -= sizes[entry]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile
        return time.time()
