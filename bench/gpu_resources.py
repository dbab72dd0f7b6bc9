"""What every CUDA kernel costs an SM, from the compiler alone: no GPU needed.

Each numba.cuda kernel is compiled to PTX for each target GPU (NVVM, with the argument types
the wrappers launch it with), then assembled by ``ptxas -v``, which reports registers per
thread, static shared memory, stack frame and register spills. From those and the kernel's
launch block size (``kernels.gpu_config``) it works out how many blocks fit on one SM and the
theoretical occupancy, as CUDA's occupancy calculator does. It also counts the kernel's
double-precision PTX instructions: a Jetson's GPU, unlike an H100's, has few FP64 units, so
a per-pixel kernel must have none.

These are compile-time facts, not timings: they say whether a launch can fit (a block whose
registers exceed the SM's file fails with "too many resources requested") and where a kernel
would lose time (spills go to local memory, low occupancy hides latency badly), on GPUs the
code may not have run on yet. Timings come only from ``bench/gpu_kernels.py`` on a real GPU.

Targets: ``sm_90`` (H100 / H200) and ``sm_87`` (Jetson AGX Orin / Orin NX / Orin Nano).

Usage::

    .venv/bin/python bench/gpu_resources.py                 # table per target
    .venv/bin/python bench/gpu_resources.py --json out.json  # and the rows as JSON

Needs NVVM (numba-cuda finds it in the CUDA toolkit) for the PTX; without ``ptxas`` on
``PATH`` (or in ``$CUDA_HOME/bin``) it reports the PTX counts only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class SmLimits:
    """Per-SM limits of one compute capability (CUDA C Programming Guide, table 'Technical Specifications')."""

    arch: str
    gpus: str
    max_warps: int
    max_blocks: int
    registers: int
    shared_bytes: int
    # Shared memory the runtime keeps per resident block (1 KiB since compute capability 8.0).
    reserved_shared_per_block: int = 1024
    register_unit: int = 256  # registers are allocated per warp in units of this many


TARGETS = {
    "sm_90": SmLimits("sm_90", "H100 / H200", max_warps=64, max_blocks=32, registers=65536,
                      shared_bytes=228 * 1024),
    "sm_87": SmLimits("sm_87", "Jetson Orin", max_warps=48, max_blocks=16, registers=65536,
                      shared_bytes=164 * 1024),
}


@dataclass(frozen=True)
class KernelResources:
    """One kernel on one target: what ptxas reports, and what follows for its launch block."""

    kernel: str
    types: str
    arch: str
    threads_per_block: int
    fp64_instructions: int
    registers: int | None = None
    shared_bytes: int | None = None
    stack_bytes: int | None = None
    spill_store_bytes: int | None = None
    spill_load_bytes: int | None = None
    blocks_per_sm: int | None = None
    occupancy: float | None = None
    limited_by: str | None = None


def kernel_cases() -> list[tuple[object, tuple, str, int]]:
    """(kernel, numba argument types, short type label, threads per launched block) for every CUDA kernel.

    The argument types are the ones the wrappers launch with (uint8 frames may arrive as
    non-contiguous views of a caller's device array, hence the 'A' layouts).
    """
    from numba import types as t

    from kernels import gpu_clahe, gpu_config, gpu_guided, gpu_threshold, gpu_tiles

    u8c, u8a, u16c = t.Array(t.uint8, 2, "C"), t.Array(t.uint8, 2, "A"), t.Array(t.uint16, 2, "C")
    i32_1, i32_2, i32_3 = (t.Array(t.int32, n, "C") for n in (1, 2, 3))
    f32_1, f32_2, f32_3, f32_4 = (t.Array(t.float32, n, "C") for n in (1, 2, 3, 4))
    i64, f32, b = t.int64, t.float32, t.boolean
    flat = gpu_config.THREADS_PER_BLOCK
    pixel = gpu_config.PIXEL_BLOCK[0] * gpu_config.PIXEL_BLOCK[1]
    return [
        (gpu_clahe._tile_hist_u8, (u8c, i64, i64, i32_3), "u8", flat),
        (gpu_clahe._tile_hist_u8, (u8a, i64, i64, i32_3), "u8 view", flat),
        (gpu_clahe._tile_hist_u16, (u16c, i64, i64, i64, i32_2), "u16", flat),
        (gpu_clahe._tile_luts_u8, (i32_3, i64, f32, u8c), "u8", flat),
        (gpu_clahe._tile_luts_u16, (i32_2, i64, f32, u16c), "u16", flat),
        (gpu_clahe._interpolate, (u8c, u8c, i64, i64, f32, f32, i64, u8c), "u8", pixel),
        (gpu_clahe._interpolate, (u16c, u16c, i64, i64, f32, f32, i64, u16c), "u16", pixel),
        (gpu_threshold._binary, (u8a, i64, u8c), "u8 view", pixel),
        (gpu_threshold._binary, (u16c, i64, u8c), "u16", pixel),
        (gpu_threshold._histogram_u8, (u8a, i32_1), "u8 view", flat),
        (gpu_threshold._histogram_u16, (u16c, i32_1), "u16", flat),
        (gpu_guided._guided, (f32_3, u8c, f32, f32, f32, f32, u8c), "u8", pixel),
        (gpu_guided._guided, (f32_3, u16c, f32, f32, f32, f32, u8c), "u16", pixel),
        (gpu_tiles._tiles, (u8c, f32_1, i32_2, b, f32_4), "u8", pixel),
        (gpu_tiles._tiles, (u16c, f32_1, i32_2, b, f32_4), "u16", pixel),
        (gpu_tiles._blend_add, (f32_3, f32_2, f32_3, i64, i64, i64, b, b, b, b), "f32", pixel),
        (gpu_tiles._mean, (f32_3, f32_2), "f32", pixel),
        (gpu_tiles._argmax, (f32_3, u8c), "f32", pixel),
    ]


@contextlib.contextmanager
def _current_device_answers(cc: tuple[int, int]):
    """While compiling, numba's "which device is current?" is answered with a device of ``cc``.

    numba-cuda asks the current device for its compute capability when a kernel calls a
    device function. Without a GPU there is none, and on a GPU machine it is that GPU, not
    the target being compiled for; so for the compile the answer is ``cc``, then restored.
    """
    import numba.cuda.dispatcher as dispatcher

    real = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    try:
        yield
    finally:
        dispatcher.get_current_device = real


def compile_ptx(kernel, signature: tuple, arch: str) -> str:
    from numba import cuda

    cc = (int(arch[3:-1]), int(arch[-1]))
    with _current_device_answers(cc):
        ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=cc)
    return ptx


# Instructions with an .f64 operand type (cvt.f64.f32, cvt.rni.s64.f64, add.f64, ...); a
# `.reg .f64` declaration starts with a dot, not a letter, so it is not counted.
_FP64_INSTRUCTION = re.compile(r"^\s*[a-z][\w.]*\.f64\b", re.MULTILINE)


def fp64_instruction_count(ptx: str) -> int:
    return len(_FP64_INSTRUCTION.findall(ptx))


def find_ptxas() -> str | None:
    found = shutil.which("ptxas")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "ptxas").is_file():
            return str(Path(home) / "bin" / "ptxas")
    return None


_PTXAS_NUMBERS = {
    "registers": re.compile(r"Used (\d+) registers"),
    "shared_bytes": re.compile(r"(\d+) bytes smem"),
    "stack_bytes": re.compile(r"(\d+) bytes stack frame"),
    "spill_store_bytes": re.compile(r"(\d+) bytes spill stores"),
    "spill_load_bytes": re.compile(r"(\d+) bytes spill loads"),
}


class PtxasTooOldError(RuntimeError):
    """The ptxas found predates the NVVM that wrote the PTX (e.g. a pip CUDA 13.5 NVVM beside a 13.0 toolkit)."""


def ptxas_report(ptxas: str, ptx: str, arch: str) -> dict[str, int]:
    """Registers, static shared memory, stack and spills of the one entry in ``ptx``, from ``ptxas -v``."""
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "kernel.ptx"
        source.write_text(ptx)
        done = subprocess.run([ptxas, "-v", f"-arch={arch}", str(source), "-o", str(Path(work) / "kernel.cubin")],
                              capture_output=True, text=True, check=False)
    if "Unsupported .version" in done.stderr:
        raise PtxasTooOldError(done.stderr.strip().splitlines()[0])
    if done.returncode != 0:
        msg = f"ptxas -arch={arch} failed: {done.stderr.strip()[-2000:]}"
        raise RuntimeError(msg)
    report = {}
    for name, pattern in _PTXAS_NUMBERS.items():
        found = pattern.search(done.stderr)
        report[name] = int(found.group(1)) if found else 0  # ptxas omits smem when there is none
    return report


def blocks_per_sm(limits: SmLimits, threads: int, registers: int, shared_bytes: int) -> tuple[int, str]:
    """Resident blocks of ``threads`` threads on one SM, and the limit that binds first."""
    warps = math.ceil(threads / 32)
    registers_per_warp = math.ceil(registers * 32 / limits.register_unit) * limits.register_unit
    bounds = {
        "warps": limits.max_warps // warps,
        "blocks": limits.max_blocks,
        "registers": limits.registers // (registers_per_warp * warps),
        "shared memory": limits.shared_bytes // (shared_bytes + limits.reserved_shared_per_block),
    }
    binding = min(bounds, key=bounds.get)
    return bounds[binding], binding


def resources(arch: str, ptxas: str | None) -> list[KernelResources]:
    limits = TARGETS[arch]
    rows = []
    for kernel, signature, types_label, threads in kernel_cases():
        ptx = compile_ptx(kernel, signature, arch)
        if ".entry" not in ptx:
            msg = f"{kernel.py_func.__name__} ({types_label}): NVVM produced no kernel entry for {arch}"
            raise RuntimeError(msg)
        row = {"kernel": kernel.py_func.__name__, "types": types_label, "arch": arch,
               "threads_per_block": threads, "fp64_instructions": fp64_instruction_count(ptx)}
        if ptxas:
            row.update(ptxas_report(ptxas, ptx, arch))
            blocks, binding = blocks_per_sm(limits, threads, row["registers"], row["shared_bytes"])
            row.update(blocks_per_sm=blocks, limited_by=binding,
                       occupancy=round(blocks * math.ceil(threads / 32) / limits.max_warps, 3))
        rows.append(KernelResources(**row))
    return rows


def format_table(rows: list[KernelResources]) -> str:
    limits = TARGETS[rows[0].arch]
    header = (f"{limits.arch} ({limits.gpus}): {limits.max_warps} warps, {limits.registers} registers, "
              f"{limits.shared_bytes // 1024} KiB shared memory per SM\n"
              "| kernel | types | threads/block | registers | shared B | spills B (st/ld) | stack B "
              "| fp64 instr | blocks/SM | occupancy | limited by |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [header]
    for row in rows:
        known = row.registers is not None
        cells = [f"`{row.kernel}`", row.types, row.threads_per_block]
        cells += [row.registers, row.shared_bytes, f"{row.spill_store_bytes}/{row.spill_load_bytes}", row.stack_bytes] \
            if known else ["–"] * 4
        cells.append(row.fp64_instructions)
        cells += [row.blocks_per_sm, f"{row.occupancy:.0%}", row.limited_by] if known else ["–"] * 3
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=",".join(TARGETS), help=f"comma-separated targets ({', '.join(TARGETS)})")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        print("gpu_resources: unset NUMBA_ENABLE_CUDASIM: the simulator compiles nothing", file=sys.stderr)
        return 2
    from numba.cuda.cudadrv import nvvm

    if not nvvm.is_available():
        print("gpu_resources: no NVVM (CUDA toolkit) on this machine: nothing to compile", file=sys.stderr)
        return 2
    ptxas = find_ptxas()
    if ptxas is None:
        print("gpu_resources: no ptxas found (PATH, $CUDA_HOME/bin): PTX counts only", file=sys.stderr)
    all_rows = []
    for arch in args.arch.split(","):
        try:
            rows = resources(arch.strip(), ptxas)
        except PtxasTooOldError as error:
            print(f"gpu_resources: {ptxas} cannot read this NVVM's PTX ({error}): PTX counts only; "
                  "put the ptxas of the same CUDA release first on PATH", file=sys.stderr)
            ptxas = None
            rows = resources(arch.strip(), ptxas)
        all_rows.extend(rows)
        print(format_table(rows), end="\n\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"ptxas": ptxas, "rows": [asdict(row) for row in all_rows]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
