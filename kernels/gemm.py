"""GEMM from scratch: C = A @ B the way BLAS libraries compute it, in Numba.

Every lowering in this package ends in matrix multiplications, so their speed is the
convolution's speed. This file is the multiplication itself, written the way GotoBLAS,
BLIS and OpenBLAS write theirs, small enough to read in one sitting.

    C (m x n)  +=  A (m x k) @ B (k x n)

    loop 5  for jc in steps of NC:            a column block of B and C
    loop 4    for pc in steps of KC:          a depth block; B[pc:pc+KC, jc:jc+NC] is PACKED
    loop 3      for ic in steps of MC:        a row block; A[ic:ic+MC, pc:pc+KC] is PACKED
    loop 2        for j_r in steps of NR:      a KC x NR micro-panel of packed B (stays in L1)
    loop 1          for i_r in steps of MR:    a MR x KC micro-panel of packed A
                      MICRO-KERNEL: C[i_r:i_r+MR, j_r:j_r+NR] += Apanel @ Bpanel

  The micro-kernel holds the whole MR x NR tile of C in vector registers for the length of
  the depth loop: for each k it loads one row of the B panel (NR numbers, NR/VL vectors),
  broadcasts each of the MR numbers of the A panel's column, and issues MR * NR/VL fused
  multiply-adds. With float32, VL = 16 (one 512-bit AVX-512 register), MR = 8, NR = 48:
  24 accumulator registers + 3 for B + 1 broadcast, of the 32 the CPU has; 24 FMAs for every
  11 loads. Nothing else in the GEMM does arithmetic; the rest is arranging memory so the
  micro-kernel never waits:

    packed A block  (MC x KC)  panels of MR rows, k-major:  apack[p, k, i] = A[ic+p*MR+i, pc+k]
    packed B block  (KC x NC)  panels of NR cols, k-major:  bpack[q, k, j] = B[pc+k, jc+q*NR+j]

  so the micro-kernel reads both operands contiguously, whatever the strides of A and B (a
  transposed view such as `cols.T` costs nothing extra: packing reads it once). Edges are
  zero-padded in the packed panels; an edge tile of C is computed into a scratch tile by the
  narrowest kernel that covers it (1, 2 or 3 vectors wide) and only its valid part is added
  to C. Callers that pack their own operands (kernels/im2col.py lowers straight into packed
  panels) call loops 1-2, `_macro_kernel`, directly.

  One operand need not be packed at all when its rows can be found by a table: the "rows"
  micro-kernels read MR rows of A, or per k one row of B, wherever they lie in an array
  (`_macro_kernel_rows_a`, `_macro_kernel_rows_b`). A stride-1 convolution's patch matrix is
  such an operand: each of its rows is a window of the padded image (kernels/im2col.py).

Why not `numpy.matmul`? It is the default: NumPy's BLAS (OpenBLAS in the PyPI wheels) is what
`gemm="blas"` uses, everywhere. But OpenBLAS picks its kernels from the CPU when it loads and
the project machines pin them to AVX2 (OPENBLAS_CORETYPE=Haswell), half of what an AVX-512
core does per cycle. This GEMM targets the CPU it runs on (Numba compiles for the host), so
on an AVX-512 machine its FMAs are 512 bits wide. `available()` says whether it is used here.

The micro-kernel is written in LLVM IR through Numba's `@intrinsic`: Numba keeps the arrays a
`@njit` function allocates on the heap, so plain Python loops over an accumulator array never
reach registers (a first attempt that way ran at 15 GFLOP/s). The IR below is the same loop
a C programmer writes with `_mm512_fmadd_ps`, one line per instruction kind.

Parallelism: the problem is cut into one part per thread, each a complete serial GEMM with its
own packing buffers, so the threads never wait on each other:
  - split N (columns of C) when C is wide: each thread packs its own B columns, all of A;
  - split M (rows of C) when C is tall;
  - split K when the depth dwarfs the output (a weight gradient: m x n small, k = N*Ho*Wo):
    each thread multiplies its slice of the depth into a private C, and the partial Cs are
    summed at the end. Nothing is packed twice.

Workspace: per thread, apack (MC*KC) + bpack (KC*NC) + one MR x NR tile, plus (split K only)
(threads - 1) private m x n outputs. These are GEMM internals, like OpenBLAS's own buffers;
`kernels.workspace_bytes` counts the lowering buffers only.
"""
import os
import threading

import numba
import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._numba import njit, prange, uintp

# --------------------------------------------------------------------------- block sizes
# Per dtype: (vector length VL, MR, NR, KC, MC, NC). MR x NR is the register tile; KC x NR x
# itemsize (the B micro-panel) fits the 48 KiB L1 with room for the A panel; MC x KC x itemsize
# (the packed A block) fits the 1 MiB L2; KC x NC the L3 share of one core. Tuned on the
# project machine (AMD EPYC, Zen 5: 48 KiB L1d, 1 MiB L2 per core, 32 MiB L3).
BLOCKING = {
    np.dtype(np.float32): dict(vl=16, mr=8, nr=48, kc=384, mc=144, nc=960),
    np.dtype(np.float64): dict(vl=8, mr=8, nr=24, kc=384, mc=72, nc=480),
}


