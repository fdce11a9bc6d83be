"""Which micro-kernel runs: the CPU's vector instruction set (ISA) and its block sizes.

An ISA here is a vector length VL (numbers per register) and the tiles that fit its register
file, per dtype. BLIS does the same: one set of loops, one micro-kernel per CPU family.

    isa      registers        float32: VL, MR x NR     float64: VL, MR x NR
    avx512   32 x 512-bit     16,  8 x 48 (24 acc.)    8,  8 x 24
    avx2     16 x 256-bit      8,  6 x 16 (12 acc.)    4,  6 x 8     (BLIS's Haswell kernels)
    scalar   (no vectors)      1,  4 x 4               1,  4 x 4     (portable, for tests)

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
    NV vectors wide); dot: (DOT_MR, DOT_NR), the tile of the dot-product kernel."""

    def __init__(self, name, title, vl32, tiles, caches, rows, dot):
        self.name, self.title = name, title
        self.blocking = {}
        for dt, vl in ((np.dtype(np.float32), vl32), (np.dtype(np.float64), max(1, vl32 // 2))):
            mr, nv = tiles
            kc, mc, nc = caches[dt.itemsize]
            self.blocking[dt] = dict(vl=vl, mr=mr, nr=nv * vl, kc=kc, mc=mc, nc=nc)
        self.rows_mr, self.rows_nv = rows
        self.dot = dot

    def __repr__(self):
        return f"Isa({self.name!r})"


# Cache blocks tuned on the project machine (AMD EPYC, Zen 5: 48 KiB L1d, 1 MiB L2 per core);
# the AVX2 ones follow BLIS's Haswell configuration (KC 256). MC is a multiple of MR, NC of NR.
ISAS = {
    "avx512": Isa("avx512", "AVX-512", 16, (8, 3), {4: (384, 144, 960), 8: (384, 72, 480)},
                  rows=(6, 4), dot=(4, 6)),
    "avx2": Isa("avx2", "AVX2/FMA", 8, (6, 2), {4: (256, 144, 960), 8: (256, 72, 480)},
                rows=(6, 2), dot=(3, 4)),
    "scalar": Isa("scalar", "scalar", 1, (4, 4), {4: (256, 64, 256), 8: (256, 64, 256)},
                  rows=(4, 4), dot=(2, 2)),
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


class IsaType(types.Dummy):
    """The Numba type of an Isa: one type per ISA, so one compiled version per ISA."""

    def __init__(self, isa_name):
        self.isa_name = isa_name
        super().__init__(name=f"Isa({isa_name})")

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
