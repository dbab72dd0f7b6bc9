"""A re-grade's identity: (config hash, model hash); with a file's sha256 it keys every output row.

The config hash covers what can change a verdict and nothing else: `um_per_px`, `input`,
`preprocess`, `measure`, `rules`, `trust`, the engine's name and backend and its own section
(`segment.classical` or `segment.unet`), the out-of-distribution envelope's content and the
inspectd version. File paths that name a model or an envelope are left out, their content is
hashed instead: the model hash is the sha256 of the file the engine runs (`none` for the
classical engine, which has no model file), as in every verdict. So moving a model file does
not re-grade the archive, and editing a publish endpoint or the web UI's settings does not either.

Example:
    >>> from inspectd import config
    >>> cfg = config.load(None)
    >>> a = config_hash(cfg, engine_name="classical", backend="cpu", envelope={"n_frames": 1})
    >>> cfg.publish.heartbeat_interval_s = 5.0
    >>> a == config_hash(cfg, engine_name="classical", backend="cpu", envelope={"n_frames": 1})
    True
    >>> cfg.rules[0].limit += 1.0
    >>> a == config_hash(cfg, engine_name="classical", backend="cpu", envelope={"n_frames": 1})
    False
    >>> RunKey(a, None).model_partition
    'none'
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import inspectd
from inspectd.config import Config

NO_MODEL = "none"  # the model hash of an engine without a model file (classical)
_ANALYSIS_SECTIONS = {"um_per_px", "input", "preprocess", "measure", "rules", "trust"}
_PATH_KEYS = {"model", "engine_plan", "envelope"}  # content is hashed instead


@dataclass(frozen=True)
class RunKey:
    """(config hash, model hash) of one re-grade; `model_hash` None for the classical engine."""

    config_hash: str
    model_hash: str | None

    @property
    def model_partition(self) -> str:
        """The model hash as written in partition folder names (`none` without a model file)."""
        return self.model_hash or NO_MODEL

    def describe(self) -> str:
        return f"config {self.config_hash[:12]}, model {self.model_partition[:12]}"


def config_hash(cfg: Config, *, engine_name: str, backend: str, envelope: Mapping[str, Any]) -> str:
    """Hex sha256 of the analysis settings (see the module docstring) as canonical JSON."""
    document: dict[str, Any] = cfg.model_dump(mode="json", include=_ANALYSIS_SECTIONS)
    document["trust"] = _without_paths(document["trust"])
    engine_section = cfg.segment.model_dump(mode="json").get(engine_name, {})
    document["segment"] = {"engine": engine_name, "backend": backend,
                           engine_name: _without_paths(engine_section)}
    document["ood_envelope_sha256"] = _json_sha256(envelope)
    document["inspectd"] = inspectd.__version__
    return _json_sha256(document)


def run_key_of(analyzer: Any) -> RunKey:
    """The RunKey of a loaded `inspectd.analysis.analyzer.Analyzer` (its engine, backend and envelope)."""
    engine = analyzer.engine
    digest = config_hash(analyzer.cfg, engine_name=engine.name, backend=engine.backend,
                         envelope=analyzer.assessor.envelope)
    return RunKey(digest, engine.model_hash)


def _without_paths(section: Any) -> Any:
    if isinstance(section, dict):
        return {k: _without_paths(v) for k, v in section.items() if k not in _PATH_KEYS}
    return section


def _json_sha256(document: Any) -> str:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