def _host_has_avx512():
    features = llvm_binding.get_host_cpu_features()
    return bool(features.get("avx512f", False))


HAS_AVX512 = _host_has_avx512()


def available(dtype=np.float32):
    """True when this GEMM is the fast path here: an AVX-512 CPU and float32/float64 data.

    Without AVX-512 the same code runs (LLVM splits each 512-bit vector into two AVX2 ones)
    and passes every test, but its 24 accumulators no longer fit the 16 AVX2 registers, so
    OpenBLAS is faster and `gemm="auto"` uses it.
    """
    return HAS_AVX512 and np.dtype(dtype) in BLOCKING


# --------------------------------------------------------------------------- the micro-kernel


def _ir_tools(context, builder, signature, dt, vl):
    """What both kernels' IR needs: the vector type, llvm.fma on it, array data pointers
    (data(i, value) for argument i) and 64-bit integer constants."""
    fty = ir.FloatType() if dt == np.float32 else ir.DoubleType()
    vty = ir.VectorType(fty, vl)
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vty, [vty, vty, vty]),
        f"llvm.fma.v{vl}f{dt.itemsize * 8}")

    def data(i, v):
        return context.make_array(signature.args[i])(context, builder, v).data

    def const(v):
        return ir.Constant(ir.IntType(64), v)

    return vty, fma, data, const


def tile_shape(dtype, a_mode="packed"):
    """(MR, NR), the register tile of C. Reading A's rows in place costs a load per row and
    per k, wherever packed A's MR numbers sit side by side; a 6 x 4-vector tile (float32:
    6 x 64) loads 6 + 4 numbers per 24 FMAs, against 8 + 3 for the 8 x 3-vector one, and
    covers a 64-wide C (a weight gradient's output channels) with no edge tile."""
    blk = BLOCKING[np.dtype(dtype)]
    if a_mode == "rows":
        return 6, 4 * blk["vl"]
    return blk["mr"], blk["nr"]


def _make_microkernel(vectors, a_mode="packed", b_mode="packed"):
    """The micro-kernel over the first `vectors` VL-wide column groups of the B panel (None:
    all NR/VL of them; fewer for the narrow tiles at C's right edge), reading A and B as
    `a_mode` / `b_mode` say (see _microkernel_ir)."""

    def typer(args):
        a = args[1]
        if not isinstance(a, types.Array) or a.dtype not in (types.float32, types.float64):
            return None
        dt = np.dtype(str(a.dtype))
        vl = BLOCKING[dt]["vl"]
        mr, nr = tile_shape(dt, a_mode)
        return _microkernel_ir(dt, vl, mr, nr, vectors or nr // vl, a_mode, b_mode,
                               types.void(*args))

    # (@intrinsic needs the arguments spelled out, one signature per pair of modes)
    if a_mode == "packed" and b_mode == "packed":
        def microkernel(typingctx, kc, apack, a_off, bpack, b_off, c, c_off, ldc, accumulate):
            return typer((kc, apack, a_off, bpack, b_off, c, c_off, ldc, accumulate))
    elif a_mode == "packed" and b_mode == "rows":
        def microkernel(typingctx, kc, apack, a_off, b, b_tab, t0, b_off, c, c_off, ldc,
                        accumulate):
            return typer((kc, apack, a_off, b, b_tab, t0, b_off, c, c_off, ldc, accumulate))
    elif a_mode == "rows" and b_mode == "packed":
        def microkernel(typingctx, kc, a, a_tab, a_off, bpack, b_off, c, c_off, ldc,
                        accumulate):
            return typer((kc, a, a_tab, a_off, bpack, b_off, c, c_off, ldc, accumulate))
    else:
        raise ValueError(f"no micro-kernel reads A {a_mode!r} and B {b_mode!r}")
    return intrinsic(microkernel)


