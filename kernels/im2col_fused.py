"""im2col's fused Numba paths: threads take whole images, and the patch matrix is never
written out as `cols` (kernels/im2col.py has the picture, the NumPy reference and the plain
per-image path; read those first).

The story. The plain path lowers an image into cols, then the GEMM packs cols again into
panels, then reads them: three passes over the biggest matrix of the convolution. Two ideas
remove passes:

  1. "packed" (any stride): lower the image STRAIGHT INTO THE GEMM'S PACKED ORDER, so there
     is no separate packing pass, and give each thread whole images, so the packed patch
     matrix (one image's: 221 KiB for MNIST conv2) stays in the core's L2 between the copy
     and the micro-kernel that reads it. kernels.gemm's loops 2-1 (macro_kernel) run on
     panels the lowering wrote.
  2. "windows" (stride 1): do not write the patch matrix at all. At stride 1, over the padded
     width, every row of the patch matrix is a window of the padded image, so the
     micro-kernel reads its rows in place through a table of offsets (kernels.gemm's "rows"
     operands: macro_kernel_rows_d / _rows_b). The price: KW - 1 extra output columns per
     row, computed and dropped.

Both use only kernels.gemm's public interface (isa, blocking, tile_shape, pack_a, pack_b,
the macro kernels, split_bounds, scratch_tiles); every Numba function here takes the GEMM's
ISA first, which selects the micro-kernels at compile time. Each section below starts with
its workspace formula (kernels/im2col.py's workspace_bytes_numba computes them).
"""
import functools

import numpy as np

from ._common import out_size
from ._numba import njit, prange, uintp, valid_range
from .gemm import (
    blocking,
    macro_kernel,
    macro_kernel_cols_a,
    macro_kernel_rows_b,
    macro_kernel_rows_d,
    pack_a,
    pack_b,
    panels,
    scratch_tiles,
    split_bounds,
    tile_shape,
)
from .gemm import (
    isa as gemm_isa,
)
from .windows import (
    crop,
    dz_layout,
    pack_dy_t,
    pad_image,
    panel_offsets,
    spread_dy,
    transpose_into,
    uses_windows_t,
)

# --------------------------------------------------------------------------- packed: any stride
# The "packed" path (any stride; stride 1 usually takes "windows", below; _numba_path picks)
# lowers ONE IMAGE at a time, and each thread takes its own images from start to finish: lower
# image n, multiply, and (backward) scatter dcols back into dx[n], before the next image.
# One MNIST conv2 image's patch matrix is 221 KiB, so it stays in the core's L2 cache
# between the copy and the GEMM that reads it; the whole-batch matrix (14.4 MB) went out
# to memory and back three times (im2col, forward GEMM, weight-gradient GEMM), dcols twice.
#   - With one image per GEMM, W_mat @ cols is (M x HoWo) = y[n] itself and dY_mat is dy[n]:
#     no reorders between (M, N*HoWo) and (N, M, HoWo).
#   - Each thread adds its images' dW into a private (M x CKK) sum (summed at the end) and
#     scatters only into its own images' dx: nothing is shared, nothing races.
#   - The lowering writes the patch matrix straight in the order kernels.gemm's micro-kernel
#     reads it (packed panels of NR columns, kernels/gemm/pack.py), so there is no separate packing
#     pass. The weights are packed once per call and shared by the threads.
#   - The backward lowers x again rather than keeping the forward's matrices: from L2 that is
#     cheaper than writing them all to memory and reading them back.
#
# The copy itself, on a zero-padded copy of the image (xpad, C x Hp x Wp, per thread):
#     cols[r, p] = xpad[off[r] + base[p]]   off[(c, i, j)] = c*Hp*Wp + i*Wp + j
#                                           base[(oh, ow)] = oh*sh*Wp + ow*sw
# every entry is one load at the sum of a row offset and a column offset (the strides and
# the padding live in the two tables), so the packed layouts are as easy to write as cols.
#
# Workspace of the Numba forward (threads taking images, T = threads), in numbers:
#     T * (C*Hp*Wp  +  ceil(Ho*Wo / NR)*NR * C*KH*KW)     xpad + the packed patch matrix
#     + ceil(M / MR)*MR * C*KH*KW                         the packed weights
# (one-by-one path: C*KH*KW * Ho*Wo, the plain cols). kernels.gemm's MR x NR scratch tiles are
# GEMM internals, not counted. The backward allocates per thread xpad, the packed cols^T
# (ceil(CKK/NR)*NR * HoWo), the packed dy[n] twice (as A and as B), dcols and a dW sum.


