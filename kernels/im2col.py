"""im2col: copy every receptive field into a column, then the convolution is ONE GEMM.

    x (N, C, H, W)                         cols  (C*KH*KW) x (N*Ho*Wo)
    +---------------+                      column j = (n, oh, ow): the window under
    |  +-----+      |      im2col          output pixel (oh, ow) of image n, unrolled
    |  | win |-------------------------->  c-major, then kh, then kw
    |  +-----+      |
    +---------------+

      W_mat (M x CKK)   @   cols (CKK x N*Ho*Wo)   =   Y_mat (M x N*Ho*Wo)  --> y (N, M, Ho, Wo)
      weights on the left, as in Caffe; row m of Y_mat is filter m over all images/pixels.

GEMM shapes (BLAS M, N, K):
    forward       Y_mat = W_mat @ cols         M = M,    N = N*Ho*Wo, K = C*KH*KW
    weight grad   dW    = dY_mat @ cols^T      M = M,    N = C*KH*KW, K = N*Ho*Wo
    data grad     dcols = W_mat^T @ dY_mat     M = CKK,  N = N*Ho*Wo, K = M
    then col2im: every column entry is added back onto the input pixel it was copied from
    (overlapping windows overlap in dx; in the Numba path each thread scatters only into its
    own images, so no two threads ever add into the same pixel).

The NumPy reference lowers the images side by side into one (CKK) x (N*Ho*Wo) matrix, so each
pass is a single big GEMM (and one transpose copy of the output, (M, N, HoWo) -> (N, M, HoWo)).
The Numba path does the opposite: each thread takes ONE image at a time and multiplies at
once, with no transposes:
  - stride 1 ("windows", the note above _window_offsets): every row of the patch matrix is a
    window of the zero-padded image, so kernels.gemm's micro-kernel reads the rows in place
    and the matrix is never written at all;
  - other strides ("packed", the note above _tap_tables): the image is lowered into a patch
    matrix that stays in the core's L2 cache, written straight in the micro-kernel's packed
    order.
kernels/README.md has the figures.

Strides and padding are pure index arithmetic: column (n, oh, ow), row (c, kh, kw) reads
x[n, c, oh*sh + kh - ph, ow*sw + kw - pw], or 0 outside the image. Nothing is computed and
thrown away.

Workspace (forward, bytes, what the NumPy reference allocates besides x, w and y; the Numba
paths' formulas are in the notes above _window_offsets and _tap_tables, and
workspace_bytes_numba):
    itemsize * (C*KH*KW * N*Ho*Wo          # cols
                + M * N*Ho*Wo [if N > 1])  # Y_mat before its transpose into NCHW
                                           # (for N = 1 the GEMM writes straight into y)
  The NumPy reference also makes a zero-padded copy of x (itemsize*N*C*(H+2ph)*(W+2pw),
  when padding > 0) for readable slicing.
The NumPy backward allocates cols again (unless `saved` hands it the forward's), dcols (same
size), dY_mat (M x N*Ho*Wo, if N > 1) and a padded dx. See backward_workspace_bytes.
"""
import functools

import numba
import numpy as np

from ._common import out_size, pad_nchw
from ._numba import njit, prange, uintp, valid_range
from .gemm import (
    BLOCKING,
    _bounds,
    _macro_kernel,
    _macro_kernel_rows_a,
    _macro_kernel_rows_b,
    _pack_a,
    _pack_b,
    _workspace,
    matmul,
    tile_shape,
    uses_numba,
)


def workspace_bytes(x_shape, w_shape, stride, padding, itemsize):
    n, c, h, wd = x_shape
    m, _, kh, kw = w_shape
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    cols = c * kh * kw * n * ho * wo
    y_mat = m * n * ho * wo if n > 1 else 0
    return itemsize * (cols + y_mat)


