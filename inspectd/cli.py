"""`inspectd` command line: one sub-command per module in `inspectd.commands`.

Exit codes (a contract with line integrators): 0 all PASS, 1 any FAIL, 2 usage or config
error, 3 any ERROR. `inspectd run`: 2 when a restart cannot help (config), 1 when it may.
An error nobody foresaw is one line and exit 1 too, never a traceback (`--log-level DEBUG`
logs the traceback).

Only the command named on the line is imported: `inspectd status` is the station's health
check and runs every few seconds, so it must not pay for numba, ONNX Runtime or OpenCV,
which other commands load. The list below is what `inspectd --help` shows without
importing any command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

import inspectd
from inspectd.errors import ConfigError

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3

# Command -> (module in inspectd.commands, one line for --help), in the order --help shows them.
# Each module defines `add_parser(subparsers)` and `run(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "analyze": ("analyze", "analyse micrograph files and write verdicts, masks, overlays, region tables"),
    "run": ("run", "run the inspection daemon"),
    "ui": ("ui", "serve the web UI over an existing state dir (no daemon)"),
    "status": ("status", "ask a running daemon how it is (exit 0 healthy, 1 not, 3 no answer)"),
    "reload": ("reload", "make a running daemon re-read the rules from its config file"),
    "subscribe": ("subscribe", "print verdicts as they are published; fills gaps by replay"),
    "bridge": ("bridge", "forward verdicts to a PLC (Modbus TCP or OPC UA) with a new-result/ack handshake"),
    "journal": ("journal", "check the verdict journal, or salvage a damaged one"),
    "synth": ("synth", "generate synthetic micrographs with class-index masks, or compare them with real ones"),
    "demo": ("demo", "run the daemon on generated micrographs and print the verdicts"),
    "validate-config": ("validate_config", "validate a config file and exit (0 valid, 2 invalid)"),
    "train": ("train", "train the U-Net on image + mask pairs (writes best.pt, last.pt, history.json, curve.png)"),
    "export": ("export", "export a U-Net checkpoint to ONNX (dynamic H/W), check it against torch, write a model card"),
    "quantize": ("quantize",
                 "int8-quantise an ONNX U-Net for the CPU (ONNX Runtime static quantisation), checked against fp32"),
    "evaluate": ("evaluate", "score engines against labelled micrographs (IoU, Dice, fractions) and write a report"),
    "regrade": ("regrade", "re-grade an archive of micrographs on Ray (local, or a cluster) into a Parquet dataset"),
    "build-engine": ("build_engine",
                     "build a TensorRT engine plan from the U-Net ONNX model (needs an NVIDIA GPU and tensorrt)"),
    "bench": ("bench", "benchmark the station end to end (frames/s, latency, drops) against the seed-style pipeline"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command listed; `command`'s module (all of them when None) is
    imported to add its options, the others stay placeholders that only carry their help line."""
    parser = argparse.ArgumentParser(
        prog="inspectd",
        description="Inline inspection of thermal- and cold-spray coating micrographs.",
    )
    parser.add_argument("--version", action="version", version=f"inspectd {inspectd.__version__}")
    parser.add_argument("--log-level", default=None, type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="override the config's log_level")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name, (module_name, help_line) in COMMANDS.items():
        if command is None or name == command:
            module = importlib.import_module(f"inspectd.commands.{module_name}")
            sub = module.add_parser(_WithHelpLine(subparsers, help_line))
            sub.set_defaults(handler=module.run)
        else:
            subparsers.add_parser(name, help=help_line)
    return parser


class _WithHelpLine:
    """What a command module's `add_parser` is handed: its sub-parser gets the help line from
    `COMMANDS`, so each line is written once, here."""

    def __init__(self, subparsers: argparse._SubParsersAction, help_line: str) -> None:
        self._subparsers = subparsers
        self._help_line = help_line

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        return self._subparsers.add_parser(name, help=self._help_line, **kwargs)


def command_named(argv: list[str]) -> str | None:
    """The command on the line: the first word that is not an option or `--log-level`'s value.

    >>> command_named(["--log-level", "DEBUG", "status", "--json"]), command_named(["--help"])
    ('status', None)
    """
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(command_named(argv) or "")
    args = parser.parse_args(argv)
    from inspectd.daemon import logs

    logs.configure_console(args.log_level or "WARNING")  # `run` switches to logfmt
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"inspectd: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the last guard: one line for systemd and scripts, not a traceback
        logging.getLogger("inspectd").debug("unexpected error", exc_info=True)
        text = " ".join(str(exc).split()) or "no message"
        print(f"inspectd: unexpected error: {type(exc).__name__}: {text} (--log-level DEBUG logs where)",
              file=sys.stderr)
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
