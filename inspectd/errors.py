"""Errors a user or integrator can act on; everything raised on purpose derives from InspectdError.

The daemon and `inspectd analyze` turn a per-frame `InspectdError` into an ERROR verdict
carrying `str(error)` as the reason, and go on with the next frame.
"""

from __future__ import annotations


class InspectdError(Exception):
    """Root of every error inspectd raises on purpose."""


class PermanentError(InspectdError):
    """A condition that stays until a person acts: a bad config, a missing GPU, a damaged file.

    `inspectd run` exits 2 on it at start-up, the unit's RestartPreventExitStatus, so systemd
    does not restart into the same failure for ever; every other `InspectdError` at start-up
    exits 1 and is retried. Derive an error from this (with its own base too, e.g.
    `class JournalDamagedError(JournalError, PermanentError)`) to make it stop the retries.
    """


class ConfigError(PermanentError):
    """The configuration cannot be used: names the key path, the value and why."""


class StartupError(InspectdError):
    """Something the daemon needs at start is not usable now (the state directory, a listen port).

    It may clear by itself (a disk mounted late, a port freed by the previous instance), so
    `inspectd run` exits 1 and systemd tries again.
    """


class ImageDecodeError(InspectdError):
    """An input image could not be decoded completely; names the file and the reason."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class ImageTooLargeError(ImageDecodeError):
    """The image header declares more pixels than `input.max_pixels` allows (decompression bomb)."""


class EngineError(PermanentError):
    """A segmentation engine could not be loaded or run (missing runtime, bad model file)."""


class SourceConnectionError(InspectdError):
    """A frame source (camera, folder) is unreachable or stopped answering."""


class KernelResourceError(PermanentError):
    """A kernel backend asked for is not usable here (for instance CUDA without a GPU)."""