def _microkernel_ir(dt, vl, mr, nr, nv, a_mode, b_mode, sig):
    """C[c_off + i*ldc + j] (+)= sum_{k < kc} A[i, k] * B[k, j],  i < MR, j < nv*VL.

    The arguments are (kc, <A's>, <B's>, c, c_off, ldc, accumulate), A's and B's by mode:
      a_mode "packed" (apack, a_off):        A[i, k] = apack[a_off + k*MR + i]
      a_mode "rows"   (a, a_tab, a_off):     A[i, k] = a[a_tab[i] + a_off + k]
      b_mode "packed" (bpack, b_off):        B[k, j] = bpack[b_off + k*NR + j]
      b_mode "rows"   (b, b_tab, t0, b_off): B[k, j] = b[b_tab[t0 + k] + b_off + j]
    "packed" is the layout _pack_a / _pack_b write. "rows" reads the operand in place, one
    row of it anywhere in an array: MR rows of A each running along k, or per k one row of B
    (nv*VL numbers from b_tab[t0 + k] + b_off on, so the array must hold them all; a row may
    overlap the next, as the rows of a convolution's patch matrix do, see kernels/im2col.py).
    `accumulate` false overwrites C (the first depth block), true adds to it. VL comes from
    the dtype (BLOCKING), MR and NR from tile_shape.
    """
    na = 2 if a_mode == "packed" else 3
    nb = 2 if b_mode == "packed" else 4

    def codegen(context, builder, signature, args):
        vty, fma, data, const = _ir_tools(context, builder, signature, dt, vl)
        kc_v = args[0]
        ia, ib, ic = 1, 1 + na, 1 + na + nb
        c_v, coff, ldc_v, acc_flag = args[ic:ic + 4]
        i64 = ir.IntType(64)

        def element(i, index):  # &array_i[index] (index: a 64-bit integer value)
            return builder.gep(data(i, args[i]), [index])

        if a_mode == "packed":
            a_base = element(ia, args[ia + 1])
        else:  # one pointer per row of A, from the table
            a_rows = [builder.gep(element(ia, builder.load(element(ia + 1, const(i)))),
                                  [args[ia + 2]]) for i in range(mr)]
        if b_mode == "packed":
            b_base = element(ib, args[ib + 1])
        else:
            b_base = element(ib, args[ib + 3])
        c_base = element(ic, coff)
        zero = ir.Constant(vty, None)
        splat_mask = ir.Constant(ir.VectorType(ir.IntType(32), vl), None)  # all lanes <- 0

        # for (k = 0; k < kc; k++)   -- the accumulators are loop-carried SSA values (phis),
        # so LLVM keeps them in registers for the whole loop.
        entry = builder.basic_block
        loop = builder.append_basic_block("k_loop")
        done = builder.append_basic_block("k_done")
        builder.cbranch(builder.icmp_signed(">", kc_v, const(0)), loop, done)

        builder.position_at_end(loop)
        k = builder.phi(i64)
        k.add_incoming(const(0), entry)
        acc = [[builder.phi(vty) for _ in range(nv)] for _ in range(mr)]
        for row in acc:
            for a in row:
                a.add_incoming(zero, entry)
        if b_mode == "packed":
            b_row = builder.gep(b_base, [builder.mul(k, const(nr))])
        else:
            b_row = builder.gep(b_base, [builder.load(
                element(ib + 1, builder.add(args[ib + 2], k)))])
        b = [builder.load(builder.bitcast(builder.gep(b_row, [const(v * vl)]),
                                          vty.as_pointer()), align=dt.itemsize)
             for v in range(nv)]                                     # B[k, 0:nv*VL]
        if a_mode == "packed":
            a_col = builder.gep(a_base, [builder.mul(k, const(mr))])
            a_ptrs = [builder.gep(a_col, [const(i)]) for i in range(mr)]
        else:
            a_ptrs = [builder.gep(a_rows[i], [k]) for i in range(mr)]
        new = []
        for i in range(mr):
            a_ik = builder.load(a_ptrs[i])                            # A[i, k]
            a_bc = builder.shuffle_vector(                         # broadcast to all lanes
                builder.insert_element(ir.Constant(vty, ir.Undefined), a_ik,
                                       ir.Constant(ir.IntType(32), 0)),
                ir.Constant(vty, ir.Undefined), splat_mask)
            new.append([builder.call(fma, [a_bc, b[v], acc[i][v]]) for v in range(nv)])
        k_next = builder.add(k, const(1))
        body_end = builder.basic_block
        k.add_incoming(k_next, body_end)
        for i in range(mr):
            for v in range(nv):
                acc[i][v].add_incoming(new[i][v], body_end)
        builder.cbranch(builder.icmp_signed("<", k_next, kc_v), loop, done)

        # store the tile: C = acc, or C += acc
        builder.position_at_end(done)
        totals = [[builder.phi(vty) for _ in range(nv)] for _ in range(mr)]  # 0 if kc == 0
        for i in range(mr):
            for v in range(nv):
                totals[i][v].add_incoming(zero, entry)
                totals[i][v].add_incoming(new[i][v], body_end)
        add = builder.icmp_signed("!=", acc_flag, ir.Constant(acc_flag.type, 0))
        for i in range(mr):
            c_row = builder.gep(c_base, [builder.mul(const(i), ldc_v)])
            for v in range(nv):
                total = totals[i][v]
                ptr = builder.bitcast(builder.gep(c_row, [const(v * vl)]), vty.as_pointer())
                old = builder.load(ptr, align=dt.itemsize)
                builder.store(builder.select(add, builder.fadd(old, total), total), ptr,
                              align=dt.itemsize)
        return context.get_dummy_value()

    return sig, codegen


