"""`inspectd bench`: the station benchmark, the same as `python bench/throughput.py`.

Runs the real daemon pipeline on generated frames for each engine and backend available,
beside the seed-style pipeline, and writes a table, a JSON file, a latency plot and a
section of `bench/RESULTS.md` (see `inspectd_bench.throughput`). Exit code: 0 done,
2 usage or config error, or the benchmark is not installed.

The benchmark is a distribution of its own (`bench/` in the source tree: it carries the
seed-style peer pipeline, which a station does not need), so this command works where it
is installed (`make venv` does) and otherwise says how to get it.
"""

from __future__ import annotations

import argparse
import shlex
import sys

EXIT_USAGE = 2
NOT_INSTALLED = ("inspectd bench: the station benchmark is not installed; from a source checkout run "
                 "`pip install -e ./bench` (or `make venv`), then `inspectd bench` or `python bench/throughput.py`")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    try:
        from inspectd_bench import throughput
    except ImportError:
        parser = subparsers.add_parser("bench", description=NOT_INSTALLED)
        parser.add_argument("ignored", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        return parser
    parser = subparsers.add_parser("bench", description=throughput.__doc__.split("\n\n")[0])
    return throughput.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        from inspectd_bench import throughput
    except ImportError:
        print(NOT_INSTALLED, file=sys.stderr)
        return EXIT_USAGE
    return throughput.run(args, shlex.join(["inspectd", *sys.argv[1:]]))
