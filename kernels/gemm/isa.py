"""Which micro-kernel runs: the CPU's vector instruction set (ISA) and its block sizes.

An ISA here is a vector length VL (numbers per register) and the tiles that fit its register
file, per dtype. BLIS does the same: one set of loops, one micro-kernel per CPU family.

    isa      registers        float32: VL, MR x NR     float64: VL, MR x NR
    avx512   32 x 512-bit     16,  8 x 48 (24 acc.)    8,  8 x 24
    avx2     16 x 256-bit      8,  4 x 24 (12 acc.)    4,  4 x 12
    scalar   (no vectors)      1,  4 x 4               1,  4 x 4     (portable, for tests)

AVX2/FMA (the laptops: AMD Zen 2-4, Intel Haswell to Alder Lake): 12 accumulators + 3 B
vectors + 1 broadcast = all 16 registers, no spill (checked in the assembly LLVM makes for
znver3 and haswell); 3 + 4 loads per 12 FMAs (BLIS's 6 x 16 needs 2 + 6), and MR = 4 divides
the channel counts of most layers. The in-cache kernel rate is the same for both tiles (114
GFLOP/s per core, float32); whole GEMMs differ in the cache blocks, and the convolutions favour
4 x 24 (kn2row-aa up to 8% faster). The rows tile stays 6 x 2 vectors: its 16 columns are the
channels of a weight gradient (im2col's dW reads the windows in place), which 16 divides and
24 does not (4 x 3: im2col's backward 4% slower). The dot tile is 3 x 4 (12 + 3 A vectors + 1
B vector: 4 x 3 needs 17 registers and spills).

The ISA is chosen when the package is imported: MINIGRAD_GEMM_ISA=avx512|avx2|scalar if set,
else the best the CPU has (llvmlite's host features: avx512f, else avx2 and fma, else scalar).
kernels.gemm.set_isa(name) switches in a running process (tests use it).

Every Numba function of the GEMM takes the ISA as its first argument, an `Isa` object whose
Numba *type* names it (IsaType("avx2")): each ISA therefore compiles, and caches on disk,
its own machine code, and the micro-kernels read VL and the tile from the type at compile
time. Nothing is looked up at run time.
"""
import os

import numpy as np
from llvmlite import binding as llvm_binding
from numba.core import types
from numba.extending import NativeValue, models, register_model, typeof_impl, unbox


