"""U-Net runtimes: what runs the network's tiles, one plugin each (ONNX Runtime, a TensorRT plan).

A runtime is a `UnetRuntime` subclass with a `KEY`, in a module of this package or named by
an installed package's `inspectd.unet_runtimes` entry point (`inspectd.plugins.discover`,
the same discovery and import-failure policy as sources and engines). At `load()` the U-Net
engine asks each runtime in `PREFERENCE` order (lowest first) to `open` itself for the
configured `segment.backend`; the first that answers runs the tiles. A runtime answers None
to pass (not asked for, or a fallback exists) and raises `EngineError` when it was asked for
explicitly and cannot run.

Example:
    >>> sorted(runtimes().classes)
    ['onnxruntime', 'tensorrt']
"""

from __future__ import annotations

import abc
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from inspectd.errors import EngineError
from inspectd.plugins import Registry, discover

ENTRY_POINT_GROUP = "inspectd.unet_runtimes"


@dataclass(frozen=True)
class OpenedRuntime:
    """A runtime ready to run tiles: its runner, the file that runs, and a fixed tile size if it has one."""

    runner: Any  # unet.TileRunner
    model_path: Path
    fixed_tile_hw: tuple[int, int] | None = None


class UnetRuntime(abc.ABC):
    """One way to run the U-Net's tiles; see the module docstring."""

    KEY: ClassVar[str] = ""
    PREFERENCE: ClassVar[int] = 100

    @classmethod
    @abc.abstractmethod
    def open(cls, engine: Any, requested_backend: str) -> OpenedRuntime | None:
        """The runner for `engine` (its `cfg` is `segment.unet`), or None to let the next runtime try."""


@functools.cache
def runtimes() -> Registry[type[UnetRuntime]]:
    """The U-Net runtimes of this installation (discovered once)."""
    return discover("inspectd.analysis.engines", UnetRuntime, kind="U-Net runtime",
                    entry_point_group=ENTRY_POINT_GROUP)


def open_runtime(engine: Any, requested_backend: str) -> OpenedRuntime:
    """The first runtime, in preference order, that opens for `engine` and `requested_backend`."""
    registry = runtimes()
    for runtime in sorted(registry.classes.values(), key=lambda cls: (cls.PREFERENCE, cls.KEY)):
        opened = runtime.open(engine, requested_backend)
        if opened is not None:
            return opened
    skipped = "; ".join(str(failure) for failure in registry.failures.values())
    msg = f"no U-Net runtime can run backend {requested_backend}" + (f" ({skipped})" if skipped else "")
    raise EngineError(msg)