def _tap_tables(c, h, wd, kh, kw, stride, padding, ho, wo):
    """off (C*KH*KW,) and base (Ho*Wo,): cols[r, p] = xpad[off[r] + base[p]]. (off is the
    windows path's table, _window_offsets, unpadded.)"""
    (sh, sw), (ph, pw) = stride, padding
    wp = wd + 2 * pw
    off = _window_offsets(c, kh, kw, h + 2 * ph, wp, 1)
    base = (np.arange(ho)[:, None] * (sh * wp) + np.arange(wo) * sw).ravel()
    return off, base.astype(np.int64)


@njit(cache=True, nogil=True)
def col2im_image(dcols, n, kh, kw, sh, sw, ph, pw, ho, wo, dx):
    """dx[n] = the adjoint of im2col.py's _im2col_image: every dcols entry added onto its
    input pixel. Shared by the plain path (im2col.py) and the packed path here."""
    _, c_in, h, wd = dx.shape
    hw = ho * wo
    dxf = dx.ravel()
    dcf = dcols.ravel()
    base = uintp(n * c_in * h * wd)
    for p in range(c_in * h * wd):
        dxf[base + uintp(p)] = 0
    for r in range(c_in * kh * kw):
        c = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        lo, hi = valid_range(j, pw, sw, wd, wo)
        for oh in range(ho):
            ih = oh * sh + i - ph
            if ih < 0 or ih >= h:
                continue
            src = uintp(r * hw + oh * wo)  # dcols[r, (oh, 0)]
            dst = base + uintp((c * h + ih) * wd + j - pw)  # dx[n, c, ih, j - pw]
            for ow in range(lo, hi):
                dxf[dst + uintp(ow * sw)] += dcf[src + uintp(ow)]


