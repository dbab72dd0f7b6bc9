"""The import direction docs/ARCHITECTURE.md draws, checked on the source (AST, no imports run).

Why a test: a layout only tells the data flow while nothing imports against it. One stray
import (the analysis importing the daemon, a client importing the server, a kernel
importing inspectd) would make the offline tools drag in the runtime and the PLC bridges
drag in the daemon; this fails on the first such line and names it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from inspectd.clients.health import SOURCE_STATES_OK
from inspectd.sources.base import SourceState

REPO = Path(__file__).resolve().parents[1]

# Modules every part may import: configuration, error types, frame types, text escaping,
# regex checks, durable file writes, plugin discovery, and the package root (its version).
FOUNDATION = {"config", "errors", "types", "metric_values", "escaping", "regex_safety", "durable_files", "plugins", ""}

# Part -> the other parts it may import (besides FOUNDATION and itself). A part is a folder
# under inspectd/ (or `kernels`); `commands` and `cli` sit on top and may import anything.
ALLOWED: dict[str, set[str]] = {
    "kernels": set(),
    "analysis": {"kernels"},
    "wire": set(),
    "clients": {"wire"},
    "sources": {"clients"},
    "bridges": {"clients", "wire"},
    "data": {"analysis", "kernels"},
    "training": {"analysis", "data", "kernels"},
    "reports": {"analysis", "data", "kernels"},
    "regrade": {"analysis", "clients", "data", "reports", "kernels"},
    "web": {"analysis", "clients", "daemon", "data", "reports", "wire"},
    "daemon": {"analysis", "clients", "data", "reports", "sources", "web", "wire"},
}
# The configuration builds its source union and segment sections from the backend registries
# (on first use, not at import): it may import those two.
FOUNDATION_MAY_IMPORT = {"inspectd.analysis.engines.registry", "inspectd.sources.registry"}


def part_of(module: str) -> str | None:
    """`inspectd.analysis.measure` -> "analysis"; `inspectd.config` -> "config"; `kernels.x` -> "kernels"."""
    parts = module.split(".")
    if parts[0] == "kernels":
        return "kernels"
    if parts[0] != "inspectd":
        return None
    return parts[1] if len(parts) > 1 else ""


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in the file, also those inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from inspectd import synth` imports the module inspectd.synth
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                      if (REPO / node.module.replace(".", "/") / alias.name).is_dir()
                      or (REPO / node.module.replace(".", "/") / f"{alias.name}.py").is_file()]
    return found


def source_files() -> list[Path]:
    return sorted([*(REPO / "inspectd").rglob("*.py"), *(REPO / "kernels").rglob("*.py")])


def violations() -> list[str]:
    found = []
    for path in source_files():
        relative = path.relative_to(REPO)
        module = ".".join(relative.with_suffix("").parts)
        own = part_of(module)
        if own in {"commands", "cli"}:
            continue
        for line, imported in imports_of(path):
            target = part_of(imported)
            if target is None or target == own or (target in FOUNDATION and own != "kernels"):
                continue
            if own in FOUNDATION:
                if not any(imported == m or imported.startswith(m + ".") for m in FOUNDATION_MAY_IMPORT):
                    found.append(f"{relative}:{line} imports {imported} (foundation imports nothing above it)")
                continue
            if target not in ALLOWED.get(own, set()):
                found.append(f"{relative}:{line} imports {imported} ({own} may import {sorted(ALLOWED[own])})")
    return found


def test_every_part_has_a_rule():
    folders = {p.name for p in (REPO / "inspectd").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in (REPO / "inspectd").glob("*.py")} - {"__init__"}
    assert folders - {"commands"} <= set(ALLOWED), "a new folder under inspectd/ needs its import rule here"
    assert modules - {"cli"} <= FOUNDATION, "a new top-level module is foundation or belongs in a folder"


def test_imports_follow_the_layout():
    assert violations() == []


@pytest.mark.parametrize(("module", "expected"), [
    ("inspectd.analysis.measure", "analysis"), ("inspectd.config", "config"),
    ("kernels.clahe", "kernels"), ("numpy", None), ("inspectd", ""),
])
def test_part_of(module, expected):
    assert part_of(module) == expected


def test_the_checker_catches_a_stray_import(tmp_path, monkeypatch):
    """The rule check is live: a kernel importing inspectd and a client importing the daemon are reported."""
    fake = tmp_path / "repo"
    (fake / "inspectd" / "clients").mkdir(parents=True)
    (fake / "kernels").mkdir()
    (fake / "inspectd" / "clients" / "bad.py").write_text("from inspectd.daemon.app import Daemon\n")
    (fake / "kernels" / "bad.py").write_text("def f():\n    import inspectd.config\n")
    monkeypatch.setattr(f"{__name__}.REPO", fake)
    assert sorted(violations()) == [
        "inspectd/clients/bad.py:1 imports inspectd.daemon.app (clients may import ['wire'])",
        "kernels/bad.py:2 imports inspectd.config (kernels may import [])",
    ]


def test_health_spells_source_states_as_the_sources_do():
    assert set(SOURCE_STATES_OK) <= {state.value for state in SourceState}
