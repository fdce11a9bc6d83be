"""The vector micro-kernels: C[MR x NR] (+)= A panel @ B panel, in LLVM IR through Numba.

Read kernels/gemm/reference.py first: `micro_kernel` there is this file's loop in plain Numba,
one number at a time. Here the same loop runs on vector registers:

    for k in range(kc):                       # the depth loop; the tile of C stays in registers
        b[v] = load B[k, v*VL:(v+1)*VL]       # NR/VL vector loads (one row of the B panel)
        for i in range(MR):
            a = broadcast(A[i, k])            # one number to all VL lanes
            acc[i][v] = fma(a, b[v], acc[i][v])   # MR * NR/VL fused multiply-adds
    C[i, v*VL:(v+1)*VL] (+)= acc[i][v]        # stored once, at the end

VL and the tile come from the ISA (kernels/gemm/isa.py): AVX-512, float32: VL = 16, 8 x 48,
24 accumulators + 3 B vectors + 1 broadcast of the 32 registers; AVX2/FMA: VL = 8, 6 x 16,
12 + 2 + 1 of the 16 (BLIS's Haswell kernel); scalar: VL = 1. The IR below is the loop a C
programmer writes with _mm512_fmadd_ps or _mm256_fmadd_ps, one line per instruction kind.

Why IR and not a Numba loop: Numba keeps the arrays an @njit function allocates on the heap,
so a loop over an accumulator array never reaches registers (15 GFLOP/s on AVX-512); in IR
the accumulators are loop-carried SSA values (phis), which LLVM keeps in registers.

Every kernel takes the ISA first (an Isa object; its Numba type, IsaType, names it), then:
  a_mode "packed" (apack, a_off):        A[i, k] = apack[a_off + k*MR + i]
  a_mode "rows_d" (a, a_tab, d_tab, a_off):  A[i, k] = a[a_tab[i] + d_tab[a_off + k]]
  a_mode "cols"   (a, a_tab, t0, a_off): A[i, k] = a[a_tab[t0 + k] + a_off + i]
  b_mode "packed" (bpack, b_off):        B[k, j] = bpack[b_off + k*NR + j]
  b_mode "rows"   (b, b_tab, t0, b_off): B[k, j] = b[b_tab[t0 + k] + b_off + j]
then (c, c_off, ldc, accumulate): C[c_off + i*ldc + j] (+)= sum_k A[i, k] * B[k, j].
"packed" is what kernels/gemm/pack.py writes; "rows" reads B in place, one row anywhere in
an array (rows may overlap, as a convolution's patch-matrix rows do); "rows_d" reads A's rows
in place, stepped along by a depth table (a table 0, 1, 2, .. reads them straight; one can
skip numbers, such as a patch-matrix row's padding columns: the step costs one load per k,
shared by the MR rows); "cols" reads A in place one *column* at a time: its MR numbers side
by side, anywhere in an array (a transposed patch matrix: MR neighbouring output pixels of
one tap, kernels/im2col_fused.py).
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .isa import IsaType


def _isa_dtype(isa, a):
    """(Isa, dtype) from the typer's arguments, or None (no match: Numba tries elsewhere)."""
    if not isinstance(isa, IsaType) or not isinstance(a, types.Array):
        return None
    if a.dtype not in (types.float32, types.float64):
        return None
    return isa.isa, np.dtype(str(a.dtype))


def tile_of(isa, dt, a_mode="packed"):
    """(MR, NR) of the register tile: reading A's rows in place ("rows", the tile of the
    "rows_d" operand) costs a load per row and per k where packed A's MR numbers sit side by
    side, so that kernel has its own tile (AVX-512: 6 x 4 vectors, 6 + 4 loads per 24 FMAs,
    covering a 64-wide C with no edge); so does the kernel that reads A's columns in place
    (isa.cols_mr x isa.cols_nv vectors)."""
    blk = isa.blocking[np.dtype(dt)]
    if a_mode in ("rows", "rows_d"):
        return isa.rows_mr, isa.rows_nv * blk["vl"]
    if a_mode == "cols":  # AVX-512: 14 x 2 vectors = 28 accumulators + 2 B vectors of the
        # 32 registers; the broadcasts fold into the FMAs as memory operands ({1to16})
        return isa.cols_mr, isa.cols_nv * blk["vl"]
    return blk["mr"], blk["nr"]


