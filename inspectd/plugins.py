"""Plugin discovery: one function finds the frame sources, segmentation engines and U-Net runtimes.

A plugin is one module that defines a subclass of the kind's base class with a `KEY`
(`FrameSource`, `SegmentationEngine`, `UnetRuntime`); a source or engine also names its
pydantic config (`config_class`), from which `inspectd.config` builds the `sources:` union
and the `segment:` sections. `discover` imports

* every module of the kind's own package (`pkgutil.iter_modules`; names starting with `_`
  and the `base` / `registry` modules are not plugins), then
* every module an installed distribution names in the kind's entry-point group
  (`inspectd.sources`, `inspectd.engines`, `inspectd.unet_runtimes`), so a station's own
  backend ships in its own package, with no file of inspectd touched:

      [project.entry-points."inspectd.sources"]
      line_scanner = "acme_station.line_scanner"

and builds the registry from the base class's subclasses (frigate's `detector_types.py`).

One policy for a plugin that cannot be imported, whatever the kind: it is skipped and logged
(one WARNING naming the plugin module, the module it needed and why), never a crash, so a
station without PyGObject or TensorRT still runs everything else. An ImportError or OSError
(a missing package or shared library) is a missing runtime; any other exception is a broken
plugin, logged as an ERROR with its traceback. Asking for a skipped plugin's key later is an
error that repeats the reason (`Registry.unavailable`): the keys a failed module would have
declared are read from its source text, so the message names the right module.

Example:
    >>> from inspectd.sources.base import FrameSource
    >>> sources = discover("inspectd.sources", FrameSource, kind="source")
    >>> "folder" in sources.classes
    True
    >>> print(sources.unavailable("no-such-kind"))
    None
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import logging
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=type)

NOT_PLUGINS = frozenset({"base", "registry"})
"""Modules of a plugin package that are never plugins themselves."""


@dataclass(frozen=True)
class PluginFailure:
    """A plugin module that could not be imported, and why."""

    module: str
    reason: str  # "ModuleNotFoundError: No module named 'gi'"
    missing: str | None = None  # the module it needed that is not installed, when Python says
    keys: tuple[str, ...] = ()  # the KEYs its source declares (what a config would ask for)

    def __str__(self) -> str:
        needs = f"it needs {self.missing!r}, which is not installed: " if self.missing else ""
        return f"plugin {self.module} could not be imported ({needs}{self.reason})"


@dataclass
class Registry(Generic[T]):
    """KEY -> class for one kind of plugin, with the plugins that were skipped."""

    kind: str
    classes: dict[str, T] = field(default_factory=dict)
    failures: dict[str, PluginFailure] = field(default_factory=dict)  # by module name

    def unavailable(self, key: str) -> PluginFailure | None:
        """The failure of the plugin that declares `key`, when that plugin was skipped."""
        return next((failure for failure in self.failures.values() if key in failure.keys), None)

    def describe_missing(self, key: str) -> str:
        """Why `key` is not a registered plugin: the failed import that declares it, or the choices."""
        available = ", ".join(sorted(self.classes)) or "none"
        failure = self.unavailable(key)
        if failure is not None:
            return f"{self.kind} {key!r} is not usable here: {failure}; available: {available}"
        return f"unknown {self.kind} {key!r}; available: {available}"


def discover(package: str, base: T, *, kind: str, entry_point_group: str | None = None) -> Registry[T]:
    """Import the plugins of `package` and of `entry_point_group`; map each subclass's KEY to it.

    `kind` names the plugin kind in messages ("source type", "segmentation engine").
    Only classes defined in those modules count: a subclass with an empty KEY is an
    abstract intermediate, one defined elsewhere (a benchmark's in-memory source) is not
    offered. A second class with a KEY already taken is logged and left out (the first stays).
    """
    registry: Registry[T] = Registry(kind)
    imported = set()
    for module_name in _plugin_modules(package, entry_point_group):
        failure = _import(module_name, kind)
        if failure is None:
            imported.add(module_name)
        else:
            registry.failures[module_name] = failure
    for cls in _all_subclasses(base):
        key = getattr(cls, "KEY", "")
        if not key or cls.__module__ not in imported:
            continue  # an abstract intermediate, or a class defined elsewhere (a test's, a benchmark's)
        taken = registry.classes.get(key)
        if taken is not None and taken is not cls:
            logger.error("%s %r is declared by %s.%s and %s.%s; keeping the first", kind, key,
                         taken.__module__, taken.__qualname__, cls.__module__, cls.__qualname__)
            continue
        registry.classes[key] = cls
    registry.classes = dict(sorted(registry.classes.items()))
    return registry


def _plugin_modules(package: str, entry_point_group: str | None) -> Iterator[str]:
    path = importlib.import_module(package).__path__
    for module_info in pkgutil.iter_modules(path):
        if module_info.name not in NOT_PLUGINS and not module_info.name.startswith("_"):
            yield f"{package}.{module_info.name}"
    if entry_point_group is not None:
        for entry_point in importlib.metadata.entry_points(group=entry_point_group):
            yield entry_point.module


_FAILED: dict[str, PluginFailure] = {}  # module -> its failure: asked again, it is not retried nor logged twice


def _import(module_name: str, kind: str) -> PluginFailure | None:
    """Import one plugin module; None when it worked, else what failed (logged the first time)."""
    if module_name in _FAILED:
        return _FAILED[module_name]
    failure = _first_import(module_name, kind)
    if failure is not None:
        _FAILED[module_name] = failure
    return failure


def _first_import(module_name: str, kind: str) -> PluginFailure | None:
    try:
        importlib.import_module(module_name)
    except (ImportError, OSError) as exc:  # a missing package, or a shared library it loads
        missing = exc.name if isinstance(exc, ImportError) and exc.name != module_name else None
        failure = PluginFailure(module_name, f"{type(exc).__name__}: {exc}", missing, _declared_keys(module_name))
        logger.warning("%s %s skipped: its runtime is missing (%s)", kind, module_name, failure.reason)
        return failure
    except Exception as exc:  # a plugin that is broken: a bug, not a missing runtime
        failure = PluginFailure(module_name, f"{type(exc).__name__}: {exc}", None, _declared_keys(module_name))
        logger.exception("%s %s skipped: importing it failed", kind, module_name)
        return failure
    return None


def _declared_keys(module_name: str) -> tuple[str, ...]:
    """The string literals assigned to `KEY` in the module's source (its classes included)."""
    try:
        spec = importlib.util.find_spec(module_name)
        source = spec.loader.get_source(module_name) if spec is not None and spec.loader is not None else None
        tree = ast.parse(source or "")
    except (ImportError, OSError, SyntaxError, ValueError):
        return ()
    keys = []
    for node in ast.walk(tree):
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else (
            node.target if isinstance(node, ast.AnnAssign) else None)
        value = getattr(node, "value", None)
        if (isinstance(target, ast.Name) and target.id == "KEY" and isinstance(value, ast.Constant)
                and isinstance(value.value, str) and value.value):
            keys.append(value.value)
    return tuple(dict.fromkeys(keys))


def _all_subclasses(cls: type) -> list[type]:
    found: list[type] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found
