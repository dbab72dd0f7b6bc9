"""Segmentation engines: enhanced frame -> class-index mask (0 melted, 1 unmelted, 2 pore).

`base.SegmentationEngine` is the interface; every other module here is a plugin that the
registry discovers (`registry.ENGINES`, `registry.create_engine`). Importing this package
stays cheap: the interface, the plugins and their runtimes load on first use of
`SegmentationEngine`, `ENGINES` or `create_engine`, so the pure-numpy geometry
(`engines.tiling`) imports without the config's pydantic, as `bench/gpu_kernels.py` needs on
a bare GPU machine.

Example:
    >>> from inspectd.config import SegmentConfig
    >>> from inspectd.analysis.engines import create_engine
    >>> create_engine(SegmentConfig(engine="classical")).name
    'classical'
"""

from __future__ import annotations

from typing import Any

__all__ = ["ENGINES", "SegmentationEngine", "create_engine"]


def __getattr__(name: str) -> Any:
    if name == "SegmentationEngine":
        from inspectd.analysis.engines.base import SegmentationEngine

        return SegmentationEngine
    if name in ("ENGINES", "create_engine"):
        from inspectd.analysis.engines import registry

        return getattr(registry, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
