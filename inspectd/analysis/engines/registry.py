"""Engine registry: every `SegmentationEngine` with a `KEY` in `inspectd.analysis.engines` or in an
installed package's `inspectd.engines` entry points (`inspectd.plugins.discover`).

An engine module declares `KEY` (the `segment.engine` value) and, when it has settings, its
config section (`config_class`, found under `segment.<KEY>`; `inspectd.config` builds
`SegmentConfig` from `ENGINES`). It is built from the whole `segment:` section. A plugin whose
runtime is missing is logged and skipped, never a crash: the daemon still runs the engines
that work, and asking for the broken one names the reason.

Example:
    >>> "classical" in ENGINES
    True
    >>> from inspectd.config import SegmentConfig
    >>> create_engine(SegmentConfig(engine="classical")).name
    'classical'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from inspectd.analysis.engines.base import SegmentationEngine
from inspectd.errors import EngineError
from inspectd.plugins import Registry, discover

if TYPE_CHECKING:
    from inspectd.config import SegmentFields

ENTRY_POINT_GROUP = "inspectd.engines"


def load_engines(package: str = "inspectd.analysis.engines") -> Registry[type[SegmentationEngine]]:
    """Discover the engine plugins of `package` and of the installed entry points."""
    return discover(package, SegmentationEngine, kind="segmentation engine", entry_point_group=ENTRY_POINT_GROUP)


REGISTRY: Registry[type[SegmentationEngine]] = load_engines()
ENGINES: dict[str, type[SegmentationEngine]] = REGISTRY.classes


def create_engine(segment_cfg: SegmentFields) -> SegmentationEngine:
    """Instantiate the engine `segment_cfg.engine` names (not yet loaded; call `load()`/`warm_up()`).

    Example:
        >>> from inspectd.config import SegmentConfig
        >>> try:
        ...     create_engine(SegmentConfig(engine="nope"))
        ... except EngineError as exc:
        ...     print(str(exc).splitlines()[0])
        unknown segmentation engine 'nope'; available: classical, unet
    """
    engine_cls = ENGINES.get(segment_cfg.engine)
    if engine_cls is None:
        raise EngineError(REGISTRY.describe_missing(segment_cfg.engine))
    return engine_cls(segment_cfg)
