"""Does this CPU have 8-bit dot-product instructions? It decides what `precision: auto` runs on the CPU.

Why: ONNX Runtime's int8 convolutions beat fp32 only with them (x86 VNNI or AMX-INT8, Arm
dotprod or i8mm). On a CPU without, such as an AMD Zen 3 with AVX2 alone, the bundled int8
U-Net took 190 ms per 2560x1920 frame where fp32 took 178 ms, so `auto` runs fp32 there.
The features come from LLVM's host-CPU query (llvmlite, which numba compiles the CPU kernels
with), not from parsing /proc/cpuinfo.
"""

from __future__ import annotations

import functools

# LLVM's names for the instructions ONNX Runtime's int8 GEMMs use.
INT8_DOT_PRODUCT_FEATURES = ("avx512vnni", "avxvnni", "amx-int8", "dotprod", "i8mm")


@functools.cache
def int8_dot_product() -> tuple[bool, str]:
    """(whether the host CPU has 8-bit dot-product instructions, a reason naming the CPU and them).

    >>> has_them, reason = int8_dot_product()
    >>> isinstance(has_them, bool) and reason.startswith("CPU ")
    True
    """
    import llvmlite.binding as llvm

    try:
        cpu = llvm.get_host_cpu_name()
        features = llvm.get_host_cpu_features()
    except RuntimeError as exc:  # LLVM cannot read this host's features
        return False, f"CPU features unknown ({exc})"
    found = [name for name in INT8_DOT_PRODUCT_FEATURES if features.get(name, False)]
    if found:
        return True, f"CPU {cpu} has {', '.join(found)}"
    return False, f"CPU {cpu} has no 8-bit dot-product instructions (VNNI, AMX-INT8, Arm dotprod/i8mm)"