def _ir_tools(context, builder, signature, isa, dt, vl):
    """The vector type, a fused multiply-add on it (llvm.fma; llvm.fmuladd for the scalar
    ISA, so that a CPU without FMA multiplies and adds), array data pointers (data(i, value)
    for argument i) and 64-bit integer constants."""
    fty = ir.FloatType() if dt == np.float32 else ir.DoubleType()
    vty = ir.VectorType(fty, vl)
    op = "fmuladd" if isa.name == "scalar" else "fma"
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vty, [vty, vty, vty]),
        f"llvm.{op}.v{vl}f{dt.itemsize * 8}")

    def data(i, v):
        return context.make_array(signature.args[i])(context, builder, v).data

    def const(v):
        return ir.Constant(ir.IntType(64), v)

    return vty, fma, data, const


def _without_isa(body):
    """A codegen for (isa, *args) from one for (*args): the ISA is a compile-time value."""
    def codegen(context, builder, signature, args):
        return body(context, builder, types.void(*signature.args[1:]), args[1:])
    return codegen


def make_microkernel(vectors, a_mode="packed", b_mode="packed"):
    """The micro-kernel over the first `vectors` VL-wide column groups of the B panel (None:
    all NR/VL; fewer for the narrow tiles at C's right edge, never more than NR/VL)."""

    def typer(args):
        found = _isa_dtype(args[0], args[2])
        if found is None:
            return None
        isa, dt = found
        vl = isa.blocking[dt]["vl"]
        mr, nr = tile_of(isa, dt, a_mode)
        nv = min(vectors or nr // vl, nr // vl)
        sig, body = _microkernel_ir(isa, dt, vl, mr, nr, nv, a_mode, b_mode,
                                    types.void(*args[1:]))
        return types.void(*args), _without_isa(body)

    # (@intrinsic needs the arguments spelled out, one signature per pair of modes)
    if a_mode == "packed" and b_mode == "packed":
        def microkernel(typingctx, isa, kc, apack, a_off, bpack, b_off, c, c_off, ldc,
                        accumulate):
            return typer((isa, kc, apack, a_off, bpack, b_off, c, c_off, ldc, accumulate))
    elif a_mode == "packed" and b_mode == "rows":
        def microkernel(typingctx, isa, kc, apack, a_off, b, b_tab, t0, b_off, c, c_off, ldc,
                        accumulate):
            return typer((isa, kc, apack, a_off, b, b_tab, t0, b_off, c, c_off, ldc,
                          accumulate))
    elif a_mode == "rows_d" and b_mode == "packed":
        def microkernel(typingctx, isa, kc, a, a_tab, d_tab, a_off, bpack, b_off, c, c_off,
                        ldc, accumulate):
            return typer((isa, kc, a, a_tab, d_tab, a_off, bpack, b_off, c, c_off, ldc,
                          accumulate))
    elif a_mode == "cols" and b_mode == "packed":
        def microkernel(typingctx, isa, kc, a, a_tab, t0, a_off, bpack, b_off, c, c_off, ldc,
                        accumulate):
            return typer((isa, kc, a, a_tab, t0, a_off, bpack, b_off, c, c_off, ldc,
                          accumulate))
    else:
        raise ValueError(f"no micro-kernel reads A {a_mode!r} and B {b_mode!r}")
    return intrinsic(microkernel)


def _microkernel_ir(isa, dt, vl, mr, nr, nv, a_mode, b_mode, sig):
    """C[c_off + i*ldc + j] (+)= sum_{k < kc} A[i, k] * B[k, j],  i < MR, j < nv*VL, for the
    arguments (kc, <A's>, <B's>, c, c_off, ldc, accumulate) (the module docstring's modes).
    `accumulate` false overwrites C (the first depth block), true adds to it."""
    na = {"packed": 2, "cols": 4, "rows_d": 4}[a_mode]
    nb = 2 if b_mode == "packed" else 4

    def codegen(context, builder, signature, args):
        vty, fma, data, const = _ir_tools(context, builder, signature, isa, dt, vl)
        kc_v = args[0]
        ia, ib, ic = 1, 1 + na, 1 + na + nb
        c_v, coff, ldc_v, acc_flag = args[ic:ic + 4]
        i64 = ir.IntType(64)

        def element(i, index):  # &array_i[index] (index: a 64-bit integer value)
            return builder.gep(data(i, args[i]), [index])

        if a_mode == "packed":
            a_base = element(ia, args[ia + 1])
        elif a_mode == "cols":  # a + a_off, and the table from entry t0 on
            a_base = element(ia, args[ia + 3])
            a_tab = element(ia + 1, args[ia + 2])
        else:  # "rows_d": one pointer per row of A; the depth table from a_off on
            a_rows = [element(ia, builder.load(element(ia + 1, const(i)))) for i in range(mr)]
            d_tab = element(ia + 2, args[ia + 3])
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
        elif a_mode == "cols":  # column k of A: MR numbers side by side, where the table says
            a_col = builder.gep(a_base, [builder.load(builder.gep(a_tab, [k]))])
            a_ptrs = [builder.gep(a_col, [const(i)]) for i in range(mr)]
        else:  # "rows_d": the same step along every row, from the depth table
            step = builder.load(builder.gep(d_tab, [k]))
            a_ptrs = [builder.gep(a_rows[i], [step]) for i in range(mr)]
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
# MNIST conv2 image) on AVX-512 is 4 full tiles and a 4-column edge, which the 1-vector kernel
# computes at a third of the full kernel's cost. The same widths read one operand in place.
MICRO = make_microkernel(None)
MICRO_1 = make_microkernel(1)
MICRO_2 = make_microkernel(2)
MICRO_ROWS_B = make_microkernel(None, "packed", "rows")
MICRO_ROWS_B_1 = make_microkernel(1, "packed", "rows")
MICRO_ROWS_B_2 = make_microkernel(2, "packed", "rows")
MICRO_ROWS_D = make_microkernel(None, "rows_d", "packed")  # tile_of(isa, dt, "rows")
MICRO_ROWS_D_1 = make_microkernel(1, "rows_d", "packed")
MICRO_ROWS_D_2 = make_microkernel(2, "rows_d", "packed")
MICRO_ROWS_D_3 = make_microkernel(3, "rows_d", "packed")
MICRO_COLS_A = make_microkernel(None, "cols", "packed")  # tile_of(isa, dt, "cols")
MICRO_COLS_A_1 = make_microkernel(1, "cols", "packed")


@intrinsic
def lanes(typingctx, isa, array):
    """VL, the ISA's numbers per vector for `array`'s dtype, as a compile-time constant."""
    found = _isa_dtype(isa, array)
    if found is None:
        return None
    vl = found[0].blocking[found[1]]["vl"]

    def codegen(context, builder, signature, args):
        return ir.Constant(ir.IntType(64), vl)

    return types.int64(isa, array), codegen


# --------------------------------------------------------------------------- the dot kernel
# When A is stored by rows and B by columns (A = dY, B = cols.T in a weight gradient), every
# C[i, j] is a dot product of two contiguous runs of k numbers and nothing needs packing:
# DOT_MR rows of A and DOT_NR columns of B (the ISA's `dot` tile) are read along k, VL numbers
# at a time, into DOT_MR x DOT_NR vector accumulators (lane l holds the partial sum of the
# k = l mod VL terms); at the end each accumulator is summed across its lanes.


@intrinsic
def dot_kernel(typingctx, isa, kc, a, a_rows, b, b_rows, out):
    """out[i*DOT_NR + j] = sum_{k < kc} a[a_rows[i] + k] * b[b_rows[j] + k]; kc % VL == 0."""
    found = _isa_dtype(isa, a)
    if found is None:
        return None
    isa_, dt = found
    vl = isa_.blocking[dt]["vl"]
    mr, nr = isa_.dot

    def body(context, builder, signature, args):
        kc_v, a_v, ar_v, b_v, br_v, out_v = args
        vty, fma, data, const = _ir_tools(context, builder, signature, isa_, dt, vl)

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

    return types.void(isa, kc, a, a_rows, b, b_rows, out), _without_isa(body)