def backward_workspace_bytes(x_shape, w_shape, stride, padding, itemsize):
    """cols + dcols + dY_mat (if N > 1); the NumPy reference adds a padded dx and padded x."""
    n, c, h, wd = x_shape
    m, _, kh, kw = w_shape
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    cols = c * kh * kw * n * ho * wo
    dy_mat = m * n * ho * wo if n > 1 else 0
    return itemsize * (2 * cols + dy_mat)


# --------------------------------------------------------------------------- GEMM steps (NumPy)


def _gemm_forward(w, cols, n, ho, wo):
    """y = W_mat @ cols, reordered (M, N, HoWo) -> (N, M, Ho, Wo)."""
    m = w.shape[0]
    w_mat = w.reshape(m, -1)  # (M, CKK), a view
    y = np.empty((n, m, ho, wo), dtype=w.dtype)
    if n == 1:
        np.matmul(w_mat, cols, out=y.reshape(m, ho * wo))
        return y
    y_mat = w_mat @ cols  # (M, N*HoWo)
    y[...] = y_mat.reshape(m, n, ho, wo).transpose(1, 0, 2, 3)
    return y


def _gemm_backward(dy, w, cols, need_dx):
    """dw = dY_mat @ cols^T and dcols = W_mat^T @ dY_mat, with dY_mat = dy as (M, N*HoWo).

    dcols is skipped (None) when the input needs no gradient, e.g. a network's first layer.
    """
    n, m, ho, wo = dy.shape
    w_mat = w.reshape(m, -1)
    if n == 1:
        dy_mat = dy.reshape(m, ho * wo)
    else:
        dy_mat = np.empty((m, n, ho, wo), dtype=dy.dtype)
        dy_mat[...] = dy.transpose(1, 0, 2, 3)
        dy_mat = dy_mat.reshape(m, n * ho * wo)
    dw = np.empty_like(w)
    np.matmul(dy_mat, cols.T, out=dw.reshape(m, -1))  # (M, CKK)
    dcols = w_mat.T @ dy_mat if need_dx else None  # (CKK, N*HoWo)
    return dw, dcols


# --------------------------------------------------------------------------- NumPy reference


