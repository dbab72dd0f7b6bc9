"""The CLI imports only the command named: `inspectd status` (the health check) stays light.

Why a test and not a timing: what makes a start slow is which libraries it loads (numba,
ONNX Runtime, OpenCV, SciPy, torch take seconds between them), and that is exact, while a
time limit on a shared machine is not. The start-up time itself is measured in
`bench/cli_start.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from inspectd import cli

HEAVY = ("numba", "onnxruntime", "cv2", "scipy", "torch", "kernels", "inspectd.analysis.analyzer")


def modules_loaded_by(argv: list[str]) -> list[str]:
    """Heavy modules in sys.modules after `inspectd ARGV` ran in a fresh interpreter."""
    code = (
        "import json, sys\n"
        "from inspectd import cli\n"
        "try:\n"
        f"    cli.main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["status", "--help"], ["--help"], ["reload", "--help"], ["subscribe", "--help"]])
def test_light_commands_load_no_heavy_library(argv):
    assert modules_loaded_by(argv) == []


def test_a_heavy_command_still_loads_what_it_needs():
    assert "cv2" in modules_loaded_by(["analyze", "--help"])


def test_every_command_is_listed_with_its_help_line(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    listing = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at spaces
    for name, (_module, help_line) in cli.COMMANDS.items():
        assert f" {name} {help_line}" in listing


def test_the_full_parser_builds_every_command():
    """Every command module exists, adds its parser under its own name and has a handler."""
    parser = cli.build_parser()
    sub_actions = [a for a in parser._actions if a.dest == "command"][0]
    assert set(sub_actions.choices) == set(cli.COMMANDS)
    for name, sub in sub_actions.choices.items():
        assert sub.get_default("handler") is not None, name


@pytest.mark.parametrize(("argv", "expected"), [
    (["status"], "status"), (["--log-level", "DEBUG", "run", "--watch", "x"], "run"),
    (["--log-level=INFO", "journal", "check"], "journal"), (["--version"], None), (["nosuch"], None),
])
def test_command_named(argv, expected):
    assert cli.command_named(argv) == expected


def test_an_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["nosuch"])
    assert stopped.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
