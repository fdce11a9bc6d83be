"""GEMM from scratch: C = A @ B the way BLAS libraries compute it, in Numba.

Every lowering in kernels/ ends in matrix multiplications, so their speed is the
convolution's speed. This package is the multiplication itself, laid out the way BLIS
separates the loops from the micro-kernels. Read it in this order:

    reference.py       the whole algorithm in plain Numba, one number at a time: the five
                       loops, packing, and a scalar MR x NR micro-kernel (about a screen;
                       the tests check it against NumPy). Start here.
    pack.py            packing A and B into the panels the micro-kernel reads
    microkernel.py     the vector micro-kernels, in LLVM IR: C[MR x NR] += A @ B on registers
    isa.py             which micro-kernel runs: AVX-512, AVX2/FMA or scalar, and block sizes
    macro.py           the loops around it: one thread's GEMM, the parallel GEMM, the dot path
    __init__.py        (this file) gemm(), matmul() and the public interface

    C (m x n)  +=  A (m x k) @ B (k x n)

    loop 5  for jc in steps of NC:            a column block of B and C
    loop 4    for pc in steps of KC:          a depth block; B[pc:pc+KC, jc:jc+NC] is PACKED
    loop 3      for ic in steps of MC:        a row block; A[ic:ic+MC, pc:pc+KC] is PACKED
    loop 2        for j_r in steps of NR:      a KC x NR micro-panel of packed B (stays in L1)
    loop 1          for i_r in steps of MR:    a MR x KC micro-panel of packed A
                      MICRO-KERNEL: C[i_r:i_r+MR, j_r:j_r+NR] += Apanel @ Bpanel

Which micro-kernel: chosen at import from the CPU (kernels/gemm/isa.py), or by
MINIGRAD_GEMM_ISA=avx512|avx2|scalar; set_isa() switches at run time; gemm_info() names it.

Why not `numpy.matmul`? It is the default where this GEMM is not faster: NumPy's BLAS
(OpenBLAS in the PyPI wheels) is what `MINIGRAD_GEMM=blas` uses everywhere. On the project
machines OpenBLAS is pinned to its AVX2 kernels (OPENBLAS_CORETYPE=Haswell), half of what an
AVX-512 core does per cycle; this GEMM compiles for the CPU it runs on. "auto" uses it on
AVX-512 and AVX2/FMA CPUs, NumPy's BLAS elsewhere (the scalar kernel is for tests).

The public interface for the lowerings that call the loops themselves (kernels/
im2col_fused.py packs its own operands, or reads them in place by row tables):
    isa()                   the active Isa, the first argument of every Numba function below
    blocking(dtype)         dict(vl, mr, nr, kc, mc, nc) of the active ISA
    tile_shape(dtype, a_mode)  (MR, NR), "packed", "rows" or "cols" (A read in place)
    pack_a, pack_b          packing (pack.py)
    macro_kernel, macro_kernel_rows_b, macro_kernel_rows_d, macro_kernel_cols_a
                            loops 2-1 (macro.py): B's rows read in place, A's rows (along
                            a depth table), A by columns
    macro_kernel_taps       loops 2-1 over several products, each added into C at its own
                            offset from the register tile (a fused shift-add: kn2row, kn2col)
    split_bounds(total, parts, align)   cut points of a range, one part per thread
    scratch_tiles(dtype, parts)         one MR x NR scratch tile per part

Workspace: per thread, apack (MC*KC) + bpack (KC*NC) + one MR x NR tile, plus (split K only)
(threads - 1) private m x n outputs. These are GEMM internals, like OpenBLAS's own buffers;
`kernels.workspace_bytes` counts the lowering buffers only.
"""
import os
import threading

import numba
import numpy as np

from .isa import ISAS, VECTOR_ISAS, Isa, default_isa, supported
from .macro import (
    DOT_KC,
    gemm_dot_parallel,
    gemm_parallel,
    macro_kernel,
    macro_kernel_cols_a,
    macro_kernel_rows_b,
    macro_kernel_rows_d,
    macro_kernel_taps,
)
from .microkernel import make_microkernel, tile_of
from .pack import pack_a, pack_b, panels

__all__ = [
    "BLOCKING", "DOT_KC", "HAS_AVX512", "ISA", "ISAS", "MODE", "MODES", "Isa", "available",
    "blocking", "gemm", "gemm_info", "isa", "macro_kernel", "macro_kernel_cols_a",
    "macro_kernel_rows_d",
    "macro_kernel_rows_b", "macro_kernel_taps", "make_microkernel", "matmul", "pack_a",
    "pack_b", "panels", "plan", "scratch_tiles", "set_isa", "split_bounds", "supported",
    "tile_shape", "uses_numba",
]

HAS_AVX512 = "avx512" in supported()

# --------------------------------------------------------------------------- the active ISA
ISA = default_isa()           # its name; change it with set_isa
BLOCKING = ISAS[ISA].blocking  # dtype -> dict(vl, mr, nr, kc, mc, nc), of the active ISA


