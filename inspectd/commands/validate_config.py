"""`inspectd validate-config FILE`: check a config without starting anything.

It runs `config.load`, the very function `inspectd run` starts with, so a config it calls
valid is one a start-up does not refuse as a config error (exit 2); what is left to a
start-up is what only the machine can tell (the folder exists, the port is free, the GPU).
"""

from __future__ import annotations

import argparse

from inspectd import config


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("validate-config")
    parser.add_argument("config", help="path of the YAML config file")
    return parser


def run(args: argparse.Namespace) -> int:
    config.load(args.config)  # raises ConfigError -> exit 2 with key path and line
    print(f"{args.config}: valid")
    return 0
