#!/usr/bin/env python3
"""How long `inspectd` takes to start: the health check (`inspectd status --help`) and a
heavy command (`inspectd analyze --help`) beside a bare `python -c pass`, in one run.

    python bench/cli_start.py [--repeats N] [--before DIR]

`--before DIR` adds the same commands run from another source tree (e.g. an older
checkout made with `git worktree add DIR REV`), for a before/after in the same run.

`inspectd status` is what systemd, a PLC integrator's script or a monitoring agent runs
every few seconds, so its start-up is worth keeping near the interpreter's own. Each
command runs N times interleaved (the median is reported), in fresh interpreters.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "inspectd --help": [sys.executable, "-m", "inspectd.cli", "--help"],
    "inspectd status --help": [sys.executable, "-m", "inspectd.cli", "status", "--help"],
    "inspectd analyze --help": [sys.executable, "-m", "inspectd.cli", "analyze", "--help"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="runs of each command (default: %(default)s)")
    parser.add_argument("--before", metavar="DIR", help="also run the inspectd commands from this source tree")
    args = parser.parse_args(argv)
    runs = {name: (command, None) for name, command in COMMANDS.items()}
    if args.before:
        before_env = {**os.environ, "PYTHONPATH": os.path.abspath(args.before)}
        runs.update({f"{name} (before)": (command, before_env) for name, command in COMMANDS.items()
                     if name.startswith("inspectd")})
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, (command, env) in runs.items():
            began = time.perf_counter()
            subprocess.run(command, stdout=subprocess.DEVNULL, check=True, env=env)
            times[name].append(time.perf_counter() - began)
    base = statistics.median(times["python -c pass"])
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"median of {args.repeats} runs each\n")
    print("| command | median s | x python -c pass |")
    print("| --- | ---: | ---: |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| `{name}` | {median:.3f} | {median / base:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
