"""Frame sources: where frames come from (a watched folder, an OpenCV or GenICam camera).

The shared vocabulary lives in `base`; each backend is one module declaring `KEY`, its config
section (`config_class`, with `kind: Literal[KEY]`) and a constructor taking that validated
section; `registry.SOURCES` and `registry.build_source(cfg, context)` find and build them.
Importing this package imports no backend (watchdog, cv2, PyGObject stay inside their modules).
"""

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
    sha256_of_pixels,
)

__all__ = [
    "ALLOWED_TRANSITIONS",
    "FrameBuffer",
    "FrameSource",
    "ItemOutcome",
    "Severity",
    "SourceItem",
    "SourceState",
    "SourceStateError",
    "StatusUpdate",
    "sha256_of_pixels",
]
