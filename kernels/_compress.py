"""Where the pixels of a row change value, 16 at a time, by the CPU's compress instruction.

The region kernels list the first pixel of every run of a row. Written as a loop, that is
one store and one compare per pixel whatever the compiler does (~0.5 ns a pixel, 2.3 ms
on a 2560x1920 class mask on one core): the output position of each pixel depends on all
the ones before it, which no auto-vectoriser turns into vector code. AVX-512 has the
instruction for exactly this, ``vpcompressd``: compare 16 pixels with their left
neighbours at once, pack the positions that differ to the front of a vector, store it,
and move on by the count (0.29 ms for the same mask, 8x less). numba has no name for it,
so ``change_positions`` emits it through LLVM (``llvm.x86.avx512.mask.compress``, the
register form followed by a plain store: the compressing store to memory is microcoded
and slower than the scalar loop on AMD Zen 4).

``HAS_COMPRESS`` says whether the CPU numba compiles for has AVX-512F; callers pick their
scalar loop otherwise (other x86 CPUs, ARM boards, a generic target), so the instruction is
never compiled where it cannot run. Pure functions over arrays: no config, logging or I/O.
"""

from __future__ import annotations

import numba
from llvmlite import ir
from numba import types
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic

# Pixels compared per instruction: 16 positions fill one 512-bit vector of int32.
LANES = 16


def _target_has_avx512f() -> bool:
    """True when the CPU numba compiles for has AVX-512F: the host's features, or the ones
    ``NUMBA_CPU_FEATURES`` names (``NUMBA_CPU_NAME=generic`` for portable caches sets none)."""
    features = numba.config.CPU_FEATURES
    if features is None:
        features = get_host_cpu_features()
    return "+avx512f" in features.split(",")


HAS_COMPRESS = _target_has_avx512f()


@intrinsic
def change_positions(typingctx, row, x, out, n):
    """``out[n:n + k] = the x + j, j < LANES, where row[x + j] != row[x + j - 1]``; returns k.

    Needs ``1 <= x`` and ``x + LANES <= len(row)``; writes all ``LANES`` entries from
    ``out[n]`` (the ones past ``n + k`` hold junk), so ``out`` needs ``n + LANES`` entries.
    ``row``: C-contiguous uint8; ``out``: C-contiguous int32. AVX-512F only (``HAS_COMPRESS``).
    """
    if not (isinstance(row, types.Array) and row.dtype == types.uint8 and row.layout == "C"
            and isinstance(out, types.Array) and out.dtype == types.int32 and out.layout == "C"):
        return None
    sig = types.int64(row, types.int64, out, types.int64)

    def codegen(context, builder, signature, args):
        row_value, x_value, out_value, n_value = args
        row_array = context.make_array(signature.args[0])(context, builder, row_value)
        out_array = context.make_array(signature.args[2])(context, builder, out_value)
        i32 = ir.IntType(32)
        bytes_type = ir.VectorType(ir.IntType(8), LANES)
        ints_type = ir.VectorType(i32, LANES)
        mask_type = ir.VectorType(ir.IntType(1), LANES)
        here = builder.gep(row_array.data, [x_value])
        left = builder.gep(row_array.data, [builder.sub(x_value, ir.Constant(x_value.type, 1))])
        pixels = builder.load(builder.bitcast(here, bytes_type.as_pointer()), align=1)
        neighbours = builder.load(builder.bitcast(left, bytes_type.as_pointer()), align=1)
        changed = builder.icmp_unsigned("!=", pixels, neighbours)
        first = builder.insert_element(ir.Constant(ints_type, ir.Undefined), builder.trunc(x_value, i32),
                                       ir.Constant(i32, 0))
        first = builder.shuffle_vector(first, ir.Constant(ints_type, ir.Undefined),
                                       ir.Constant(ints_type, [0] * LANES))
        positions = builder.add(first, ir.Constant(ints_type, list(range(LANES))))
        compress = builder.module.declare_intrinsic(
            f"llvm.x86.avx512.mask.compress.v{LANES}i32",
            fnty=ir.FunctionType(ints_type, [ints_type, ints_type, mask_type]),
        )
        packed = builder.call(compress, [positions, ir.Constant(ints_type, ir.Undefined), changed])
        destination = builder.gep(out_array.data, [n_value])
        builder.store(packed, builder.bitcast(destination, ints_type.as_pointer()), align=4)
        popcount = builder.module.declare_intrinsic(
            f"llvm.ctpop.i{LANES}", fnty=ir.FunctionType(ir.IntType(LANES), [ir.IntType(LANES)])
        )
        count = builder.call(popcount, [builder.bitcast(changed, ir.IntType(LANES))])
        return builder.zext(count, ir.IntType(64))

    return sig, codegen