# The full MR x NR kernel, and narrower ones for C's last columns: a 196-column product (an
# MNIST conv2 image) is 4 full tiles and a 4-column edge, which the 1-vector kernel computes
# at a third of the full kernel's cost. The same three widths read one operand in place
# (kernels/im2col.py: the patch matrix's rows are windows of the padded image).
_microkernel = _make_microkernel(None)
_MICRO_1 = _make_microkernel(1)
_MICRO_2 = _make_microkernel(2)
_micro_rows_b = _make_microkernel(None, "packed", "rows")
_MICRO_ROWS_B_1 = _make_microkernel(1, "packed", "rows")
_MICRO_ROWS_B_2 = _make_microkernel(2, "packed", "rows")
_micro_rows_a = _make_microkernel(None, "rows", "packed")  # tile_shape(dt, "rows"): 4 vectors
_MICRO_ROWS_A_1 = _make_microkernel(1, "rows", "packed")
_MICRO_ROWS_A_2 = _make_microkernel(2, "rows", "packed")
_MICRO_ROWS_A_3 = _make_microkernel(3, "rows", "packed")


# --------------------------------------------------------------------------- the dot kernel
# When A is stored by rows and B by columns (A = dY, B = cols.T in a weight gradient), every
# C[i, j] is a dot product of two contiguous runs of k numbers and nothing needs packing:
# DOT_MR rows of A and DOT_NR columns of B are read along k, VL numbers at a time, into
# DOT_MR x DOT_NR vector accumulators (lane l holds the partial sum of the k = l mod VL
# terms); at the end each accumulator is summed across its lanes. The depth is blocked
# (DOT_KC) so that the B rows stay in L1 while every row panel of A passes over them.
DOT_MR, DOT_NR, DOT_KC = 4, 6, 1024


@intrinsic
def _dot_kernel(typingctx, kc, a, a_rows, b, b_rows, out):
    """out[i*DOT_NR + j] = sum_{k < kc} a[a_rows[i] + k] * b[b_rows[j] + k]; kc % VL == 0."""
    if not isinstance(a, types.Array) or a.dtype not in (types.float32, types.float64):
        return None
    dt = np.dtype(str(a.dtype))
    vl = BLOCKING[dt]["vl"]
    mr, nr = DOT_MR, DOT_NR
    sig = types.void(kc, a, a_rows, b, b_rows, out)

    def codegen(context, builder, signature, args):
        kc_v, a_v, ar_v, b_v, br_v, out_v = args
        vty, fma, data, const = _ir_tools(context, builder, signature, dt, vl)

        a_data, b_data = data(1, a_v), data(3, b_v)
        a_ptr = [builder.gep(a_data, [builder.load(builder.gep(data(2, ar_v), [const(i)]))])
                 for i in range(mr)]
        b_ptr = [builder.gep(b_data, [builder.load(builder.gep(data(4, br_v), [const(j)]))])
                 for j in range(nr)]
        zero = ir.Constant(vty, None)
        entry = builder.basic_block
        loop = builder.append_basic_block("dot_loop")
        done = builder.append_basic_block("dot_done")
        builder.cbranch(builder.icmp_signed(">", kc_v, const(0)), loop, done)

        builder.position_at_end(loop)  # for (k = 0; k < kc; k += VL)
        k = builder.phi(ir.IntType(64))
        k.add_incoming(const(0), entry)
        acc = [[builder.phi(vty) for _ in range(nr)] for _ in range(mr)]
        for row in acc:
            for x in row:
                x.add_incoming(zero, entry)

        def vload(ptr):
            return builder.load(builder.bitcast(builder.gep(ptr, [k]), vty.as_pointer()),
                                align=dt.itemsize)

        av = [vload(p) for p in a_ptr]
        new = [[None] * nr for _ in range(mr)]
        for j in range(nr):
            bv = vload(b_ptr[j])
            for i in range(mr):
                new[i][j] = builder.call(fma, [av[i], bv, acc[i][j]])
        k_next = builder.add(k, const(vl))
        body_end = builder.basic_block
        k.add_incoming(k_next, body_end)
        for i in range(mr):
            for j in range(nr):
                acc[i][j].add_incoming(new[i][j], body_end)
        builder.cbranch(builder.icmp_signed("<", k_next, kc_v), loop, done)

        builder.position_at_end(done)
        totals = [[builder.phi(vty) for _ in range(nr)] for _ in range(mr)]
        for i in range(mr):
            for j in range(nr):
                totals[i][j].add_incoming(zero, entry)
                totals[i][j].add_incoming(new[i][j], body_end)
        out_data = data(5, out_v)
        for i in range(mr):
            for j in range(nr):
                v = totals[i][j]
                width = vl
                while width > 1:  # add the upper half onto the lower half, log2(VL) times
                    width //= 2
                    lo = builder.shuffle_vector(v, v, ir.Constant(
                        ir.VectorType(ir.IntType(32), width), list(range(width))))
                    hi = builder.shuffle_vector(v, v, ir.Constant(
                        ir.VectorType(ir.IntType(32), width), list(range(width, 2 * width))))
                    v = builder.fadd(lo, hi)
                total = builder.extract_element(v, ir.Constant(ir.IntType(32), 0))
                builder.store(total, builder.gep(out_data, [const(i * nr + j)]))
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True)
def _gemm_dot_serial(a, bt, c, p0, p1, j_lo, j_hi, accumulate, vl, tile, a_rows, b_rows):
    """c[:, j_lo:j_hi] (+)= a[:, p0:p1] @ bt[j_lo:j_hi, p0:p1].T; a (m, k), bt (n, k)."""
    m, k = a.shape
    n = j_hi
    af = a.ravel()
    bf = bt.ravel()
    tf = tile.ravel()
    for pc in range(p0, p1, DOT_KC):
        kc = min(DOT_KC, p1 - pc)
        kv = kc - kc % vl  # the vector kernel's part; the last kc % VL terms go scalar
        add = accumulate or pc > p0
        for j0 in range(j_lo, n, DOT_NR):
            for j in range(DOT_NR):  # past the last column: repeat it, results unused
                b_rows[j] = min(j0 + j, n - 1) * k + pc
            for i0 in range(0, m, DOT_MR):
                for i in range(DOT_MR):
                    a_rows[i] = min(i0 + i, m - 1) * k + pc
                _dot_kernel(kv, af, a_rows, bf, b_rows, tf)
                for i in range(min(DOT_MR, m - i0)):
                    for j in range(min(DOT_NR, n - j0)):
                        s = tf[i * DOT_NR + j]
                        for q in range(kv, kc):
                            s += af[a_rows[i] + q] * bf[b_rows[j] + q]
                        if add:
                            c[i0 + i, j0 + j] += s
                        else:
                            c[i0 + i, j0 + j] = s


