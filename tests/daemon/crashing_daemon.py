"""`inspectd` whose analysis threads raise on every frame: a stand-in for a bug in a stage.

`python -m tests.daemon.crashing_daemon run ...` takes the same command line as `inspectd`.
The fault is put into the pipeline's per-item analysis, outside the per-frame error handling,
so it ends the worker thread's loop the way an unexpected bug would.
"""

from __future__ import annotations

import sys

from inspectd import cli
from inspectd.daemon.pipeline import Pipeline

FAULT = "injected analysis fault"


def _analyse_raises(self: Pipeline, work: object) -> None:
    raise RuntimeError(FAULT)


if __name__ == "__main__":
    Pipeline._analyse = _analyse_raises  # type: ignore[method-assign]
    sys.exit(cli.main())