@njit(cache=True, nogil=True)
def _lower_packed(xpad, off, base, nr, bpack):
    """B = cols (CKK x HoWo) as the GEMM packs it: bpack[q, r, j] = cols[r, q*NR + j]."""
    xpf = xpad.ravel()
    ckk = off.shape[0]
    hw = base.shape[0]
    for q in range((hw + nr - 1) // nr):
        width = min(nr, hw - q * nr)
        for r in range(ckk):
            dst = uintp((q * ckk + r) * nr)
            o = off[r]
            for j in range(width):
                bpack[dst + uintp(j)] = xpf[uintp(o + base[q * nr + j])]
            for j in range(width, nr):  # past the last column: zero, as gemm pads its panels
                bpack[dst + uintp(j)] = 0


@njit(cache=True, nogil=True)
def _lower_packed_t(xpad, off, base, nr, bpack):
    """B = cols^T (HoWo x CKK) as the GEMM packs it: bpack[q, p, j] = cols[q*NR + j, p]."""
    xpf = xpad.ravel()
    ckk = off.shape[0]
    hw = base.shape[0]
    for q in range((ckk + nr - 1) // nr):
        width = min(nr, ckk - q * nr)
        for p in range(hw):
            dst = uintp((q * hw + p) * nr)
            b = base[p]
            for j in range(width):
                bpack[dst + uintp(j)] = xpf[uintp(off[q * nr + j] + b)]
            for j in range(width, nr):
                bpack[dst + uintp(j)] = 0


@njit(parallel=True, cache=True, nogil=True)
def _forward_images(isa, x, wpack, off, base, ph, pw, y, bounds, xpads, bpacks, mr, nr, kc, tiles):
    """Thread t: for n in bounds[t]:bounds[t+1], y[n] (M x HoWo) = W_mat @ cols(x[n])."""
    m, hw = y.shape[1], y.shape[2]
    ckk = off.shape[0]
    for t in prange(bounds.shape[0] - 1):
        for n in range(bounds[t], bounds[t + 1]):
            pad_image(x, n, ph, pw, xpads[t])
            _lower_packed(xpads[t], off, base, nr, bpacks[t])
            macro_kernel(isa, ckk, wpack, bpacks[t], y[n], 0, m, 0, hw, False, mr, nr, kc,
                         tiles[t])


@njit(parallel=True, cache=True, nogil=True)
def _backward_images(isa, dy, x, wtpack, off, base, kh, kw, sh, sw, ph, pw, dx, dw_parts, need_dx,
                     bounds, xpads, colpacks, apacks, bpacks, dcols_bufs, mr, nr, kc, tiles):
    """Thread t, for its images n: dw_parts[t] += dy[n] @ cols_n^T; dx[n] = col2im(W^T dy[n])."""
    m, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    hw = ho * wo
    ckk = off.shape[0]
    for t in prange(bounds.shape[0] - 1):
        for n in range(bounds[t], bounds[t + 1]):
            dy_n = dy[n].reshape(m, hw)
            pad_image(x, n, ph, pw, xpads[t])
            _lower_packed_t(xpads[t], off, base, nr, colpacks[t])        # B = cols^T
            pack_a(dy_n, False, 0, m, 0, hw, mr, apacks[t])             # A = dy[n]
            macro_kernel(isa, hw, apacks[t], colpacks[t], dw_parts[t], 0, m, 0, ckk,
                          n > bounds[t], mr, nr, kc, tiles[t])
            if need_dx:
                pack_b(dy_n, False, 0, m, 0, hw, nr, bpacks[t])         # B = dy[n]
                macro_kernel(isa, m, wtpack, bpacks[t], dcols_bufs[t], 0, ckk, 0, hw, False,
                              mr, nr, kc, tiles[t])
                col2im_image(dcols_bufs[t], n, kh, kw, sh, sw, ph, pw, ho, wo, dx)


# --------------------------------------------------------------------------- windows: stride 1
# With stride 1 the patch matrix need not be written at all. Compute the output over the
# padded width: output "pixel" p = oh*Wp + ow for ow < Wp, of which ow >= Wo are extra
# columns, computed and dropped (Wp - Wo = KW - 1 of every Wp). Then
#     cols[(c, i, j), p] = xpad[c*Hp*Wp + (oh + i)*Wp + ow + j] = xpad[off[(c, i, j)] + p]
# so row r of the patch matrix is the padded image itself, from off[r] on: KH*KW shifted
# windows of every channel plane, overlapping. The micro-kernel reads them in place
# (kernels.gemm's "rows" operands), and im2col's copy, a third of its time, is gone.
#
#   forward   Y_ext (M x Ho*Wp) = W_mat @ cols          B rows: xpad + off[r]
#             y[n] = Y_ext without its extra columns
#   dW        dW^T (CKK x M) += cols @ dY^T             A rows: xpad + off[r], stepped along
#                                                       by a depth table over the kept
#                                                       pixels only (oh*Wp + ow, ow < Wo:
#                                                       kernels.gemm's "rows_d"); dY^T packed
#   dX        dX_ext (C x H*Wp) = W2 @ dZ               the "full" convolution of dy with the
#             W2[c, (m, i, j)] = w[m, c, i, j]          flipped kernel, as one GEMM of depth
#             dZ[(m, i, j), q] = dz[m, base + q - i*Wp - j]     M*KH*KW: B rows are windows of
#             dx[n] = dX_ext's pixels inside the padding        dz (dy spread over Wp-wide rows,
#                                                               zero around and between)
# An extra column reads across a row end into the next row: harmless, as its result is
# dropped. Every kept result reads only its own window, because every wrapped read of a kept
# column lands in an extra (zero) column of dz, and a forward window never wraps (ow + j <
# Wo + KW - 1 = Wp). The price is the (KW - 1) / Wp wasted columns of the forward and dX
# (conv2: 2 of 16; the weight gradient's depth skips them), so the path is taken when that is
# at most a third.
#
# Workspace of this forward, in numbers (T = threads):
#     T * (C*Hp*Wp + KW + VL  +  M*Ho*Wp)     xpad (a window's last vector may read KW + VL
#                                             past the planes) + Y_ext
#     + ceil(M / MR)*MR * C*KH*KW             the packed weights
# The backward allocates per thread xpad, the packed dY^T (ceil(M/NR')*NR' * Ho*Wo, with
# NR' the dW GEMM's tile width, kernels.gemm.tile_shape(dtype, "rows")), dz
# (M rows of (KH-1)*Wp + KW-1 + (ph+H)*Wp + VL), dX_ext (C*H*Wp) and a dW^T sum (CKK*M); and
# the packed W2 once. Each thread writes only its own buffers and its own images' dx.


@functools.lru_cache(maxsize=64)
def _window_offsets(c, kh, kw, hp, wp, mr):
    """off[(c, i, j)] = c*Hp*Wp + i*Wp + j, padded to whole MR-row panels with its last entry.
    (Cached per layer shape, read-only: a training step asks for the same tables each time.)"""
    taps = (np.arange(kh)[:, None] * wp + np.arange(kw)).ravel()
    off = (np.arange(c)[:, None] * (hp * wp) + taps).ravel().astype(np.int64)
    off = np.concatenate([off, np.full(panels(off.size, mr) - off.size, off[-1])])
    off.flags.writeable = False
    return off


@functools.lru_cache(maxsize=64)
def _dz_rows(m, kh, kw, wp, ph, lead, lz):
    """dtab[(m, i, j)] = m*lz + lead + (ph - i)*Wp - j: row (m, i, j) of dZ starts there in dz.
    (Cached like _window_offsets.)"""
    taps = (ph * wp - np.arange(kh)[:, None] * wp - np.arange(kw)).ravel()
    dtab = (np.arange(m)[:, None] * lz + lead + taps).ravel().astype(np.int64)
    dtab.flags.writeable = False
    return dtab


@njit(parallel=True, cache=True, nogil=True)
def _forward_windows(isa, x, wpack, off, ckk, ph, pw, y, bounds, xpads, yexts, mr, nr, kc, tiles):
    """Thread t, for its images n: y[n] = W_mat @ cols(x[n]), cols read in place in xpad."""
    m, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    wp = x.shape[3] + 2 * pw
    for t in prange(bounds.shape[0] - 1):
        for n in range(bounds[t], bounds[t + 1]):
            pad_image(x, n, ph, pw, xpads[t])
            macro_kernel_rows_b(isa, ckk, wpack, xpads[t], off, yexts[t], m, ho * wp, False,
                                 mr, nr, kc, tiles[t])
            crop(yexts[t], wp, 0, m * ho, wo, y, n)


@njit(parallel=True, cache=True, nogil=True)
def _backward_windows(isa, dy, x, w2pack, off, dsteps, dtab, ph, pw, lead, lz, dx, dwt_parts,
                      need_dx, dx_t, dx_offs, bounds, xpads, dypacks, dzs, dxexts, mr, nr, mra,
                      nra, kc, tiles):
    """Thread t, for its images n: dwt_parts[t] += cols(x[n]) @ dY^T over the kept pixels
    (the depth steps along cols' rows by dsteps), and dx[n] = W2 @ dZ without its extra
    columns, or (dx_t: the transposed windows) (dZ^T @ W2^T)^T, whose panels start at
    dx_offs. (mr, nr): the dX GEMM's tile."""
    c, h, wd = x.shape[1], x.shape[2], x.shape[3]
    m, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    ckk = dwt_parts.shape[1]
    wp = wd + 2 * pw
    for t in prange(bounds.shape[0] - 1):
        for n in range(bounds[t], bounds[t + 1]):
            pad_image(x, n, ph, pw, xpads[t])
            pack_dy_t(dy, n, wo, nra, dypacks[t])  # dY^T over the kept pixels only
            macro_kernel_rows_d(isa, ho * wo, xpads[t], off, dsteps, dypacks[t], dwt_parts[t],
                                ckk, m, n > bounds[t], mra, nra, kc, tiles[t])
            if need_dx:
                spread_dy(dy, n, wp, lead, lz, dzs[t])
                if dx_t:
                    macro_kernel_cols_a(isa, dtab.shape[0], dzs[t], dtab, dx_offs, w2pack,
                                        dxexts[t], h * wd, c, False, mr, nr, kc, tiles[t])
                    transpose_into(dxexts[t], dx, n)
                else:
                    macro_kernel_rows_b(isa, dtab.shape[0], w2pack, dzs[t], dtab, dxexts[t], c,
                                         h * wp, False, mr, nr, kc, tiles[t])
                    crop(dxexts[t], wp, pw, c * h, wd, dx, n)


def forward_windows(x, w, padding, y, parts):
    """y (N, M, Ho, Wo) = the forward, on the windows path with `parts` threads."""
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    ph, pw = padding
    hp, wp = h + 2 * ph, wd + 2 * pw
    ho = hp - kh + 1
    blk = blocking(x.dtype)
    mr, nr, vl = blk["mr"], blk["nr"], blk["vl"]
    ckk = c * kh * kw
    off = _window_offsets(c, kh, kw, hp, wp, mr)
    wpack = np.empty(panels(m, mr) * ckk, dtype=x.dtype)
    pack_a(w.reshape(m, ckk), False, 0, m, 0, ckk, mr, wpack)
    xpads = np.zeros((parts, c * hp * wp + kw + vl), dtype=x.dtype)
    yexts = np.empty((parts, m, ho * wp), dtype=x.dtype)
    tiles = scratch_tiles(x.dtype, parts)
    _forward_windows(gemm_isa(), x, wpack, off, ckk, ph, pw, y, split_bounds(n, parts, 1),
                     xpads, yexts, mr, nr, blk["kc"], tiles)


def backward_windows(dy, x, w, padding, need_dx, dx, parts):
    """dx (filled in place when need_dx) and the returned dw, on the windows path."""
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    ph, pw = padding
    hp, wp = h + 2 * ph, wd + 2 * pw
    ho, wo = dy.shape[2], dy.shape[3]
    blk = blocking(x.dtype)
    mr, nr, vl, dt = blk["mr"], blk["nr"], blk["vl"], x.dtype
    mra, nra = tile_shape(dt, "rows")  # the dW GEMM's tile: A's rows read in place
    ckk = c * kh * kw
    off = _window_offsets(c, kh, kw, hp, wp, mra)
    xpads = np.zeros((parts, c * hp * wp + kw + vl), dtype=dt)
    dypacks = np.zeros((parts, panels(m, nra) * ho * wo), dtype=dt)
    dsteps = panel_offsets(ho, wo, wp, 0, 1)  # pixel (oh, ow) of the depth: oh*Wp + ow
    dwt_parts = np.empty((parts, ckk, m), dtype=dt)
    lead, lz = dz_layout(kh, kw, wp, ph, h, ho, vl)  # where dy's rows go in dz
    dx_t = need_dx and uses_windows_t(dt, wd, h * wd, c)  # dX on the transposed windows
    mrt, nrt = tile_shape(dt, "cols")
    dx_offs = panel_offsets(h, wd, wp, pw, mrt) if dx_t else np.empty(0, np.int64)
    if need_dx:
        dtab = _dz_rows(m, kh, kw, wp, ph, lead, lz)
        w2 = w.transpose(1, 0, 2, 3).reshape(c, m * kh * kw)
        if dx_t:  # B = W2^T, packed in panels of NR' input channels
            w2pack = np.empty(panels(c, nrt) * m * kh * kw, dtype=dt)
            pack_b(w2, True, 0, m * kh * kw, 0, c, nrt, w2pack)
            dxexts = np.empty((parts, h * wd, c), dtype=dt)
        else:
            w2pack = np.empty(panels(c, mr) * m * kh * kw, dtype=dt)
            pack_a(w2, False, 0, c, 0, m * kh * kw, mr, w2pack)
            dxexts = np.empty((parts, c, h * wp), dtype=dt)
        dzs = np.zeros((parts, m * lz), dtype=dt)
    else:
        dtab = np.empty(0, np.int64)
        w2pack = np.empty(0, dt)
        dzs = np.empty((parts, 0), dtype=dt)
        dxexts = np.empty((parts, 0, 0), dtype=dt)
        dx = np.empty((0, c, h, wd), dt)
    # one scratch tile per thread for both GEMMs' edge tiles: the larger of their shapes
    shapes = [scratch_tiles(dt, parts)] + ([scratch_tiles(dt, parts, "cols")] if dx_t else [])
    tiles = max(shapes, key=lambda t: t[0].size)
    _backward_windows(gemm_isa(), dy, x, w2pack, off, dsteps, dtab, ph, pw, lead, lz, dx,
                      dwt_parts, need_dx, dx_t, dx_offs, split_bounds(n, parts, 1), xpads,
                      dypacks, dzs, dxexts, mrt if dx_t else mr, nrt if dx_t else nr, mra, nra,
                      blk["kc"], tiles)
    dwt = dwt_parts[0]
    for t in range(1, parts):
        dwt += dwt_parts[t]
    return np.ascontiguousarray(dwt.T).reshape(w.shape)


# --------------------------------------------------------------------------- windows, transposed
# The windows above still compute KW - 1 extra columns of every Wp-wide row: the GEMM's
# columns are output pixels, and a register tile of NR of them cannot stop at a row's end.
# (MNIST conv2: 224 computed for 196 kept, 12.5% of the forward's and dX's work.) Turn the
# product round and they are gone:
#
#   forward   Y^T (Ho*Wo x M) = cols^T @ W_mat^T      A[p, (c, i, j)] = xpad[off[(c, i, j)] + p']
#   dX        dX^T (H*W x C)  = dZ^T @ W2^T           A[q, (m, i, j)] = dz[dtab[(m, i, j)] + q']
#
# Now the pixels are the GEMM's rows, and a register tile holds MR of them side by side, all
# in one output row: p' = oh*Wp + ow for ow = ow0 .. ow0 + MR - 1, so a panel of MR rows is
# one run of the padded image per tap, read in place (kernels.gemm's "cols" operand: A read by
# columns, each panel from its own offset). With MR dividing Wo (AVX-512: MR = 14, so 14, 28,
# 56) the panels cover exactly the kept pixels; the channels run along the vector lanes
# (NR = 32: two vectors), and M = 64 is two whole panels. The price: the GEMM writes pixels x
# channels, so each image's result is transposed back to NCHW (transpose_into), where the
# windows path cropped its rows; both are one pass over y[n] in L2.
# The weight gradient keeps the windows path's form (its depth runs over the padded width).
#
# Workspace of this forward, in numbers (T = threads, NR' = tile_shape(dtype, "cols")[1]):
#     T * (C*Hp*Wp + KW + VL  +  Ho*Wo*M)     xpad + Y^T
#     + ceil(M / NR')*NR' * C*KH*KW           the packed W_mat^T
# Its backward allocates, in place of the windows backward's W2 pack and dX_ext, the packed
# W2^T (ceil(C / NR')*NR' * M*KH*KW) and per thread dX^T (H*W*C).


@njit(parallel=True, cache=True, nogil=True)
def _forward_windows_t(isa, x, wtpack, off, a_offs, ph, pw, y, bounds, xpads, yts, mr, nr,
                       kc, tiles):
    """Thread t, for its images n: y[n] = (cols(x[n])^T @ W_mat^T)^T, cols read in place."""
    m, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    for t in prange(bounds.shape[0] - 1):
        for n in range(bounds[t], bounds[t + 1]):
            pad_image(x, n, ph, pw, xpads[t])
            macro_kernel_cols_a(isa, off.shape[0], xpads[t], off, a_offs, wtpack, yts[t],
                                ho * wo, m, False, mr, nr, kc, tiles[t])
            transpose_into(yts[t], y, n)


def forward_windows_t(x, w, padding, y, parts):
    """y (N, M, Ho, Wo) = the forward, on the transposed windows path with `parts` threads."""
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    ph, pw = padding
    hp, wp = h + 2 * ph, wd + 2 * pw
    ho, wo = hp - kh + 1, wp - kw + 1
    blk = blocking(x.dtype)
    mr, nr = tile_shape(x.dtype, "cols")
    ckk = c * kh * kw
    off = _window_offsets(c, kh, kw, hp, wp, 1)  # the depth table: one entry per (c, i, j)
    a_offs = panel_offsets(ho, wo, wp, 0, mr)
    wtpack = np.empty(panels(m, nr) * ckk, dtype=x.dtype)
    pack_b(w.reshape(m, ckk), True, 0, ckk, 0, m, nr, wtpack)  # B = W_mat^T
    xpads = np.zeros((parts, c * hp * wp + kw + blk["vl"]), dtype=x.dtype)
    yts = np.empty((parts, ho * wo, m), dtype=x.dtype)
    tiles = scratch_tiles(x.dtype, parts, "cols")
    _forward_windows_t(gemm_isa(), x, wtpack, off, a_offs, ph, pw, y,
                       split_bounds(n, parts, 1), xpads, yts, mr, nr, blk["kc"], tiles)


# --------------------------------------------------------------------------- the drivers


def forward_packed(x, w, stride, padding, y, parts):
    """y (N, M, Ho*Wo) = the forward, on the packed path with `parts` threads."""
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    ph, pw = padding
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    hw, ckk = ho * wo, c * kh * kw
    blk = blocking(x.dtype)
    mr, nr = blk["mr"], blk["nr"]
    off, base = _tap_tables(c, h, wd, kh, kw, stride, padding, ho, wo)
    wpack = np.empty(panels(m, mr) * ckk, dtype=x.dtype)
    pack_a(w.reshape(m, ckk), False, 0, m, 0, ckk, mr, wpack)
    xpads = np.zeros((parts, c, h + 2 * ph, wd + 2 * pw), dtype=x.dtype)
    bpacks = np.empty((parts, panels(hw, nr) * ckk), dtype=x.dtype)
    tiles = scratch_tiles(x.dtype, parts)
    _forward_images(gemm_isa(), x, wpack, off, base, ph, pw, y, split_bounds(n, parts, 1), xpads,
                    bpacks, mr, nr, blk["kc"], tiles)


def backward_packed(dy, x, w, stride, padding, need_dx, dx, parts):
    """dx (filled in place when need_dx) and the returned dw, on the packed path."""
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = dy.shape[2:]
    hw, ckk = ho * wo, c * kh * kw
    blk = blocking(x.dtype)
    mr, nr, dt = blk["mr"], blk["nr"], x.dtype
    off, base = _tap_tables(c, h, wd, kh, kw, stride, padding, ho, wo)
    wtpack = np.empty(panels(ckk, mr) * m if need_dx else 0, dtype=dt)
    if need_dx:
        pack_a(w.reshape(m, ckk), True, 0, ckk, 0, m, mr, wtpack)  # A = W_mat^T, packed once
    xpads = np.zeros((parts, c, h + 2 * ph, wd + 2 * pw), dtype=dt)
    colpacks = np.empty((parts, panels(ckk, nr) * hw), dtype=dt)
    apacks = np.empty((parts, panels(m, mr) * hw), dtype=dt)
    bpacks = np.empty((parts, panels(hw, nr) * m if need_dx else 0), dtype=dt)
    dcols_bufs = np.empty((parts, ckk, hw) if need_dx else (parts, 0, 0), dtype=dt)
    dw_parts = np.empty((parts, m, ckk), dtype=dt)
    tiles = scratch_tiles(dt, parts)
    _backward_images(gemm_isa(), dy, x, wtpack, off, base, kh, kw, sh, sw, ph, pw,
                     dx if need_dx else np.empty((0, c, h, wd), dt), dw_parts, need_dx,
                     split_bounds(n, parts, 1), xpads, colpacks, apacks, bpacks, dcols_bufs,
                     mr, nr, blk["kc"], tiles)
    dw = dw_parts[0]
    for t in range(1, parts):
        dw += dw_parts[t]
    return dw.reshape(w.shape)