class Isa:
    """One micro-kernel family. blocking[dtype] = dict(vl, mr, nr, kc, mc, nc): the register
    tile MR x NR of C, and the cache blocks KC (depth: a KC x NR panel of B stays in L1), MC
    (rows: the packed MC x KC block of A stays in L2) and NC (columns: KC x NC of B in L3).
    rows_mr, rows_nv: the tile of the micro-kernel that reads A's rows in place (MR rows,
    NV vectors wide); dot: (DOT_MR, DOT_NR), the tile of the dot-product kernel; cols_mr,
    cols_nv: the tile of the one that reads A by columns (its MR neighbouring output pixels
    should divide the layers' widths: 14 covers MNIST's 28 and 14, and 56)."""

    def __init__(self, name, title, vl32, tiles, caches, rows, dot, cols):
        self.name, self.title = name, title
        self.blocking = {}
        for dt, vl in ((np.dtype(np.float32), vl32), (np.dtype(np.float64), max(1, vl32 // 2))):
            mr, nv = tiles
            kc, mc, nc = caches[dt.itemsize]
            self.blocking[dt] = dict(vl=vl, mr=mr, nr=nv * vl, kc=kc, mc=mc, nc=nc)
        self.rows_mr, self.rows_nv = rows
        self.dot = dot
        self.cols_mr, self.cols_nv = cols

    def __repr__(self):
        return f"Isa({self.name!r})"


# Cache blocks tuned on the project machine (AMD EPYC, Zen 5: 48 KiB L1d, 1 MiB L2 per core);
# MC is a multiple of MR, NC of NR.
# AVX2 (tuned on an EPYC Zen 4 forced to AVX2, 32 KiB L1d, 1 MiB L2, against OpenBLAS's Haswell
# kernels): what costs in a big GEMM is not the micro-kernel (at peak in cache) but C's tile,
# read and written once per depth block and missed in cache at the end of every micro-kernel.
# KC 384 (float32) makes fewer of those passes than BLIS's 256 (2048^3: 5% faster; 576: 1-2%
# more, but then the in-place kernels of im2col's backward outgrow L1: 3% slower); float64
# keeps 256. A small MC (24 rows) keeps the C rows the macro-kernel walks along few enough for
# the hardware prefetcher to follow them (144 rows: 10-15% slower on a 2048^3 product). NC 4080
# (BLIS's): one column block per thread; with 960 a 1024-column share was 960 + 64, A packed
# twice. The float32 B micro-panel (36 KiB) streams from L2 at 16 bytes a cycle: no cost seen.
ISAS = {
    "avx512": Isa("avx512", "AVX-512", 16, (8, 3), {4: (384, 144, 960), 8: (384, 72, 480)},
                  rows=(6, 4), dot=(4, 6), cols=(14, 2)),
    "avx2": Isa("avx2", "AVX2/FMA", 8, (4, 3), {4: (384, 24, 4080), 8: (256, 24, 4080)},
                rows=(6, 2), dot=(3, 4), cols=(7, 1)),
    "scalar": Isa("scalar", "scalar", 1, (4, 4), {4: (256, 64, 256), 8: (256, 64, 256)},
                  rows=(4, 4), dot=(2, 2), cols=(7, 4)),
}
VECTOR_ISAS = ("avx512", "avx2")  # the ones that beat OpenBLAS's AVX2 kernels (auto mode)


def host_features():
    return llvm_binding.get_host_cpu_features()


def supported():
    """The ISAs this CPU can run, best first."""
    f = host_features()
    names = []
    if f.get("avx512f", False):
        names.append("avx512")
    if f.get("avx2", False) and f.get("fma", False):
        names.append("avx2")
    return names + ["scalar"]


def default_isa():
    """MINIGRAD_GEMM_ISA if set (it must be one this CPU runs), else the best one."""
    name = os.environ.get("MINIGRAD_GEMM_ISA", "").strip().lower()
    if not name:
        return supported()[0]
    if name not in ISAS:
        raise ValueError(f"MINIGRAD_GEMM_ISA must be one of {tuple(ISAS)}, got {name!r}")
    return name


# --------------------------------------------------------------------------- the Numba type


def _compiled_in(isa_name):
    """What the micro-kernels compile in from an ISA: VL and its tiles."""
    isa = ISAS[isa_name]
    blk = isa.blocking[np.dtype(np.float32)]
    return (f"vl {blk['vl']}, tile {blk['mr']}x{blk['nr']}, rows {isa.rows_mr}x{isa.rows_nv}, "
            f"dot {isa.dot[0]}x{isa.dot[1]}, cols {isa.cols_mr}x{isa.cols_nv}")


class IsaType(types.Dummy):
    """The Numba type of an Isa: one type per ISA, so one compiled version per ISA.

    Its name holds the tiles as well as the ISA's name: Numba's on-disk cache finds compiled
    code by the argument types (and checks only the caller's own source file), so a tile
    changed here must change the type, or a cached kernel of the old tile would run with the
    new MR and NR. (Cache blocks KC, MC, NC are run-time arguments: no recompile.)"""

    def __init__(self, isa_name):
        self.isa_name = isa_name
        super().__init__(name=f"Isa({isa_name}: {_compiled_in(isa_name)})")

    @property
    def isa(self):
        return ISAS[self.isa_name]


@typeof_impl.register(Isa)
def _typeof_isa(val, c):
    return IsaType(val.name)


register_model(IsaType)(models.OpaqueModel)


@unbox(IsaType)
def _unbox_isa(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())