def im2col_numpy(x, kh, kw, stride, padding):
    """cols[(c, i, j), (n, oh, ow)] = xpad[n, c, oh*sh + i, ow*sw + j]."""
    n, c, h, wd = x.shape
    (sh, sw) = stride
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    xp = pad_nchw(x, padding)
    cols = np.empty((c, kh, kw, n, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            # every output pixel's (i, j) tap at once: a strided view of the padded image
            cols[:, i, j] = xp[:, :, i:i + sh * ho:sh, j:j + sw * wo:sw].transpose(1, 0, 2, 3)
    return cols.reshape(c * kh * kw, n * ho * wo)


def col2im_numpy(dcols, x_shape, kh, kw, stride, padding):
    """The adjoint of im2col: add every column entry back onto its input pixel."""
    n, c, h, wd = x_shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    dcols = dcols.reshape(c, kh, kw, n, ho, wo)
    dxp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + sh * ho:sh, j:j + sw * wo:sw] += dcols[:, i, j].transpose(1, 0, 2, 3)
    return np.ascontiguousarray(dxp[:, :, ph:ph + h, pw:pw + wd])


# `saved`: a dict the caller may pass to forward and then to backward (the engine does, one
# per graph node); forward leaves `cols` in it and backward takes it back instead of lowering
# x again, as autograd engines save tensors for the backward pass. Without it the backward
# recomputes cols. `need_dx=False` skips the data-gradient GEMM and col2im (returns None).


def forward_numpy(x, w, stride, padding, saved=None):
    n, _, h, wd = x.shape
    _, _, kh, kw = w.shape
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    cols = im2col_numpy(x, kh, kw, stride, padding)
    if saved is not None:
        saved["cols"] = cols
    return _gemm_forward(w, cols, n, ho, wo)


def backward_numpy(dy, x, w, stride, padding, saved=None, need_dx=True):
    kh, kw = w.shape[2:]
    cols = saved.pop("cols", None) if saved else None
    if cols is None:
        cols = im2col_numpy(x, kh, kw, stride, padding)
    dw, dcols = _gemm_backward(dy, w, cols, need_dx)
    dx = col2im_numpy(dcols, x.shape, kh, kw, stride, padding) if need_dx else None
    return dx, dw


# --------------------------------------------------------------------------- Numba, any stride
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
#     reads it (packed panels of NR columns, see gemm.py), so there is no separate packing
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
# With fewer images than threads (inference on one image), images too big for L2 (see
# PER_THREAD_IMAGE_BYTES), or when matmul is NumPy's BLAS
# (MINIGRAD_GEMM=blas, or a CPU without AVX-512), the images go one by one in Python: plain
# cols (_im2col_image), and each GEMM a kernels.gemm.matmul call.
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
def _pad_image(x, n, ph, pw, xpad):
    """The interior of xpad (C, Hp, Wp) = x[n]; its zero border is written once, by the caller."""
    _, c_in, h, wd = x.shape
    hp, wp = h + 2 * ph, wd + 2 * pw
    xf = x.ravel()
    xpf = xpad.ravel()
    for c in range(c_in):
        for ih in range(h):
            src = uintp(((n * c_in + c) * h + ih) * wd)
            dst = uintp((c * hp + ih + ph) * wp + pw)
            for iw in range(wd):
                xpf[dst + uintp(iw)] = xf[src + uintp(iw)]


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


@njit(cache=True, nogil=True)
def _im2col_image(x, n, kh, kw, sh, sw, ph, pw, ho, wo, cols):
    """Plain cols (CKK, HoWo) of image n (the one-by-one path):
    cols[(c, i, j), (oh, ow)] = x[n, c, oh*sh + i - ph, ow*sw + j - pw], 0 outside."""
    # Flat views + unsigned (uintp) offsets: see "Indexing" in kernels/_numba.py.
    _, c_in, h, wd = x.shape
    hw = ho * wo
    xf = x.ravel()
    cf = cols.ravel()
    for r in range(c_in * kh * kw):  # row r = (c, i, j) of cols
        c = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        lo, hi = valid_range(j, pw, sw, wd, wo)  # ow whose tap (.., j) is inside the image
        for oh in range(ho):
            ih = oh * sh + i - ph
            dst = uintp(r * hw + oh * wo)  # cols[r, (oh, 0)]
            if ih < 0 or ih >= h:  # a whole row of zero padding
                for ow in range(wo):
                    cf[dst + uintp(ow)] = 0
                continue
            for ow in range(lo):
                cf[dst + uintp(ow)] = 0
            src = uintp(((n * c_in + c) * h + ih) * wd + j - pw)  # x[n, c, ih, j - pw]
            for ow in range(lo, hi):
                cf[dst + uintp(ow)] = xf[src + uintp(ow * sw)]
            for ow in range(hi, wo):
                cf[dst + uintp(ow)] = 0


@njit(cache=True, nogil=True)
def _col2im_image(dcols, n, kh, kw, sh, sw, ph, pw, ho, wo, dx):
    """dx[n] = the adjoint of _im2col_image: every dcols entry added onto its input pixel."""
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


@njit(parallel=True, cache=True, nogil=True)
def _forward_images(x, wpack, off, base, ph, pw, y, bounds, xpads, bpacks, mr, nr, kc, tiles):
    """Thread t: for n in bounds[t]:bounds[t+1], y[n] (M x HoWo) = W_mat @ cols(x[n])."""
    m, hw = y.shape[1], y.shape[2]
    ckk = off.shape[0]
    for t in prange(bounds.shape[0] - 1):
        for n in range(bounds[t], bounds[t + 1]):
            _pad_image(x, n, ph, pw, xpads[t])
            _lower_packed(xpads[t], off, base, nr, bpacks[t])
            _macro_kernel(ckk, wpack, bpacks[t], y[n], 0, m, 0, hw, False, mr, nr, kc, tiles[t])


@njit(parallel=True, cache=True, nogil=True)
def _backward_images(dy, x, wtpack, off, base, kh, kw, sh, sw, ph, pw, dx, dw_parts, need_dx,
                     bounds, xpads, colpacks, apacks, bpacks, dcols_bufs, mr, nr, kc, tiles):
    """Thread t, for its images n: dw_parts[t] += dy[n] @ cols_n^T; dx[n] = col2im(W^T dy[n])."""
    m, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    hw = ho * wo
    ckk = off.shape[0]
    for t in prange(bounds.shape[0] - 1):
        for n in range(bounds[t], bounds[t + 1]):
            dy_n = dy[n].reshape(m, hw)
            _pad_image(x, n, ph, pw, xpads[t])
            _lower_packed_t(xpads[t], off, base, nr, colpacks[t])        # B = cols^T
            _pack_a(dy_n, False, 0, m, 0, hw, mr, apacks[t])             # A = dy[n]
            _macro_kernel(hw, apacks[t], colpacks[t], dw_parts[t], 0, m, 0, ckk,
                          n > bounds[t], mr, nr, kc, tiles[t])
            if need_dx:
                _pack_b(dy_n, False, 0, m, 0, hw, nr, bpacks[t])         # B = dy[n]
                _macro_kernel(m, wtpack, bpacks[t], dcols_bufs[t], 0, ckk, 0, hw, False,
                              mr, nr, kc, tiles[t])
                _col2im_image(dcols_bufs[t], n, kh, kw, sh, sw, ph, pw, ho, wo, dx)


# --------------------------------------------------------------------------- Numba, stride 1
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
#   dW        dW^T (CKK x M) += cols @ dY_ext^T         A rows: xpad + off[r]; dY_ext^T packed,
#                                                       zero in the extra columns
#   dX        dX_ext (C x H*Wp) = W2 @ dZ               the "full" convolution of dy with the
#             W2[c, (m, i, j)] = w[m, c, i, j]          flipped kernel, as one GEMM of depth
#             dZ[(m, i, j), q] = dz[m, base + q - i*Wp - j]     M*KH*KW: B rows are windows of
#             dx[n] = dX_ext's pixels inside the padding        dz (dy spread over Wp-wide rows,
#                                                               zero around and between)
# An extra column reads across a row end into the next row: harmless, as its result is
# dropped. Every kept result reads only its own window, because every wrapped read of a kept
# column lands in an extra (zero) column of dz, and a forward window never wraps (ow + j <
# Wo + KW - 1 = Wp). The price is the (KW - 1) / Wp wasted columns (conv2: 2 of 16), so the
# path is taken when that is at most a third.
#
# Workspace of this forward, in numbers (T = threads):
#     T * (C*Hp*Wp + KW + VL  +  M*Ho*Wp)     xpad (a window's last vector may read KW + VL
#                                             past the planes) + Y_ext
#     + ceil(M / MR)*MR * C*KH*KW             the packed weights
# The backward allocates per thread xpad, the packed dY_ext^T (ceil(M/NR')*NR' * Ho*Wp, with
# NR' the dW GEMM's tile width, kernels.gemm.tile_shape(dtype, "rows")), dz
# (M rows of (KH-1)*Wp + KW-1 + (ph+H)*Wp + VL), dX_ext (C*H*Wp) and a dW^T sum (CKK*M); and
# the packed W2 once. Each thread writes only its own buffers and its own images' dx.


@functools.lru_cache(maxsize=64)
def _window_offsets(c, kh, kw, hp, wp, mr):
    """off[(c, i, j)] = c*Hp*Wp + i*Wp + j, padded to whole MR-row panels with its last entry.
    (Cached per layer shape, read-only: a training step asks for the same tables each time.)"""
    taps = (np.arange(kh)[:, None] * wp + np.arange(kw)).ravel()
    off = (np.arange(c)[:, None] * (hp * wp) + taps).ravel().astype(np.int64)
    off = np.concatenate([off, np.full(_panels(off.size, mr) - off.size, off[-1])])
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


def _uses_windows(stride, kw, wp):
    return tuple(stride) == (1, 1) and 3 * (kw - 1) <= wp


@njit(cache=True, nogil=True)
def _crop(src, ld, first, rows, width, dst, n):
    """dst[n] (rows x width, flat) = src's rows of ld numbers, from column `first` on."""
    sf = src.ravel()
    df = dst.ravel()
    base = uintp(n * rows * width)
    for r in range(rows):
        s = uintp(r * ld + first)
        d = base + uintp(r * width)
        for j in range(width):
            df[d + uintp(j)] = sf[s + uintp(j)]


@njit(parallel=True, cache=True, nogil=True)
def _forward_windows(x, wpack, off, ckk, ph, pw, y, bounds, xpads, yexts, mr, nr, kc, tiles):
    """Thread t, for its images n: y[n] = W_mat @ cols(x[n]), cols read in place in xpad."""
    m, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    wp = x.shape[3] + 2 * pw
    for t in prange(bounds.shape[0] - 1):
        for n in range(bounds[t], bounds[t + 1]):
            _pad_image(x, n, ph, pw, xpads[t])
            _macro_kernel_rows_b(ckk, wpack, xpads[t], off, yexts[t], m, ho * wp, False,
                                 mr, nr, kc, tiles[t])
            _crop(yexts[t], wp, 0, m * ho, wo, y, n)


@njit(cache=True, nogil=True)
def _spread_dy(dy, n, wp, lead, lz, dz):
    """dz[m*lz + lead + oh*Wp + ow] = dy[n, m, oh, ow]; the rest of dz stays zero."""
    _, m_out, ho, wo = dy.shape
    dyf = dy.ravel()
    for m in range(m_out):
        for oh in range(ho):
            s = uintp(((n * m_out + m) * ho + oh) * wo)
            d = uintp(m * lz + lead + oh * wp)
            for ow in range(wo):
                dz[d + uintp(ow)] = dyf[s + uintp(ow)]


@njit(cache=True, nogil=True)
def _pack_dy_t(dy, n, wp, nr, bpack):
    """B = dY_ext^T (Ho*Wp x M) as the GEMM packs it: bpack[q, oh*Wp + ow, j] = dy[n, q*NR + j,
    oh, ow]. Extra columns (ow >= Wo) and rows past M are left as they are: zero."""
    _, m_out, ho, wo = dy.shape
    k = ho * wp
    dyf = dy.ravel()
    for q in range((m_out + nr - 1) // nr):
        width = min(nr, m_out - q * nr)
        for oh in range(ho):
            for ow in range(wo):
                d = uintp((q * k + oh * wp + ow) * nr)
                s = uintp(((n * m_out + q * nr) * ho + oh) * wo + ow)
                for j in range(width):
                    bpack[d + uintp(j)] = dyf[s + uintp(j * ho * wo)]


@njit(parallel=True, cache=True, nogil=True)
def _backward_windows(dy, x, w2pack, off, dtab, ph, pw, lead, lz, dx, dwt_parts, need_dx,
                      bounds, xpads, dypacks, dzs, dxexts, mr, nr, mra, nra, kc, tiles):
    """Thread t, for its images n: dwt_parts[t] += cols(x[n]) @ dY_ext^T, and
    dx[n] = W2 @ dZ without its extra columns."""
    c, h, wd = x.shape[1], x.shape[2], x.shape[3]
    m, ho = dy.shape[1], dy.shape[2]
    ckk = dwt_parts.shape[1]
    wp = wd + 2 * pw
    for t in prange(bounds.shape[0] - 1):
        for n in range(bounds[t], bounds[t + 1]):
            _pad_image(x, n, ph, pw, xpads[t])
            _pack_dy_t(dy, n, wp, nra, dypacks[t])
            _macro_kernel_rows_a(ho * wp, xpads[t], off, dypacks[t], dwt_parts[t], ckk, m,
                                 n > bounds[t], mra, nra, kc, tiles[t])
            if need_dx:
                _spread_dy(dy, n, wp, lead, lz, dzs[t])
                _macro_kernel_rows_b(dtab.shape[0], w2pack, dzs[t], dtab, dxexts[t], c,
                                     h * wp, False, mr, nr, kc, tiles[t])
                _crop(dxexts[t], wp, pw, c * h, wd, dx, n)


def _forward_numba_windows(x, w, padding, y, parts):
    """y (N, M, Ho, Wo) = the forward, on the windows path with `parts` threads."""
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    ph, pw = padding
    hp, wp = h + 2 * ph, wd + 2 * pw
    ho = hp - kh + 1
    blk = BLOCKING[x.dtype]
    mr, nr, vl = blk["mr"], blk["nr"], blk["vl"]
    ckk = c * kh * kw
    off = _window_offsets(c, kh, kw, hp, wp, mr)
    wpack = np.empty(_panels(m, mr) * ckk, dtype=x.dtype)
    _pack_a(w.reshape(m, ckk), False, 0, m, 0, ckk, mr, wpack)
    xpads = np.zeros((parts, c * hp * wp + kw + vl), dtype=x.dtype)
    yexts = np.empty((parts, m, ho * wp), dtype=x.dtype)
    tiles = _workspace.get(x.dtype, parts, blk)[2]
    _forward_windows(x, wpack, off, ckk, ph, pw, y, _bounds(n, parts, 1), xpads, yexts,
                     mr, nr, blk["kc"], tiles)


def _backward_numba_windows(dy, x, w, padding, need_dx, dx, parts):
    """dx (filled in place when need_dx) and the returned dw, on the windows path."""
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    ph, pw = padding
    hp, wp = h + 2 * ph, wd + 2 * pw
    ho = dy.shape[2]
    blk = BLOCKING[x.dtype]
    mr, nr, vl, dt = blk["mr"], blk["nr"], blk["vl"], x.dtype
    mra, nra = tile_shape(dt, "rows")  # the dW GEMM's tile: A's rows read in place
    ckk = c * kh * kw
    off = _window_offsets(c, kh, kw, hp, wp, mra)
    xpads = np.zeros((parts, c * hp * wp + kw + vl), dtype=dt)
    dypacks = np.zeros((parts, _panels(m, nra) * ho * wp), dtype=dt)
    dwt_parts = np.empty((parts, ckk, m), dtype=dt)
    lead = (kh - 1) * wp + kw - 1  # dz: a zero margin before dy ...
    lz = lead + (ph + h) * wp + vl  # ... and after it, in every channel's row of dz
    if need_dx:
        dtab = _dz_rows(m, kh, kw, wp, ph, lead, lz)
        w2pack = np.empty(_panels(c, mr) * m * kh * kw, dtype=dt)
        _pack_a(w.transpose(1, 0, 2, 3).reshape(c, m * kh * kw), False, 0, c, 0, m * kh * kw,
                mr, w2pack)
        dzs = np.zeros((parts, m * lz), dtype=dt)
        dxexts = np.empty((parts, c, h * wp), dtype=dt)
    else:
        dtab = np.empty(0, np.int64)
        w2pack = np.empty(0, dt)
        dzs = np.empty((parts, 0), dtype=dt)
        dxexts = np.empty((parts, 0, 0), dtype=dt)
        dx = np.empty((0, c, h, wd), dt)
    tiles = _workspace.get(dt, parts, blk)[2]
    _backward_windows(dy, x, w2pack, off, dtab, ph, pw, lead, lz, dx, dwt_parts, need_dx,
                      _bounds(n, parts, 1), xpads, dypacks, dzs, dxexts, mr, nr, mra, nra,
                      blk["kc"], tiles)
    dwt = dwt_parts[0]
    for t in range(1, parts):
        dwt += dwt_parts[t]
    return np.ascontiguousarray(dwt.T).reshape(w.shape)


# Threads take whole images when one image's patch matrix is at most this big: it must stay in
# the core's L2 (1 MiB here) for the scheme to pay. The wide benchmark layer (64 channels,
# 56 x 56, 3x3: 6.7 MB an image) ran 7% faster image by image with the parallel GEMM, whose
# blocking is made for matrices that do not fit.
PER_THREAD_IMAGE_BYTES = 1 << 20


def _numba_path(x_shape, w_shape, stride, padding, ho, wo, dtype, need_dx=False):
    """(path, threads): how the Numba im2col runs this layer's forward (or backward).
      "windows"     stride 1: threads take whole images, patch matrix read in place in xpad;
      "packed"      threads take whole images, each lowered into packed panels in L2;
      "one-by-one"  images one by one, plain cols and a parallel GEMM each (threads 0).
    A backward that needs dx of fewer channels than the micro-kernel's MR rows (a first
    layer's 1 or 3) does not take "windows": there the dX GEMM has one row per input channel,
    and most of every MR-row tile would be computed for nothing."""
    n, c, _, wd = x_shape
    _, _, kh, kw = w_shape
    threads = numba.get_num_threads()
    if not uses_numba(dtype) or n < threads:
        return "one-by-one", 0
    if (_uses_windows(stride, kw, wd + 2 * padding[1])
            and not (need_dx and c < BLOCKING[np.dtype(dtype)]["mr"])):
        return "windows", threads
    if np.dtype(dtype).itemsize * c * kh * kw * ho * wo > PER_THREAD_IMAGE_BYTES:
        return "one-by-one", 0
    return "packed", threads


def _panels(size, width):
    """size rounded up to whole panels of `width` (gemm zero-pads its last panel)."""
    return -(-size // width) * width


def workspace_bytes_numba(x_shape, w_shape, stride, padding, itemsize):
    """The Numba forward's buffers (see the formulas above _window_offsets and _tap_tables)."""
    n, c, h, wd = x_shape
    m, _, kh, kw = w_shape
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    ckk = c * kh * kw
    dtype = np.float32 if itemsize == 4 else np.float64
    path, parts = _numba_path(x_shape, w_shape, stride, padding, ho, wo, dtype)
    if path == "one-by-one":
        return itemsize * ckk * ho * wo
    blk = BLOCKING[np.dtype(dtype)]
    hp, wp = h + 2 * padding[0], wd + 2 * padding[1]
    wpack = _panels(m, blk["mr"]) * ckk
    if path == "windows":
        return itemsize * (parts * (c * hp * wp + kw + blk["vl"] + m * ho * wp) + wpack)
    packed = _panels(ho * wo, blk["nr"]) * ckk
    return itemsize * (parts * (c * hp * wp + packed) + wpack)


def forward_numba(x, w, stride, padding, saved=None):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    hw, ckk = ho * wo, c * kh * kw
    w_mat = w.reshape(m, ckk)
    y = np.empty((n, m, hw), dtype=x.dtype)
    path, parts = _numba_path(x.shape, w.shape, stride, padding, ho, wo, x.dtype)
    if path == "windows":
        _forward_numba_windows(x, w, padding, y.reshape(n, m, ho, wo), parts)
    elif path == "packed":
        blk = BLOCKING[x.dtype]
        mr, nr = blk["mr"], blk["nr"]
        off, base = _tap_tables(c, h, wd, kh, kw, stride, padding, ho, wo)
        wpack = np.empty(_panels(m, mr) * ckk, dtype=x.dtype)
        _pack_a(w_mat, False, 0, m, 0, ckk, mr, wpack)
        xpads = np.zeros((parts, c, h + 2 * ph, wd + 2 * pw), dtype=x.dtype)
        bpacks = np.empty((parts, _panels(hw, nr) * ckk), dtype=x.dtype)
        tiles = _workspace.get(x.dtype, parts, blk)[2]
        _forward_images(x, wpack, off, base, ph, pw, y, _bounds(n, parts, 1), xpads, bpacks,
                        mr, nr, blk["kc"], tiles)
    else:
        cols = np.empty((ckk, hw), dtype=x.dtype)
        for i in range(n):
            _im2col_image(x, i, kh, kw, sh, sw, ph, pw, ho, wo, cols)
            matmul(w_mat, cols, out=y[i])
    return y.reshape(n, m, ho, wo)


def backward_numba(dy, x, w, stride, padding, saved=None, need_dx=True):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = dy.shape[2:]
    hw, ckk = ho * wo, c * kh * kw
    w_mat = w.reshape(m, ckk)
    dx = np.empty_like(x) if need_dx else None
    path, parts = _numba_path(x.shape, w.shape, stride, padding, ho, wo, x.dtype, need_dx)
    if path == "windows":
        return dx, _backward_numba_windows(dy, x, w, padding, need_dx, dx, parts)
    if path == "packed":
        blk = BLOCKING[x.dtype]
        mr, nr, dt = blk["mr"], blk["nr"], x.dtype
        off, base = _tap_tables(c, h, wd, kh, kw, stride, padding, ho, wo)
        wtpack = np.empty(_panels(ckk, mr) * m if need_dx else 0, dtype=dt)
        if need_dx:
            _pack_a(w_mat, True, 0, ckk, 0, m, mr, wtpack)  # A = W_mat^T, packed once
        xpads = np.zeros((parts, c, h + 2 * ph, wd + 2 * pw), dtype=dt)
        colpacks = np.empty((parts, _panels(ckk, nr) * hw), dtype=dt)
        apacks = np.empty((parts, _panels(m, mr) * hw), dtype=dt)
        bpacks = np.empty((parts, _panels(hw, nr) * m if need_dx else 0), dtype=dt)
        dcols_bufs = np.empty((parts, ckk, hw) if need_dx else (parts, 0, 0), dtype=dt)
        dw_parts = np.empty((parts, m, ckk), dtype=dt)
        tiles = _workspace.get(dt, parts, blk)[2]
        _backward_images(dy, x, wtpack, off, base, kh, kw, sh, sw, ph, pw,
                         dx if need_dx else np.empty((0, c, h, wd), dt), dw_parts, need_dx,
                         _bounds(n, parts, 1), xpads, colpacks, apacks, bpacks, dcols_bufs,
                         mr, nr, blk["kc"], tiles)
        dw = dw_parts[0]
        for t in range(1, parts):
            dw += dw_parts[t]
        return dx, dw.reshape(w.shape)
    cols = np.empty((ckk, hw), dtype=x.dtype)
    dcols = np.empty((ckk, hw) if need_dx else (0, 0), dtype=x.dtype)
    dw = np.empty((m, ckk), dtype=x.dtype)
    for i in range(n):
        dy_i = dy[i].reshape(m, hw)
        _im2col_image(x, i, kh, kw, sh, sw, ph, pw, ho, wo, cols)
        matmul(dy_i, cols.T, out=dw, accumulate=i > 0)
        if need_dx:
            matmul(w_mat.T, dy_i, out=dcols)
            _col2im_image(dcols, i, kh, kw, sh, sw, ph, pw, ho, wo, dx)
    return dx, dw.reshape(w.shape)
