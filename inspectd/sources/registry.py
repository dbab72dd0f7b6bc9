"""Source registry: every `FrameSource` with a `KEY` in `inspectd.sources` or in an installed
package's `inspectd.sources` entry points (`inspectd.plugins.discover`).

A source module declares `KEY`, its config section (`config_class`, a pydantic model with
`kind: Literal[KEY]`) and a constructor that takes that validated section (`from_config`
overridden only when the default `cls(section, context)` does not fit); `inspectd.config`
builds the `sources:` union from `SOURCES`. A module whose runtime is missing is logged and skipped, so a
box without it still runs the other sources; asking for it then names the import failure.

>>> from inspectd.sources.registry import SOURCES, create_source
>>> "folder" in SOURCES
True
>>> create_source("no-such-kind")
Traceback (most recent call last):
...
inspectd.errors.ConfigError: unknown source type 'no-such-kind'; available: ...
"""

from __future__ import annotations

from typing import Any

from inspectd.errors import ConfigError, SourceConnectionError
from inspectd.plugins import PluginFailure, Registry, discover
from inspectd.sources.base import FrameSource, SourceContext

ENTRY_POINT_GROUP = "inspectd.sources"


def load_sources(package: str = "inspectd.sources") -> Registry[type[FrameSource]]:
    """Discover the source plugins of `package` and of the installed entry points.

    >>> "folder" in load_sources().classes
    True
    """
    return discover(package, FrameSource, kind="source type", entry_point_group=ENTRY_POINT_GROUP)


REGISTRY: Registry[type[FrameSource]] = load_sources()
SOURCES: dict[str, type[FrameSource]] = REGISTRY.classes
# plugin module -> why it could not be imported (shown when someone asks for its kind)
UNAVAILABLE: dict[str, PluginFailure] = REGISTRY.failures


def source_class(kind: str) -> type[FrameSource]:
    """The class registered under `kind`; `SourceConnectionError` when its plugin could not be
    imported here, `ConfigError` when no plugin declares it."""
    cls = SOURCES.get(kind)
    if cls is None:
        message = REGISTRY.describe_missing(kind)
        raise (SourceConnectionError if REGISTRY.unavailable(kind) else ConfigError)(message)
    return cls


def build_source(source_cfg: Any, context: SourceContext) -> FrameSource:
    """Build the source a validated `sources:` entry describes (`from_config` of its class)."""
    return source_class(source_cfg.kind).from_config(source_cfg, context)


def create_source(kind: str, **settings: Any) -> FrameSource:
    """Build the source registered under `kind` from keyword `settings` (`from_settings`:
    config keys, checked by its config section, plus run-time objects).

    Raises `SourceConnectionError` when the backend exists but its runtime is missing, and
    `ConfigError` for an unknown kind or settings the backend does not accept.
    """
    cls = source_class(kind)
    try:
        return cls.from_settings(**settings)
    except ConfigError as exc:
        msg = f"source type {kind!r}: bad settings {sorted(settings)}: {exc}"
        raise ConfigError(msg) from exc
