"""Run a Python script as if some packages were not installed: `python without_modules.py a,b script.py ARGS`.

An offline GPU machine may have numba, CuPy and OpenCV but not the daemon's pydantic, pyzmq or
watchdog; a test runs `bench/gpu_kernels.py` through this to prove it needs none of them.
"""

from __future__ import annotations

import importlib.abc
import runpy
import sys


class _Absent(importlib.abc.MetaPathFinder):
    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, fullname, path, target=None):
        if fullname.partition(".")[0] in self.names:
            msg = f"No module named {fullname!r} (hidden by {__file__})"
            raise ModuleNotFoundError(msg, name=fullname)
        return None


if __name__ == "__main__":
    hidden, script, *script_args = sys.argv[1:]
    sys.meta_path.insert(0, _Absent(set(hidden.split(","))))
    sys.argv = [script, *script_args]
    runpy.run_path(script, run_name="__main__")
