"""The loops around the micro-kernel: one thread's GEMM, and the parallel GEMM.

    loop 5  for jc in steps of NC:            a column block of B and C
    loop 4    for pc in steps of KC:          a depth block; B[pc:pc+KC, jc:jc+NC] is PACKED
    loop 3      for ic in steps of MC:        a row block; A[ic:ic+MC, pc:pc+KC] is PACKED
    loop 2        for j_r in steps of NR:      a KC x NR micro-panel of packed B (stays in L1)
    loop 1          for i_r in steps of MR:    a MR x KC micro-panel of packed A
                      MICRO-KERNEL: C[i_r:i_r+MR, j_r:j_r+NR] += Apanel @ Bpanel

gemm_serial is loops 5-3 (with packing), macro_kernel loops 2-1. An edge tile of C (fewer
than MR rows or NR columns) is computed into a scratch tile by the narrowest kernel that
covers it, and only its valid part is added to C. macro_kernel_rows_b / _rows_d / _cols_a are loops
2-1 with one operand read in place through a row table instead of packed (kernels/
im2col_fused.py: a stride-1 patch matrix whose rows are windows of the padded image):
macro_kernel_rows_b reads B's rows, macro_kernel_rows_d A's rows stepped along by a depth
table (which can skip their padding columns), macro_kernel_cols_a A by columns (that
matrix transposed).
macro_kernel_taps is loops 2-1 over several products at once, each added into C at its own
offset straight from the register tile (kernels/kn2row.py and kn2col.py: the shift-add of a
convolution's taps, fused into the GEMM's write-out).

Every function takes the ISA first (kernels/gemm/isa.py): it picks the micro-kernels at
compile time. kernels/gemm/reference.py is the same loops in plain Numba, scalar.

Parallelism (gemm_parallel): the problem is cut into one part per thread, each a complete
serial GEMM with its own packing buffers, so the threads never wait on each other: split N
(columns of C) when C is wide, M when it is tall, K when the depth dwarfs the output (a
weight gradient): then each thread multiplies its depth slice into a private C, summed at
the end. When A is stored by rows and B by columns nothing needs packing: gemm_dot_parallel
runs the dot-product kernel (kernels/gemm/microkernel.py).
"""
import numpy as np

from .._numba import njit, prange
from .microkernel import (
    MICRO,
    MICRO_1,
    MICRO_2,
    MICRO_COLS_A,
    MICRO_COLS_A_1,
    MICRO_ROWS_B,
    MICRO_ROWS_B_1,
    MICRO_ROWS_B_2,
    MICRO_ROWS_D,
    MICRO_ROWS_D_1,
    MICRO_ROWS_D_2,
    MICRO_ROWS_D_3,
    dot_kernel,
    lanes,
)
from .pack import pack_a, pack_b

DOT_KC = 1024  # the dot kernel's depth block: the DOT_NR rows of B stay in L1


@njit(cache=True, nogil=True)
def store_tile(tf, ld, c, row, col, rows, cols, add):
    """c[row:row+rows, col:col+cols] (+)= the tile's valid part, tf[i*ld + j] (a flat scratch
    tile of ld columns)."""
    for i in range(rows):
        for j in range(cols):
            if add:
                c[row + i, col + j] += tf[i * ld + j]
            else:
                c[row + i, col + j] = tf[i * ld + j]


@njit(cache=True, nogil=True)
def edge_tile(isa, kc, apack, a_off, bpack, b_off, c, row, col, rows, cols, add, tile):
    """An edge tile of C: the narrowest micro-kernel that covers `cols` computes MR x (its
    width) into `tile`, and only the valid part goes to C."""
    nr = tile.shape[1]
    vl = lanes(isa, tile)
    tf = tile.ravel()
    if cols <= vl:
        MICRO_1(isa, kc, apack, a_off, bpack, b_off, tf, 0, nr, False)
    elif cols <= 2 * vl:
        MICRO_2(isa, kc, apack, a_off, bpack, b_off, tf, 0, nr, False)
    else:
        MICRO(isa, kc, apack, a_off, bpack, b_off, tf, 0, nr, False)
    store_tile(tf, nr, c, row, col, rows, cols, add)


