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
The Numba paths do the opposite: one image at a time, with no transposes.
  - this file's plain path (_im2col_image, _col2im_image): images one by one, each lowered
    into a plain cols and multiplied by kernels.gemm.matmul. Read it after the reference.
  - the fused paths, in kernels/im2col_fused.py (its header tells their story): each thread
    takes whole images and multiplies at once; at stride 1 ("windows") the patch matrix is
    never written (the micro-kernel reads its rows in place in the padded image; where the
    tile fits the output width, its columns, multiplying the product the other way round so
    that no padding column is computed), at other strides ("packed") it is written straight
    in the micro-kernel's packed order and stays in the core's L2 cache. forward_numba /
    backward_numba pick the path (_numba_path, and im2col_fused.uses_windows_t).
kernels/README.md has the figures.

This file: the picture and formulas (here), the NumPy reference, the workspace formulas,
the plain per-image Numba path, and the choice of path.

Strides and padding are pure index arithmetic: column (n, oh, ow), row (c, kh, kw) reads
x[n, c, oh*sh + kh - ph, ow*sw + kw - pw], or 0 outside the image. Nothing is computed and
thrown away.

Workspace (forward, bytes, what the NumPy reference allocates besides x, w and y; the Numba
paths' formulas are in kernels/im2col_fused.py and workspace_bytes_numba):
    itemsize * (C*KH*KW * N*Ho*Wo          # cols
                + M * N*Ho*Wo [if N > 1])  # Y_mat before its transpose into NCHW
                                           # (for N = 1 the GEMM writes straight into y)
  The NumPy reference also makes a zero-padded copy of x (itemsize*N*C*(H+2ph)*(W+2pw),
  when padding > 0) for readable slicing.
The NumPy backward allocates cols again (unless `saved` hands it the forward's), dcols (same
size), dY_mat (M x N*Ho*Wo, if N > 1) and a padded dx. See backward_workspace_bytes.
"""
import numba
import numpy as np

from . import im2col_fused
from ._common import out_size, pad_nchw
from ._numba import njit, uintp, valid_range
from .gemm import blocking, matmul, panels, tile_shape, uses_numba
from .im2col_fused import col2im_image


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


# --------------------------------------------------------------------------- Numba, per image
# The plain Numba path, readable: images one by one, each lowered into a plain cols
# (CKK x Ho*Wo) and multiplied by kernels.gemm.matmul (which is parallel), then (backward)
# scattered back by col2im. The fused paths of kernels/im2col_fused.py are the same steps
# with the threads taking whole images and the patch matrix never written as cols.

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


# --------------------------------------------------------------------------- which path
# forward_numba / backward_numba pick one of three paths (_numba_path): the fused "windows"
# and "packed" paths (kernels/im2col_fused.py: their story, figures and workspace formulas)
# or the plain per-image path above. With fewer images than threads (inference on one image),
# images too big for L2 (PER_THREAD_IMAGE_BYTES), or when matmul is NumPy's BLAS
# (MINIGRAD_GEMM=blas, or a CPU without a vector micro-kernel), images go one by one.

def _uses_windows(stride, kw, wp):
    return tuple(stride) == (1, 1) and 3 * (kw - 1) <= wp



# Threads take whole images when one image's patch matrix is at most this big: it must stay in
# the core's L2 (1 MiB here) for the scheme to pay. The wide benchmark layer (64 channels,
# 56 x 56, 3x3: 6.7 MB an image) ran 7% faster image by image with the parallel GEMM, whose
# blocking is made for matrices that do not fit.
PER_THREAD_IMAGE_BYTES = 1 << 20


def _numba_path(x_shape, w_shape, stride, padding, ho, wo, dtype, need_dx=False):
    """(path, threads): how the Numba im2col runs this layer's forward (or backward).
      "windows"     stride 1: threads take whole images, patch matrix read in place in xpad
                    (transposed, "windows_t", for the forward and dX where
                    im2col_fused.uses_windows_t says so);
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
            and not (need_dx and c < blocking(dtype)["mr"])):
        return "windows", threads
    if np.dtype(dtype).itemsize * c * kh * kw * ho * wo > PER_THREAD_IMAGE_BYTES:
        return "one-by-one", 0
    return "packed", threads


def workspace_bytes_numba(x_shape, w_shape, stride, padding, itemsize):
    """The Numba forward's buffers (formulas: kernels/im2col_fused.py)."""
    n, c, h, wd = x_shape
    m, _, kh, kw = w_shape
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    ckk = c * kh * kw
    dtype = np.float32 if itemsize == 4 else np.float64
    path, parts = _numba_path(x_shape, w_shape, stride, padding, ho, wo, dtype)
    if path == "one-by-one":
        return itemsize * ckk * ho * wo
    blk = blocking(dtype)
    hp, wp = h + 2 * padding[0], wd + 2 * padding[1]
    wpack = panels(m, blk["mr"]) * ckk
    if path == "windows" and im2col_fused.uses_windows_t(dtype, wo, ho * wo, m):
        wtpack = panels(m, tile_shape(dtype, "cols")[1]) * ckk
        return itemsize * (parts * (c * hp * wp + kw + blk["vl"] + ho * wo * m) + wtpack)
    if path == "windows":
        return itemsize * (parts * (c * hp * wp + kw + blk["vl"] + m * ho * wp) + wpack)
    packed = panels(ho * wo, blk["nr"]) * ckk
    return itemsize * (parts * (c * hp * wp + packed) + wpack)


def forward_numba(x, w, stride, padding, saved=None):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    hw, ckk = ho * wo, c * kh * kw
    y = np.empty((n, m, hw), dtype=x.dtype)
    path, parts = _numba_path(x.shape, w.shape, stride, padding, ho, wo, x.dtype)
    if path != "one-by-one":  # the fused paths (kernels/im2col_fused.py)
        if path == "windows" and im2col_fused.uses_windows_t(x.dtype, wo, ho * wo, m):
            im2col_fused.forward_windows_t(x, w, padding, y.reshape(n, m, ho, wo), parts)
        elif path == "windows":
            im2col_fused.forward_windows(x, w, padding, y.reshape(n, m, ho, wo), parts)
        else:
            im2col_fused.forward_packed(x, w, stride, padding, y, parts)
        return y.reshape(n, m, ho, wo)
    w_mat = w.reshape(m, ckk)
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
    dx = np.empty_like(x) if need_dx else None
    path, parts = _numba_path(x.shape, w.shape, stride, padding, ho, wo, x.dtype, need_dx)
    if path != "one-by-one":  # the fused paths (kernels/im2col_fused.py)
        if path == "windows":
            return dx, im2col_fused.backward_windows(dy, x, w, padding, need_dx, dx, parts)
        return dx, im2col_fused.backward_packed(dy, x, w, stride, padding, need_dx, dx, parts)
    w_mat = w.reshape(m, ckk)
    cols = np.empty((ckk, hw), dtype=x.dtype)
    dcols = np.empty((ckk, hw) if need_dx else (0, 0), dtype=x.dtype)
    dw = np.empty((m, ckk), dtype=x.dtype)
    for i in range(n):
        dy_i = dy[i].reshape(m, hw)
        _im2col_image(x, i, kh, kw, sh, sw, ph, pw, ho, wo, cols)
        matmul(dy_i, cols.T, out=dw, accumulate=i > 0)
        if need_dx:
            matmul(w_mat.T, dy_i, out=dcols)
            col2im_image(dcols, i, kh, kw, sh, sw, ph, pw, ho, wo, dx)
    return dx, dw.reshape(w.shape)