def set_isa(name):
    """Run every later GEMM on the `name` micro-kernels ("avx512", "avx2" or "scalar"; the
    CPU must support it). Returns the previous name. Each ISA compiles its own code."""
    global ISA, BLOCKING
    if name not in ISAS:
        raise ValueError(f"ISA must be one of {tuple(ISAS)}, got {name!r}")
    if name not in supported():
        raise ValueError(f"this CPU cannot run the {name} micro-kernels ({supported()})")
    old, ISA, BLOCKING = ISA, name, ISAS[name].blocking
    return old


def isa() -> Isa:
    """The active ISA object: the first argument of every Numba function of this package."""
    return ISAS[ISA]


def blocking(dtype):
    """dict(vl, mr, nr, kc, mc, nc): the active ISA's block sizes for `dtype`."""
    return ISAS[ISA].blocking[np.dtype(dtype)]


def tile_shape(dtype, a_mode="packed"):
    """(MR, NR), the register tile of C ("rows": the kernel that reads A's rows in place)."""
    return tile_of(ISAS[ISA], dtype, a_mode)


def available(dtype=np.float32):
    """True when this GEMM is the fast path here: a vector ISA (AVX-512 or AVX2/FMA) and
    float32/float64 data. The scalar kernel runs everywhere, but NumPy's BLAS beats it."""
    return ISA in VECTOR_ISAS and np.dtype(dtype) in BLOCKING


# --------------------------------------------------------------------------- buffers


