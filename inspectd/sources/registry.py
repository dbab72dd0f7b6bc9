"""Source registry: every module in `inspectd.sources` that defines a `FrameSource` with a `KEY`.

Adding a backend = adding one file (frigate `detectors/detector_types.py`). A module whose
runtime is missing (PyGObject for Aravis, say) is logged and skipped, so a box without it
still runs folder sources; asking for it then names the import failure.

>>> from inspectd.sources.registry import SOURCES, create_source
>>> "folder" in SOURCES
True
>>> create_source("no-such-kind")
Traceback (most recent call last):
...
inspectd.errors.ConfigError: unknown source type 'no-such-kind'; available: ...
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
from typing import Any

import inspectd.sources as _package
from inspectd.errors import ConfigError, SourceConnectionError
from inspectd.sources.base import FrameSource

logger = logging.getLogger(__name__)

_NOT_PLUGINS = frozenset({"base", "registry"})

# module name -> why it could not be imported (shown when someone asks for that kind)
UNAVAILABLE: dict[str, str] = {}


def _all_subclasses(cls: type[FrameSource]) -> list[type[FrameSource]]:
    found: list[type[FrameSource]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


def load_sources() -> dict[str, type[FrameSource]]:
    """Import every plugin module of the package and map `KEY` -> class.

    >>> "folder" in load_sources()
    True
    """
    UNAVAILABLE.clear()
    for module_info in pkgutil.iter_modules(_package.__path__):
        if module_info.name in _NOT_PLUGINS or module_info.name.startswith("_"):
            continue
        module_name = f"{_package.__name__}.{module_info.name}"
        try:
            importlib.import_module(module_name)
        except Exception as exc:  # ImportError, or a binding that fails while loading
            UNAVAILABLE[module_info.name] = f"{type(exc).__name__}: {exc}"
            logger.warning("source plugin %s skipped: %s", module_name, exc)
    sources: dict[str, type[FrameSource]] = {}
    for cls in _all_subclasses(FrameSource):
        if not cls.KEY or not cls.__module__.startswith(f"{_package.__name__}."):
            continue  # abstract intermediates and classes defined outside the package
        if cls.KEY in sources and sources[cls.KEY] is not cls:
            logger.error(
                "source key %r defined twice (%s, %s); keeping the first",
                cls.KEY,
                sources[cls.KEY].__qualname__,
                cls.__qualname__,
            )
            continue
        sources[cls.KEY] = cls
    return sources


SOURCES: dict[str, type[FrameSource]] = load_sources()


def create_source(kind: str, **settings: Any) -> FrameSource:
    """Build the source registered under `kind` with keyword `settings`.

    Raises `SourceConnectionError` when the backend exists but its runtime is missing, and
    `ConfigError` for an unknown kind or settings the backend does not accept.
    """
    cls = SOURCES.get(kind)
    available = ", ".join(sorted(SOURCES)) or "none"
    if cls is None:
        missing = {name: why for name, why in UNAVAILABLE.items() if name.startswith(kind)}
        if missing:
            details = "; ".join(f"{name}: {why}" for name, why in sorted(missing.items()))
            msg = f"source type {kind!r} is not usable here ({details}); available: {available}"
            raise SourceConnectionError(msg)
        msg = f"unknown source type {kind!r}; available: {available}"
        raise ConfigError(msg)
    try:
        inspect.signature(cls).bind(**settings)
    except TypeError as exc:
        msg = f"source type {kind!r}: bad settings {sorted(settings)}: {exc}"
        raise ConfigError(msg) from exc
    return cls(**settings)
