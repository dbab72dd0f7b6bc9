"""Errors a user or integrator can act on; everything raised on purpose derives from InspectdError.

The daemon and `inspectd analyze` turn a per-frame `InspectdError` into an ERROR verdict
carrying `str(error)` as the reason, and go on with the next frame.
"""

from __future__ import annotations


class InspectdError(Exception):
    """Root of every error inspectd raises on purpose."""


class ConfigError(InspectdError):
    """The configuration cannot be used: names the key path, the value and why."""


class ImageDecodeError(InspectdError):
    """An input image could not be decoded completely; names the file and the reason."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class ImageTooLargeError(ImageDecodeError):
    """The image header declares more pixels than `input.max_pixels` allows (decompression bomb)."""


class EngineError(InspectdError):
    """A segmentation engine could not be loaded or run (missing runtime, bad model file)."""


class SourceConnectionError(InspectdError):
    """A frame source (camera, folder) is unreachable or stopped answering."""


class KernelResourceError(InspectdError):
    """A kernel backend asked for is not usable here (for instance CUDA without a GPU)."""