@njit(parallel=True, cache=True, nogil=True)
def _gemm_dot_parallel(a, bt, c, partial, accumulate, split_k, bounds, vl):
    """Part t takes depth (split_k) or columns bounds[t]:bounds[t+1]; partial Cs are summed."""
    m = c.shape[0]
    n = c.shape[1]
    k = a.shape[1]
    parts = bounds.shape[0] - 1
    for t in prange(parts):
        tile = np.empty(DOT_MR * DOT_NR, dtype=c.dtype)
        a_rows = np.empty(DOT_MR, dtype=np.int64)
        b_rows = np.empty(DOT_NR, dtype=np.int64)
        if not split_k:
            _gemm_dot_serial(a, bt, c, 0, k, bounds[t], bounds[t + 1], accumulate, vl,
                             tile, a_rows, b_rows)
        elif t == 0:
            _gemm_dot_serial(a, bt, c, bounds[t], bounds[t + 1], 0, n, accumulate, vl,
                             tile, a_rows, b_rows)
        else:
            _gemm_dot_serial(a, bt, partial[t - 1], bounds[t], bounds[t + 1], 0, n, False, vl,
                             tile, a_rows, b_rows)
    if split_k:
        for i in prange(m):
            for t in range(parts - 1):
                for j in range(n):
                    c[i, j] += partial[t, i, j]


# --------------------------------------------------------------------------- packing
# The operands arrive C-contiguous, each with a flag saying whether the logical operand is
# its transpose (A = a.T when a_t): `cols.T` is packed straight from `cols`, never copied.
# Flat views and unsigned offsets, as in every copy loop here ("Indexing" in _numba.py).


