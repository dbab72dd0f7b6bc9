"""`inspectd bench`: the station benchmark, the same as `python bench/throughput.py`.

Runs the real daemon pipeline on generated frames for each engine and backend available,
beside the seed-style pipeline, and writes a table, a JSON file, a latency plot and a
section of `bench/RESULTS.md` (see `inspectd.benchmark.throughput`). Exit code: 0 done,
2 usage or config error.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from inspectd.benchmark import throughput


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark the station end to end (frames/s, latency, drops) against the seed-style pipeline",
        description=throughput.__doc__.split("\n\n")[0],
    )
    return throughput.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return throughput.run(args, shlex.join(["inspectd", *sys.argv[1:]]))