def split_bounds(total, parts, align):
    """parts+1 cut points of range(total), each part a multiple of `align` (the last may not)."""
    blocks = -(-total // align)
    cuts = [min(total, (blocks * t // parts) * align) for t in range(parts + 1)]
    cuts[-1] = total
    return np.array(cuts, dtype=np.int64)


class _Workspace(threading.local):
    """Packing buffers, one set per Python thread (Hogwild workers call GEMMs concurrently)."""

    def __init__(self):
        self.buffers = {}

    def get(self, dtype, parts):
        key = (ISA, np.dtype(dtype), parts)
        ws = self.buffers.get(key)
        if ws is None:
            blk = blocking(dtype)
            mr, nr, kc, mc, nc = blk["mr"], blk["nr"], blk["kc"], blk["mc"], blk["nc"]
            ws = (np.zeros((parts, -(-mc // mr) * mr * kc), dtype),
                  np.zeros((parts, -(-nc // nr) * nr * kc), dtype),
                  np.zeros((parts, mr, nr), dtype))
            self.buffers[key] = ws
        return ws


_workspace = _Workspace()


def scratch_tiles(dtype, parts, a_mode="packed"):
    """(parts, MR, NR) scratch tiles for edge tiles, one per thread (reused between calls);
    (MR, NR) = tile_shape(dtype, a_mode)."""
    if a_mode == "packed":
        return _workspace.get(dtype, parts)[2]
    key = (ISA, np.dtype(dtype), parts, a_mode)
    tiles = _workspace.buffers.get(key)
    if tiles is None:
        tiles = np.zeros((parts,) + tile_shape(dtype, a_mode), dtype)
        _workspace.buffers[key] = tiles
    return tiles


# --------------------------------------------------------------------------- gemm


def _as_stored(x):
    """(array, transposed): x itself if C-contiguous, x.T if that is; else a C copy."""
    if x.flags.c_contiguous:
        return x, False
    if x.flags.f_contiguous:
        return x.T, True
    return np.ascontiguousarray(x), False


def plan(m, n, k, threads):
    """(split, parts): how gemm cuts an m x n x k product over `threads` threads."""
    if threads <= 1:
        return 1, 1
    if k >= 4 * max(m, n) and k >= 2 * threads * 192:
        return 2, threads  # depth dwarfs the output: split K, sum the partial outputs
    if n >= m:
        return 1, min(threads, max(1, n // 48))
    return 0, min(threads, max(1, m // 8))


def gemm(a, b, out=None, accumulate=False):
    """out (+)= a @ b for 2-D float32/float64 arrays of any strides (transposed views welcome).

    `out` must be C-contiguous (m, n) of the same dtype; it is allocated when None.
    `accumulate=True` adds the product to out instead of overwriting it.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"gemm: cannot multiply {a.shape} by {b.shape}")
    dtype = a.dtype
    if dtype != b.dtype or dtype not in BLOCKING:
        raise ValueError(f"gemm: operands must share a float32/float64 dtype, got "
                         f"{a.dtype} and {b.dtype}")
    m, k = a.shape
    n = b.shape[1]
    if out is None:
        out = np.empty((m, n), dtype=dtype)
        accumulate = False
    elif out.shape != (m, n) or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"gemm: out must be a C-contiguous {dtype} array of shape {(m, n)}, "
                         f"got {out.dtype} {out.shape}")
    if m == 0 or n == 0:
        return out
    if k == 0:
        if not accumulate:
            out[...] = 0
        return out
    the_isa = isa()
    blk = the_isa.blocking[dtype]
    a, a_t = _as_stored(a)
    b, b_t = _as_stored(b)
    threads = numba.get_num_threads()
    if not a_t and b_t and k >= 256:  # rows of A and columns of B both run along k
        dot_mr, dot_nr = the_isa.dot
        split_k = k >= DOT_KC * threads or n < dot_nr * threads
        if split_k:  # a long depth: each thread its slice of k, partial Cs summed
            bounds = split_bounds(k, threads if k >= DOT_KC * threads else 1, blk["vl"])
        else:  # each thread its panels of columns, over the whole depth
            bounds = split_bounds(n, threads, dot_nr)
        partial = np.empty((max(0, len(bounds) - 2) if split_k else 0, m, n), dtype=dtype)
        gemm_dot_parallel(the_isa, a, b, out, partial, accumulate, split_k, bounds,
                          dot_mr, dot_nr)
        return out
    split, parts = plan(m, n, k, threads)
    total, align = ((m, blk["mr"]), (n, blk["nr"]), (k, blk["kc"]))[split]
    bounds = split_bounds(total, parts, align)
    parts = len(bounds) - 1
    apacks, bpacks, tiles = _workspace.get(dtype, parts)
    partial = np.empty((parts - 1 if split == 2 else 0, m, n), dtype=dtype)
    gemm_parallel(the_isa, a, a_t, b, b_t, out, partial, accumulate, split, bounds,
                  blk["mr"], blk["nr"], blk["kc"], blk["mc"], blk["nc"], apacks, bpacks, tiles)
    return out


# --------------------------------------------------------------------------- the dispatcher
# Which GEMM the Numba kernels and the engine use. "auto": this package's GEMM where it is the
# fast path (available()), NumPy's BLAS elsewhere; "numba": this GEMM always (tests use it to
# run it on any CPU); "blas": NumPy's BLAS always (to compare the two). Set it with the
# environment variable MINIGRAD_GEMM, or assign kernels.gemm.MODE.
MODES = ("auto", "numba", "blas")
MODE = os.environ.get("MINIGRAD_GEMM", "auto")


def uses_numba(dtype):
    """True when matmul sends `dtype` products to this GEMM under the current MODE."""
    if MODE not in MODES:
        raise ValueError(f"kernels.gemm.MODE must be one of {MODES}, got {MODE!r}")
    if MODE == "blas":
        return False
    if MODE == "numba":
        return np.dtype(dtype) in BLOCKING
    return available(dtype)


def gemm_info() -> dict:
    """Which GEMM runs where, for `minigrad info` and for bench reports.

    {"mode": MINIGRAD_GEMM's mode, "isa": the micro-kernel family ("avx512", "avx2" or
    "scalar"), "avx512": whether the CPU has AVX-512, "float32": where, "float64": where},
    where `where` is "kernels.gemm (Numba, <ISA> micro-kernel, <MR>x<NR> tile)" or
    "NumPy's BLAS".
    """
    title = ISAS[ISA].title

    def where(dtype):
        if not uses_numba(dtype):
            return "NumPy's BLAS"
        mr, nr = tile_shape(dtype)
        return f"kernels.gemm (Numba, {title} micro-kernel, {mr}x{nr} tile)"

    return {"mode": MODE, "isa": ISA, "avx512": HAS_AVX512, "float32": where(np.float32),
            "float64": where(np.float64)}


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None,
           accumulate: bool = False) -> np.ndarray:
    """a @ b like np.matmul for 2-D operands and stacks of them (3-D, same batch size).

    Goes to `gemm` when uses_numba(a.dtype), else to np.matmul. `out`, when given, must be
    C-contiguous for the GEMM path (any other `out` goes to np.matmul). accumulate=True
    adds the product to `out` (which must then be given).
    """
    if accumulate and out is None:
        raise ValueError("matmul: accumulate=True needs an out array to add to")
    if (a.dtype == b.dtype and uses_numba(a.dtype) and a.ndim in (2, 3) and b.ndim in (2, 3)
            and (out is None or out.flags.c_contiguous)):
        if a.ndim == b.ndim == 2:
            return gemm(a, b, out, accumulate)
        batch = a.shape[0] if a.ndim == 3 else b.shape[0]
        if (a.ndim == 2 or a.shape[0] == batch) and (b.ndim == 2 or b.shape[0] == batch):
            if out is None:
                out = np.empty((batch, a.shape[-2], b.shape[-1]), dtype=a.dtype)
            for i in range(batch):  # a stack: one GEMM per matrix, a 2-D operand shared
                gemm(a[i] if a.ndim == 3 else a, b[i] if b.ndim == 3 else b, out[i], accumulate)
            return out
    if out is None:
        return np.matmul(a, b)
    if accumulate:
        out += np.matmul(a, b)
        return out
    return np.matmul(a, b, out=out)