@njit(cache=True, nogil=True)
def _pack_a(a, a_t, i0, mc, p0, kc, mr, apack):
    """apack[p, k, i] = A[i0 + p*MR + i, p0 + k], zero past the last row."""
    af = a.ravel()
    lda = a.shape[1]
    m = a.shape[1] if a_t else a.shape[0]
    for p in range((mc + mr - 1) // mr):
        base = uintp(p * kc * mr)
        rows = min(mr, mc - p * mr, m - i0 - p * mr)
        if a_t:  # A[i, k] = a[k, i]: row k of a holds the MR numbers side by side
            for k in range(kc):
                src = uintp((p0 + k) * lda + i0 + p * mr)
                dst = base + uintp(k * mr)
                for i in range(rows):
                    apack[dst + uintp(i)] = af[src + uintp(i)]
                for i in range(rows, mr):
                    apack[dst + uintp(i)] = 0
        else:  # A[i, k] = a[i, k]: MR rows read side by side, interleaved into apack
            for i in range(rows):
                src = uintp((i0 + p * mr + i) * lda + p0)
                for k in range(kc):
                    apack[base + uintp(k * mr + i)] = af[src + uintp(k)]
            for i in range(rows, mr):
                for k in range(kc):
                    apack[base + uintp(k * mr + i)] = 0


@njit(cache=True, nogil=True)
def _pack_b(b, b_t, p0, kc, j0, nc, nr, bpack):
    """bpack[q, k, j] = B[p0 + k, j0 + q*NR + j], zero past the last column."""
    bf = b.ravel()
    ldb = b.shape[1]
    for q in range((nc + nr - 1) // nr):
        base = uintp(q * kc * nr)
        width = min(nr, nc - q * nr)
        if b_t:  # B[k, j] = b[j, k]: each of the NR rows of b is read along k
            for j in range(width):
                src = uintp((j0 + q * nr + j) * ldb + p0)
                for k in range(kc):
                    bpack[base + uintp(k * nr + j)] = bf[src + uintp(k)]
            for j in range(width, nr):
                for k in range(kc):
                    bpack[base + uintp(k * nr + j)] = 0
        else:  # B[k, j] = b[k, j]: a contiguous run of NR numbers per k
            for k in range(kc):
                src = uintp((p0 + k) * ldb + j0 + q * nr)
                dst = base + uintp(k * nr)
                for j in range(width):
                    bpack[dst + uintp(j)] = bf[src + uintp(j)]
                for j in range(width, nr):
                    bpack[dst + uintp(j)] = 0


# --------------------------------------------------------------------------- one thread's GEMM


@njit(cache=True, nogil=True)
def _store_tile(tf, ld, c, row, col, rows, cols, add):
    """c[row:row+rows, col:col+cols] (+)= the tile's valid part, tf[i*ld + j] (a flat scratch
    tile of ld columns)."""
    for i in range(rows):
        for j in range(cols):
            if add:
                c[row + i, col + j] += tf[i * ld + j]
            else:
                c[row + i, col + j] = tf[i * ld + j]


@njit(cache=True, nogil=True)
def _edge_tile(kc, apack, a_off, bpack, b_off, c, row, col, rows, cols, add, tile):
    """An edge tile of C (fewer than MR rows or NR columns): the narrowest micro-kernel that
    covers `cols` computes MR x (its width) into `tile`, and only the valid part goes to C."""
    nr = tile.shape[1]
    vl = 64 // tile.itemsize  # numbers per 512-bit vector (BLOCKING's vl)
    tf = tile.ravel()
    if cols <= vl:
        _MICRO_1(kc, apack, a_off, bpack, b_off, tf, 0, nr, False)
    elif cols <= 2 * vl:
        _MICRO_2(kc, apack, a_off, bpack, b_off, tf, 0, nr, False)
    else:
        _microkernel(kc, apack, a_off, bpack, b_off, tf, 0, nr, False)
    _store_tile(tf, nr, c, row, col, rows, cols, add)


@njit(cache=True, nogil=True)
def _macro_kernel(k, apack, bpack, c, i0, i1, j0, j1, accumulate, mr, nr, kc_max, tile):
    """c[i0:i1, j0:j1] (+)= A @ B from operands packed over their whole depth k:
    apack[p*k*MR + kk*MR + i] = A[i0 + p*MR + i, kk]
    bpack[q*k*NR + kk*NR + j] = B[kk, j0 + q*NR + j]
    (what _pack_a / _pack_b write for one block). Depth blocks of kc_max keep the B
    micro-panel in cache; c is C-contiguous."""
    ldc = c.shape[1]
    cf = c.ravel()
    for pc in range(0, k, kc_max):
        kc = min(kc_max, k - pc)
        add = accumulate or pc > 0
        for j_r in range(0, j1 - j0, nr):
            b_off = (j_r // nr) * k * nr + pc * nr
            cols = min(nr, j1 - j0 - j_r)
            for i_r in range(0, i1 - i0, mr):
                a_off = (i_r // mr) * k * mr + pc * mr
                rows = min(mr, i1 - i0 - i_r)
                if rows == mr and cols == nr:  # a full tile, straight into C
                    _microkernel(kc, apack, a_off, bpack, b_off,
                                 cf, (i0 + i_r) * ldc + j0 + j_r, ldc, add)
                else:
                    _edge_tile(kc, apack, a_off, bpack, b_off, c, i0 + i_r, j0 + j_r,
                               rows, cols, add, tile)


# Loops 1-2 again, with one operand read in place by a row table instead of packed (the
# "rows" micro-kernels). kernels/im2col.py calls them with the patch matrix's rows as
# windows of a padded image, so the patch matrix is never written out.


@njit(cache=True, nogil=True)
def _macro_kernel_rows_b(k, apack, b, b_tab, c, m, n, accumulate, mr, nr, kc_max, tile):
    """c[:m, :n] (+)= A @ B,  A packed over its whole depth k as in _macro_kernel,
    B[kk, j] = b[b_tab[kk] + j]. Every B row is read NR numbers at a time, so b must hold
    the VL-rounded tail of the last row. c is C-contiguous."""
    ldc = c.shape[1]
    cf = c.ravel()
    tf = tile.ravel()
    vl = 64 // tile.itemsize
    for pc in range(0, k, kc_max):
        kc = min(kc_max, k - pc)
        add = accumulate or pc > 0
        for j_r in range(0, n, nr):
            cols = min(nr, n - j_r)
            for i_r in range(0, m, mr):
                a_off = (i_r // mr) * k * mr + pc * mr
                rows = min(mr, m - i_r)
                if rows == mr and cols == nr:
                    _micro_rows_b(kc, apack, a_off, b, b_tab, pc, j_r, cf, i_r * ldc + j_r,
                                  ldc, add)
                    continue
                if cols <= vl:
                    _MICRO_ROWS_B_1(kc, apack, a_off, b, b_tab, pc, j_r, tf, 0, nr, False)
                elif cols <= 2 * vl:
                    _MICRO_ROWS_B_2(kc, apack, a_off, b, b_tab, pc, j_r, tf, 0, nr, False)
                else:
                    _micro_rows_b(kc, apack, a_off, b, b_tab, pc, j_r, tf, 0, nr, False)
                _store_tile(tf, nr, c, i_r, j_r, rows, cols, add)


@njit(cache=True, nogil=True)
def _macro_kernel_rows_a(k, a, a_tab, bpack, c, m, n, accumulate, mr, nr, kc_max, tile):
    """c[:m, :n] (+)= A @ B,  A[i, kk] = a[a_tab[i] + kk] (a_tab holds ceil(m/MR)*MR entries,
    those past row m any valid offset), B packed over its whole depth k as in _macro_kernel,
    in panels of NR columns. (MR, NR) must be tile_shape(dtype, "rows"); `tile` is any
    scratch of MR*NR numbers. c is C-contiguous."""
    ldc = c.shape[1]
    cf = c.ravel()
    tf = tile.ravel()
    vl = 64 // tile.itemsize
    for pc in range(0, k, kc_max):
        kc = min(kc_max, k - pc)
        add = accumulate or pc > 0
        for j_r in range(0, n, nr):
            b_off = (j_r // nr) * k * nr + pc * nr
            cols = min(nr, n - j_r)
            for i_r in range(0, m, mr):
                rows = min(mr, m - i_r)
                tab = a_tab[i_r:i_r + mr]
                if rows == mr and cols == nr:
                    _micro_rows_a(kc, a, tab, pc, bpack, b_off, cf, i_r * ldc + j_r, ldc, add)
                    continue
                if cols <= vl:
                    _MICRO_ROWS_A_1(kc, a, tab, pc, bpack, b_off, tf, 0, nr, False)
                elif cols <= 2 * vl:
                    _MICRO_ROWS_A_2(kc, a, tab, pc, bpack, b_off, tf, 0, nr, False)
                elif cols <= 3 * vl:
                    _MICRO_ROWS_A_3(kc, a, tab, pc, bpack, b_off, tf, 0, nr, False)
                else:
                    _micro_rows_a(kc, a, tab, pc, bpack, b_off, tf, 0, nr, False)
                _store_tile(tf, nr, c, i_r, j_r, rows, cols, add)


@njit(cache=True, nogil=True)
def _gemm_serial(a, a_t, b, b_t, c, i0, i1, j0, j1, p0, p1, accumulate,
                 mr, nr, kc_max, mc_max, nc_max, apack, bpack, tile):
    """c[i0:i1, j0:j1] (+)= a[i0:i1, p0:p1] @ b[p0:p1, j0:j1]; c is C-contiguous."""
    for jc in range(j0, j1, nc_max):
        nc = min(nc_max, j1 - jc)
        for pc in range(p0, p1, kc_max):
            kc = min(kc_max, p1 - pc)
            add = accumulate or pc > p0
            _pack_b(b, b_t, pc, kc, jc, nc, nr, bpack)
            for ic in range(i0, i1, mc_max):
                mc = min(mc_max, i1 - ic)
                _pack_a(a, a_t, ic, mc, pc, kc, mr, apack)
                _macro_kernel(kc, apack, bpack, c, ic, ic + mc, jc, jc + nc, add,
                              mr, nr, kc, tile)


# --------------------------------------------------------------------------- the parallel GEMM


@njit(parallel=True, cache=True, nogil=True)
def _gemm_parallel(a, a_t, b, b_t, c, partial, accumulate, split, bounds,
                   mr, nr, kc_max, mc_max, nc_max, apacks, bpacks, tiles):
    """Part t computes rows/cols/depth bounds[t]:bounds[t+1] (split = 0 M, 1 N, 2 K)."""
    m = c.shape[0]
    n = c.shape[1]
    k = a.shape[0] if a_t else a.shape[1]
    parts = bounds.shape[0] - 1
    for t in prange(parts):
        lo = bounds[t]
        hi = bounds[t + 1]
        if split == 0:
            _gemm_serial(a, a_t, b, b_t, c, lo, hi, 0, n, 0, k, accumulate,
                         mr, nr, kc_max, mc_max, nc_max, apacks[t], bpacks[t], tiles[t])
        elif split == 1:
            _gemm_serial(a, a_t, b, b_t, c, 0, m, lo, hi, 0, k, accumulate,
                         mr, nr, kc_max, mc_max, nc_max, apacks[t], bpacks[t], tiles[t])
        elif t == 0:  # split K: part 0 writes C itself, the others a private partial C
            _gemm_serial(a, a_t, b, b_t, c, 0, m, 0, n, lo, hi, accumulate,
                         mr, nr, kc_max, mc_max, nc_max, apacks[t], bpacks[t], tiles[t])
        else:
            _gemm_serial(a, a_t, b, b_t, partial[t - 1], 0, m, 0, n, lo, hi, False,
                         mr, nr, kc_max, mc_max, nc_max, apacks[t], bpacks[t], tiles[t])
    if split == 2:
        for i in prange(m):
            for t in range(parts - 1):
                for j in range(n):
                    c[i, j] += partial[t, i, j]


def _bounds(total, parts, align):
    """parts+1 cut points of range(total), each part a multiple of `align` (the last may not)."""
    blocks = -(-total // align)
    cuts = [min(total, (blocks * t // parts) * align) for t in range(parts + 1)]
    cuts[-1] = total
    return np.array(cuts, dtype=np.int64)


class _Workspace(threading.local):
    """Packing buffers, one set per Python thread (Hogwild workers call GEMMs concurrently)."""

    def __init__(self):
        self.buffers = {}

    def get(self, dtype, parts, blk):
        key = (dtype, parts)
        ws = self.buffers.get(key)
        if ws is None:
            mr, nr, kc, mc, nc = blk["mr"], blk["nr"], blk["kc"], blk["mc"], blk["nc"]
            ws = (np.zeros((parts, -(-mc // mr) * mr * kc), dtype),
                  np.zeros((parts, -(-nc // nr) * nr * kc), dtype),
                  np.zeros((parts, mr, nr), dtype))
            self.buffers[key] = ws
        return ws


_workspace = _Workspace()


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
    blk = BLOCKING[dtype]
    a, a_t = _as_stored(a)
    b, b_t = _as_stored(b)
    threads = numba.get_num_threads()
    if not a_t and b_t and k >= 256:  # rows of A and columns of B both run along k
        split_k = k >= DOT_KC * threads or n < DOT_NR * threads
        if split_k:  # a long depth: each thread its slice of k, partial Cs summed
            bounds = _bounds(k, threads if k >= DOT_KC * threads else 1, blk["vl"])
        else:  # each thread its panels of columns, over the whole depth
            bounds = _bounds(n, threads, DOT_NR)
        partial = np.empty((max(0, len(bounds) - 2) if split_k else 0, m, n), dtype=dtype)
        _gemm_dot_parallel(a, b, out, partial, accumulate, split_k, bounds, blk["vl"])
        return out
    split, parts = plan(m, n, k, threads)
    total, align = ((m, blk["mr"]), (n, blk["nr"]), (k, blk["kc"]))[split]
    bounds = _bounds(total, parts, align)
    parts = len(bounds) - 1
    apacks, bpacks, tiles = _workspace.get(dtype, parts, blk)
    partial = np.empty((parts - 1 if split == 2 else 0, m, n), dtype=dtype)
    _gemm_parallel(a, a_t, b, b_t, out, partial, accumulate, split, bounds, blk["mr"], blk["nr"],
                   blk["kc"], blk["mc"], blk["nc"], apacks, bpacks, tiles)
    return out


# --------------------------------------------------------------------------- the dispatcher
# Which GEMM the Numba kernels and the engine use. "auto": this file's GEMM where it is the
# fast path (available()), NumPy's BLAS elsewhere; "numba": this file's GEMM always (tests use
# it to run it on any CPU); "blas": NumPy's BLAS always (to compare the two). Set it with the
# environment variable MINIGRAD_GEMM, or assign kernels.gemm.MODE.
MODES = ("auto", "numba", "blas")
MODE = os.environ.get("MINIGRAD_GEMM", "auto")


def uses_numba(dtype):
    """True when matmul sends `dtype` products to this file's GEMM under the current MODE."""
    if MODE not in MODES:
        raise ValueError(f"kernels.gemm.MODE must be one of {MODES}, got {MODE!r}")
    if MODE == "blas":
        return False
    if MODE == "numba":
        return np.dtype(dtype) in BLOCKING
    return available(dtype)


def gemm_info() -> dict:
    """Which GEMM runs where, for `minigrad info` and for bench reports.

    {"mode": MINIGRAD_GEMM's mode, "avx512": bool, "float32": where, "float64": where}, where
    `where` is "kernels.gemm (Numba, <ISA>, <MR>x<NR> tile)" or "NumPy's BLAS". <ISA> is
    "AVX-512" when each vector FMA is one 512-bit instruction, else "no AVX-512: each vector
    is split by LLVM" (correct, and slower than OpenBLAS; only MODE="numba" picks it there).
    """
    isa = "AVX-512" if HAS_AVX512 else "no AVX-512: each vector is split by LLVM"

    def where(dtype):
        if not uses_numba(dtype):
            return "NumPy's BLAS"
        mr, nr = tile_shape(dtype)
        return f"kernels.gemm (Numba, {isa}, {mr}x{nr} tile)"

    return {"mode": MODE, "avx512": HAS_AVX512, "float32": where(np.float32),
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
