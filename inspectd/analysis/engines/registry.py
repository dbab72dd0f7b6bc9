"""Engine registry, frigate-style: adding an engine means adding one module to this package.

Every module of `inspectd.analysis.engines` (except this one and `base`) is imported at start-up with
`pkgutil.iter_modules`; each `SegmentationEngine` subclass with a `KEY` becomes an entry of
`ENGINES`. A plugin whose runtime is missing (an `ImportError`, or an `OSError` from a
shared library) is logged and skipped, never a crash: the daemon still runs the engines that
work, and asking for the broken one names the reason.

Example:
    >>> "classical" in ENGINES
    True
    >>> from inspectd.config import SegmentConfig
    >>> create_engine(SegmentConfig(engine="classical")).name
    'classical'
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from types import ModuleType

from inspectd.analysis import engines as _engines_package
from inspectd.analysis.engines.base import SegmentationEngine
from inspectd.config import SegmentConfig
from inspectd.errors import EngineError

logger = logging.getLogger(__name__)

_NOT_PLUGINS = {"base", "registry"}


def import_plugins(package: ModuleType) -> dict[str, str]:
    """Import every plugin module of `package`; return {module name: why it failed} for the skipped.

    Example:
        >>> from inspectd.analysis import engines
        >>> sorted(import_plugins(engines))  # names of plugins whose runtime is missing
        []
    """
    failures: dict[str, str] = {}
    for module_info in pkgutil.iter_modules(package.__path__):
        if module_info.name in _NOT_PLUGINS or module_info.name.startswith("_"):
            continue
        module_name = f"{package.__name__}.{module_info.name}"
        try:
            importlib.import_module(module_name)
        except (ImportError, OSError) as exc:
            failures[module_info.name] = f"{type(exc).__name__}: {exc}"
            logger.warning("engine plugin %s skipped: its runtime is missing (%s)", module_name, exc)
    return failures


def _all_subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


def build_registry() -> dict[str, type[SegmentationEngine]]:
    """{KEY: class} of every imported `SegmentationEngine` subclass that declares a KEY."""
    registry: dict[str, type[SegmentationEngine]] = {}
    for engine_cls in _all_subclasses(SegmentationEngine):
        key = getattr(engine_cls, "KEY", "")
        if not key:
            continue
        if key in registry and registry[key] is not engine_cls:
            logger.error("engine key %r is declared by %s and %s; keeping the first",
                         key, registry[key].__qualname__, engine_cls.__qualname__)
            continue
        registry[key] = engine_cls
    return dict(sorted(registry.items()))


# Plugin module name -> why it could not be imported (shown when someone asks for it).
PLUGIN_IMPORT_ERRORS: dict[str, str] = import_plugins(_engines_package)
ENGINES: dict[str, type[SegmentationEngine]] = build_registry()


def create_engine(segment_cfg: SegmentConfig) -> SegmentationEngine:
    """Instantiate the engine `segment_cfg.engine` names (not yet loaded; call `load()`/`warm_up()`).

    Example:
        >>> from inspectd.config import SegmentConfig
        >>> try:
        ...     create_engine(SegmentConfig(engine="nope"))
        ... except EngineError as exc:
        ...     print(str(exc).splitlines()[0])
        unknown segmentation engine 'nope'; available: classical, unet
    """
    name = segment_cfg.engine
    engine_cls = ENGINES.get(name)
    if engine_cls is None:
        available = ", ".join(ENGINES) or "(none)"
        msg = f"unknown segmentation engine {name!r}; available: {available}"
        if name in PLUGIN_IMPORT_ERRORS:
            msg += f"\nthe {name!r} plugin could not be imported: {PLUGIN_IMPORT_ERRORS[name]}"
        elif PLUGIN_IMPORT_ERRORS:
            skipped = ", ".join(f"{k} ({v})" for k, v in PLUGIN_IMPORT_ERRORS.items())
            msg += f"\nplugins skipped because their runtime is missing: {skipped}"
        raise EngineError(msg)
    return engine_cls(segment_cfg)