@njit(cache=True, nogil=True)
def macro_kernel(isa, k, apack, bpack, c, i0, i1, j0, j1, accumulate, mr, nr, kc_max, tile):
    """c[i0:i1, j0:j1] (+)= A @ B from operands packed over their whole depth k:
    apack[p*k*MR + kk*MR + i] = A[i0 + p*MR + i, kk]
    bpack[q*k*NR + kk*NR + j] = B[kk, j0 + q*NR + j]
    (what pack_a / pack_b write for one block). Depth blocks of kc_max keep the B
    micro-panel in cache; c is C-contiguous; tile is an MR x NR scratch."""
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
                    MICRO(isa, kc, apack, a_off, bpack, b_off,
                          cf, (i0 + i_r) * ldc + j0 + j_r, ldc, add)
                else:
                    edge_tile(isa, kc, apack, a_off, bpack, b_off, c, i0 + i_r, j0 + j_r,
                              rows, cols, add, tile)


@njit(cache=True, nogil=True)
def macro_kernel_rows_b(isa, k, apack, b, b_tab, c, m, n, accumulate, mr, nr, kc_max, tile):
    """c[:m, :n] (+)= A @ B,  A packed over its whole depth k as in macro_kernel,
    B[kk, j] = b[b_tab[kk] + j]. Every B row is read NR numbers at a time, so b must hold
    the VL-rounded tail of the last row. c is C-contiguous."""
    ldc = c.shape[1]
    cf = c.ravel()
    tf = tile.ravel()
    vl = lanes(isa, tile)
    for pc in range(0, k, kc_max):
        kc = min(kc_max, k - pc)
        add = accumulate or pc > 0
        for j_r in range(0, n, nr):
            cols = min(nr, n - j_r)
            for i_r in range(0, m, mr):
                a_off = (i_r // mr) * k * mr + pc * mr
                rows = min(mr, m - i_r)
                if rows == mr and cols == nr:
                    MICRO_ROWS_B(isa, kc, apack, a_off, b, b_tab, pc, j_r, cf, i_r * ldc + j_r,
                                 ldc, add)
                    continue
                if cols <= vl:
                    MICRO_ROWS_B_1(isa, kc, apack, a_off, b, b_tab, pc, j_r, tf, 0, nr, False)
                elif cols <= 2 * vl:
                    MICRO_ROWS_B_2(isa, kc, apack, a_off, b, b_tab, pc, j_r, tf, 0, nr, False)
                else:
                    MICRO_ROWS_B(isa, kc, apack, a_off, b, b_tab, pc, j_r, tf, 0, nr, False)
                store_tile(tf, nr, c, i_r, j_r, rows, cols, add)


@njit(cache=True, nogil=True)
def macro_kernel_rows_d(isa, k, a, a_tab, d_tab, bpack, c, m, n, accumulate, mr, nr, kc_max,
                        tile):
    """c[:m, :n] (+)= A @ B,  A[i, kk] = a[a_tab[i] + d_tab[kk]]: A's rows read in place,
    stepped along by a depth table (d_tab = 0, 1, 2, .. reads them straight; a table can skip
    numbers, e.g. a patch-matrix row's padding columns). a_tab holds ceil(m/MR)*MR entries,
    those past row m any valid offset; B packed over its whole depth k as in macro_kernel, in
    panels of NR columns. (MR, NR) must be tile_shape(dtype, "rows"); `tile` is any scratch
    of MR*NR numbers. c is C-contiguous."""
    ldc = c.shape[1]
    cf = c.ravel()
    tf = tile.ravel()
    vl = lanes(isa, tile)
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
                    MICRO_ROWS_D(isa, kc, a, tab, d_tab, pc, bpack, b_off, cf, i_r * ldc + j_r,
                                 ldc, add)
                    continue
                if cols <= vl:
                    MICRO_ROWS_D_1(isa, kc, a, tab, d_tab, pc, bpack, b_off, tf, 0, nr, False)
                elif cols <= 2 * vl:
                    MICRO_ROWS_D_2(isa, kc, a, tab, d_tab, pc, bpack, b_off, tf, 0, nr, False)
                elif cols <= 3 * vl:
                    MICRO_ROWS_D_3(isa, kc, a, tab, d_tab, pc, bpack, b_off, tf, 0, nr, False)
                else:
                    MICRO_ROWS_D(isa, kc, a, tab, d_tab, pc, bpack, b_off, tf, 0, nr, False)
                store_tile(tf, nr, c, i_r, j_r, rows, cols, add)


@njit(cache=True, nogil=True)
def macro_kernel_cols_a(isa, k, a, a_tab, a_offs, bpack, c, m, n, accumulate, mr, nr, kc_max,
                        tile):
    """c[:m, :n] (+)= A @ B,  A[p*MR + i, kk] = a[a_tab[kk] + a_offs[p] + i]: panel p of A (MR
    rows) is read in place, one column of MR side-by-side numbers per kk, from its own offset
    (a transposed patch matrix: the rows are output pixels, and a panel may start anywhere,
    so panels can skip the pixels that are not wanted). B packed over its whole depth k as in
    macro_kernel. (MR, NR) must be tile_shape(dtype, "cols"); `tile` is any scratch of
    MR*NR numbers. c is C-contiguous."""
    ldc = c.shape[1]
    cf = c.ravel()
    tf = tile.ravel()
    vl = lanes(isa, tile)
    for pc in range(0, k, kc_max):
        kc = min(kc_max, k - pc)
        add = accumulate or pc > 0
        for j_r in range(0, n, nr):
            b_off = (j_r // nr) * k * nr + pc * nr
            cols = min(nr, n - j_r)
            for i_r in range(0, m, mr):
                rows = min(mr, m - i_r)
                a_off = a_offs[i_r // mr]
                if rows == mr and cols == nr:
                    MICRO_COLS_A(isa, kc, a, a_tab, pc, a_off, bpack, b_off, cf,
                                 i_r * ldc + j_r, ldc, add)
                elif rows == mr and cols == vl:
                    MICRO_COLS_A_1(isa, kc, a, a_tab, pc, a_off, bpack, b_off, cf,
                                   i_r * ldc + j_r, ldc, add)
                else:
                    if cols <= vl:
                        MICRO_COLS_A_1(isa, kc, a, a_tab, pc, a_off, bpack, b_off, tf, 0, nr,
                                       False)
                    else:
                        MICRO_COLS_A(isa, kc, a, a_tab, pc, a_off, bpack, b_off, tf, 0, nr,
                                     False)
                    store_tile(tf, nr, c, i_r, j_r, rows, cols, add)


@njit(cache=True, nogil=True)
def add_tile(tf, ld, cf, off, ldc, rows, cols):
    """cf[off + i*ldc + j] += tf[i*ld + j] for i < rows, j < cols (a flat C and scratch tile)."""
    for i in range(rows):
        for j in range(cols):
            cf[off + i * ldc + j] += tf[i * ld + j]


@njit(cache=True, nogil=True)
def macro_kernel_taps(isa, k, apack, a_offs, bpack, b_offs, c, c_offs, m, n, mr, nr, kc_max,
                      tile):
    """For every tap t < len(c_offs), C_t += A_t @ B_t, each product added into C at its own
    offset straight from the register tile (a shift-add fused into the write-out):
        A_t (m x k)  packed over its whole depth k at apack[a_offs[t]:], as macro_kernel's A
        B_t (k x n)  packed over its whole depth k at bpack[b_offs[t]:], as macro_kernel's B
        C_t[i, j]    = c.ravel()[c_offs[t] + i*ldc + j],  ldc = c.shape[1]
    Taps may share an operand (equal offsets) and their C_t may overlap (the caller zeroes C
    first: this always accumulates). Every offset must be >= 0 and C_t's last element,
    c_offs[t] + (m-1)*ldc + n-1, inside c: full tiles write exactly NR columns, edge tiles
    only their valid part. Loop order: column panel, tap, row panel, so one B micro-panel
    (shared B) or one tap's columns of C stay in L1 across the taps. (MR, NR) =
    tile_shape(dtype); tile is an MR x NR scratch."""
    ldc = c.shape[1]
    cf = c.ravel()
    tf = tile.ravel()
    vl = lanes(isa, tile)
    for pc in range(0, k, kc_max):
        kc = min(kc_max, k - pc)
        for j_r in range(0, n, nr):
            cols = min(nr, n - j_r)
            nv = -(-cols // vl)
            exact = nv * vl == cols  # whole vectors: a narrow kernel can write C directly
            for t in range(c_offs.shape[0]):
                b_off = b_offs[t] + (j_r // nr) * k * nr + pc * nr
                for i_r in range(0, m, mr):
                    a_off = a_offs[t] + (i_r // mr) * k * mr + pc * mr
                    rows = min(mr, m - i_r)
                    off = c_offs[t] + i_r * ldc + j_r
                    if rows == mr and cols == nr:
                        MICRO(isa, kc, apack, a_off, bpack, b_off, cf, off, ldc, True)
                    elif rows == mr and exact and nv == 1:
                        MICRO_1(isa, kc, apack, a_off, bpack, b_off, cf, off, ldc, True)
                    elif rows == mr and exact and nv == 2:
                        MICRO_2(isa, kc, apack, a_off, bpack, b_off, cf, off, ldc, True)
                    else:
                        if nv == 1:
                            MICRO_1(isa, kc, apack, a_off, bpack, b_off, tf, 0, nr, False)
                        elif nv == 2:
                            MICRO_2(isa, kc, apack, a_off, bpack, b_off, tf, 0, nr, False)
                        else:
                            MICRO(isa, kc, apack, a_off, bpack, b_off, tf, 0, nr, False)
                        add_tile(tf, nr, cf, off, ldc, rows, cols)


@njit(cache=True, nogil=True)
def gemm_serial(isa, a, a_t, b, b_t, c, i0, i1, j0, j1, p0, p1, accumulate,
                mr, nr, kc_max, mc_max, nc_max, apack, bpack, tile):
    """c[i0:i1, j0:j1] (+)= a[i0:i1, p0:p1] @ b[p0:p1, j0:j1]; c is C-contiguous."""
    for jc in range(j0, j1, nc_max):                           # loop 5
        nc = min(nc_max, j1 - jc)
        for pc in range(p0, p1, kc_max):                       # loop 4
            kc = min(kc_max, p1 - pc)
            add = accumulate or pc > p0
            pack_b(b, b_t, pc, kc, jc, nc, nr, bpack)
            for ic in range(i0, i1, mc_max):                   # loop 3
                mc = min(mc_max, i1 - ic)
                pack_a(a, a_t, ic, mc, pc, kc, mr, apack)
                macro_kernel(isa, kc, apack, bpack, c, ic, ic + mc, jc, jc + nc, add,
                             mr, nr, kc, tile)                  # loops 2-1


@njit(parallel=True, cache=True, nogil=True)
def gemm_parallel(isa, a, a_t, b, b_t, c, partial, accumulate, split, bounds,
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
            gemm_serial(isa, a, a_t, b, b_t, c, lo, hi, 0, n, 0, k, accumulate,
                        mr, nr, kc_max, mc_max, nc_max, apacks[t], bpacks[t], tiles[t])
        elif split == 1:
            gemm_serial(isa, a, a_t, b, b_t, c, 0, m, lo, hi, 0, k, accumulate,
                        mr, nr, kc_max, mc_max, nc_max, apacks[t], bpacks[t], tiles[t])
        elif t == 0:  # split K: part 0 writes C itself, the others a private partial C
            gemm_serial(isa, a, a_t, b, b_t, c, 0, m, 0, n, lo, hi, accumulate,
                        mr, nr, kc_max, mc_max, nc_max, apacks[t], bpacks[t], tiles[t])
        else:
            gemm_serial(isa, a, a_t, b, b_t, partial[t - 1], 0, m, 0, n, lo, hi, False,
                        mr, nr, kc_max, mc_max, nc_max, apacks[t], bpacks[t], tiles[t])
    if split == 2:
        for i in prange(m):
            for t in range(parts - 1):
                for j in range(n):
                    c[i, j] += partial[t, i, j]


# --------------------------------------------------------------------------- the dot path


@njit(cache=True, nogil=True)
def gemm_dot_serial(isa, a, bt, c, p0, p1, j_lo, j_hi, accumulate, tile, a_rows, b_rows):
    """c[:, j_lo:j_hi] (+)= a[:, p0:p1] @ bt[j_lo:j_hi, p0:p1].T; a (m, k), bt (n, k).
    a_rows and b_rows hold DOT_MR and DOT_NR offsets (the ISA's dot tile)."""
    m, k = a.shape
    n = j_hi
    dmr = a_rows.shape[0]
    dnr = b_rows.shape[0]
    vl = lanes(isa, tile)
    af = a.ravel()
    bf = bt.ravel()
    tf = tile.ravel()
    for pc in range(p0, p1, DOT_KC):
        kc = min(DOT_KC, p1 - pc)
        kv = kc - kc % vl  # the vector kernel's part; the last kc % VL terms go scalar
        add = accumulate or pc > p0
        for j0 in range(j_lo, n, dnr):
            for j in range(dnr):  # past the last column: repeat it, results unused
                b_rows[j] = min(j0 + j, n - 1) * k + pc
            for i0 in range(0, m, dmr):
                for i in range(dmr):
                    a_rows[i] = min(i0 + i, m - 1) * k + pc
                dot_kernel(isa, kv, af, a_rows, bf, b_rows, tf)
                for i in range(min(dmr, m - i0)):
                    for j in range(min(dnr, n - j0)):
                        s = tf[i * dnr + j]
                        for q in range(kv, kc):
                            s += af[a_rows[i] + q] * bf[b_rows[j] + q]
                        if add:
                            c[i0 + i, j0 + j] += s
                        else:
                            c[i0 + i, j0 + j] = s


@njit(parallel=True, cache=True, nogil=True)
def gemm_dot_parallel(isa, a, bt, c, partial, accumulate, split_k, bounds, dot_mr, dot_nr):
    """Part t takes depth (split_k) or columns bounds[t]:bounds[t+1]; partial Cs are summed."""
    m = c.shape[0]
    n = c.shape[1]
    k = a.shape[1]
    parts = bounds.shape[0] - 1
    for t in prange(parts):
        tile = np.empty(dot_mr * dot_nr, dtype=c.dtype)
        a_rows = np.empty(dot_mr, dtype=np.int64)
        b_rows = np.empty(dot_nr, dtype=np.int64)
        if not split_k:
            gemm_dot_serial(isa, a, bt, c, 0, k, bounds[t], bounds[t + 1], accumulate,
                            tile, a_rows, b_rows)
        elif t == 0:
            gemm_dot_serial(isa, a, bt, c, bounds[t], bounds[t + 1], 0, n, accumulate,
                            tile, a_rows, b_rows)
        else:
            gemm_dot_serial(isa, a, bt, partial[t - 1], bounds[t], bounds[t + 1], 0, n,
                            False, tile, a_rows, b_rows)
    if split_k:
        for i in prange(m):
            for t in range(parts - 1):
                for j in range(n):
                    c[i, j] += partial[t, i, j]
