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
    (overlapping windows overlap in dx; the Numba col2im runs one (n, c) plane per thread,
    so no two threads ever add into the same pixel).

The images are lowered side by side into one (CKK) x (N*Ho*Wo) matrix so each pass is a
single big GEMM: measured on the project machine (MNIST conv2, OpenBLAS, 2 cores) that is
~15-25% faster than N batched per-image GEMMs (np.matmul over (N, CKK, Ho*Wo)), and the price
is one transpose copy of the output, (M, N, HoWo) -> (N, M, HoWo), a few % of the GEMM time.
The NumPy reference lowers the whole batch at once; the Numba path a chunk of images at a
time (at most CHUNK_BYTES of patch matrix, see the note above forward_numba).

Strides and padding are pure index arithmetic: column (n, oh, ow), row (c, kh, kw) reads
x[n, c, oh*sh + kh - ph, ow*sw + kw - pw], or 0 outside the image. Nothing is computed and
thrown away.

Workspace (forward, bytes, what the NumPy reference allocates besides x, w and y; the Numba
path allocates the same for one chunk of images, see workspace_bytes_numba):
    itemsize * (C*KH*KW * N*Ho*Wo          # cols
                + M * N*Ho*Wo [if N > 1])  # Y_mat before its transpose into NCHW
                                           # (for N = 1 the GEMM writes straight into y)
  The NumPy reference also makes a zero-padded copy of x (itemsize*N*C*(H+2ph)*(W+2pw),
  when padding > 0) for readable slicing; the Numba lowering reads x directly.
Backward allocates cols again, dcols (same size), dY_mat (M x N*Ho*Wo, if N > 1); the NumPy
reference also a padded dx. See backward_workspace_bytes.
"""
import numpy as np

from ._common import out_size, pad_nchw
from ._numba import njit, prange, uintp, valid_range
from .gemm import matmul


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


# --------------------------------------------------------------------------- Numba


@njit(parallel=True, cache=True, fastmath=False)
def _im2col_kernel(x, kh, kw, sh, sw, ph, pw, ho, wo, cols):
    # One job per row r = (c, i, j) of cols: it writes N*Ho*Wo contiguous entries.
    # Flat views + unsigned (uintp) offsets: see "Indexing" in kernels/_numba.py.
    n_img, c_in, h, wd = x.shape
    hw = ho * wo
    xf = x.ravel()
    cf = cols.ravel()
    ncol = cols.shape[1]
    for r in prange(c_in * kh * kw):
        c = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        lo, hi = valid_range(j, pw, sw, wd, wo)  # ow whose tap (.., j) is inside the image
        for n in range(n_img):
            for oh in range(ho):
                ih = oh * sh + i - ph
                dst = uintp(r * ncol + n * hw + oh * wo)  # cols[r, (n, oh, 0)]
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


@njit(parallel=True, cache=True, fastmath=False)
def _col2im_kernel(dcols, kh, kw, sh, sw, ph, pw, ho, wo, dx):
    # One job per (n, c) plane of dx: it alone writes that plane, so the overlapping
    # windows' additions never race. dx must be zeroed.
    n_img, c_in, h, wd = dx.shape
    hw = ho * wo
    dxf = dx.ravel()
    dcf = dcols.ravel()
    ncol = dcols.shape[1]
    for job in prange(n_img * c_in):
        n = job // c_in
        c = job % c_in
        plane = job * h * wd
        for i in range(kh):
            for j in range(kw):
                r = (c * kh + i) * kw + j
                lo, hi = valid_range(j, pw, sw, wd, wo)
                for oh in range(ho):
                    ih = oh * sh + i - ph
                    if ih < 0 or ih >= h:
                        continue
                    src = uintp(r * ncol + n * hw + oh * wo)  # dcols[r, (n, oh, 0)]
                    dst = uintp(plane + ih * wd + j - pw)  # dx[n, c, ih, j - pw]
                    for ow in range(lo, hi):
                        dxf[dst + uintp(ow * sw)] += dcf[src + uintp(ow)]


# The Numba path lowers the batch a CHUNK of images at a time, at most CHUNK_BYTES of patch
# matrix: the whole-batch matrix of the wide layer (16x64x56x56, 3x3) would be 115 MB. Each
# chunk is lowered, multiplied, and (backward) scattered back before the next, so the matrix
# is still in cache when the GEMMs read it. When the whole batch fits one chunk (MNIST conv2:
# 14.4 MB) the forward leaves `cols` in `saved` for the backward, as the NumPy reference
# always does; otherwise the backward lowers each chunk again. Measured in a MNIST training
# step (2 cores): 2 MiB chunks with that recompute ran no faster than one 14.4 MB chunk
# (9.5-9.8 ms a step either way): the second im2col cost what the cache saved the GEMMs.
#
# Workspace of the Numba forward: itemsize * (C*KH*KW + M) * bs*Ho*Wo  (cols and Y_mat for a
# chunk of bs images; Y_mat is skipped when bs = 1 and the GEMM writes into y). The backward
# adds dY_mat and dcols for a chunk: itemsize * (M + C*KH*KW) * bs*Ho*Wo.
CHUNK_BYTES = 16 << 20


def chunk_images(x_shape, w_shape, stride, padding, itemsize):
    """Images per chunk: as many as fit CHUNK_BYTES of patch matrix, at least one."""
    n, c, h, wd = x_shape
    _, _, kh, kw = w_shape
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    per_image = itemsize * c * kh * kw * ho * wo
    return max(1, min(n, CHUNK_BYTES // max(1, per_image)))


def workspace_bytes_numba(x_shape, w_shape, stride, padding, itemsize):
    """The Numba forward's buffers: cols and Y_mat for one chunk of images."""
    n, c, h, wd = x_shape
    m, _, kh, kw = w_shape
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    bs = chunk_images(x_shape, w_shape, stride, padding, itemsize)
    return itemsize * (c * kh * kw + (m if bs > 1 else 0)) * bs * ho * wo


@njit(parallel=True, cache=True)
def _mat_to_nchw(y_mat, y):
    """y[n, m, :] = y_mat[m, n*HW:(n+1)*HW]: (M, N*HW) -> (N, M, HW), one (n, m) row a job."""
    n_img, m, hw = y.shape
    yf = y.ravel()
    ymf = y_mat.ravel()
    for job in prange(n_img * m):
        n = job // m
        r = job % m
        dst = uintp(job * hw)
        src = uintp((r * n_img + n) * hw)
        for p in range(hw):
            yf[dst + uintp(p)] = ymf[src + uintp(p)]


@njit(parallel=True, cache=True)
def _nchw_to_mat(dy, dy_mat):
    """dy_mat[m, n*HW:(n+1)*HW] = dy[n, m, :]: the inverse reorder, for the backward."""
    n_img, m, hw = dy.shape
    df = dy.ravel()
    dmf = dy_mat.ravel()
    for job in prange(n_img * m):
        n = job // m
        r = job % m
        src = uintp(job * hw)
        dst = uintp((r * n_img + n) * hw)
        for p in range(hw):
            dmf[dst + uintp(p)] = df[src + uintp(p)]


def _head(buf, rows, cols):
    """The first rows*cols numbers of a flat buffer as a C-contiguous (rows, cols) matrix."""
    return buf[:rows * cols].reshape(rows, cols)


def forward_numba(x, w, stride, padding, saved=None):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    hw, ckk = ho * wo, c * kh * kw
    bs = chunk_images(x.shape, w.shape, stride, padding, x.itemsize)
    w_mat = w.reshape(m, ckk)
    y = np.empty((n, m, ho, wo), dtype=x.dtype)
    cols_buf = np.empty(ckk * bs * hw, dtype=x.dtype)
    y_buf = np.empty(m * bs * hw if bs > 1 else 0, dtype=x.dtype)
    for n0 in range(0, n, bs):
        nb = min(bs, n - n0)
        cols = _head(cols_buf, ckk, nb * hw)
        _im2col_kernel(x[n0:n0 + nb], kh, kw, sh, sw, ph, pw, ho, wo, cols)
        if nb == 1:  # one image: Y_mat is y[n0] already
            matmul(w_mat, cols, out=y[n0].reshape(m, hw))
        else:
            y_mat = _head(y_buf, m, nb * hw)
            matmul(w_mat, cols, out=y_mat)
            _mat_to_nchw(y_mat, y[n0:n0 + nb].reshape(nb, m, hw))
    if saved is not None and bs >= n:
        saved["cols"] = _head(cols_buf, ckk, n * hw)
    return y


def backward_numba(dy, x, w, stride, padding, saved=None, need_dx=True):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = dy.shape[2:]
    hw, ckk = ho * wo, c * kh * kw
    bs = chunk_images(x.shape, w.shape, stride, padding, x.itemsize)
    w_mat = w.reshape(m, ckk)
    kept = saved.pop("cols", None) if saved else None
    dw = np.empty_like(w)
    dw_mat = dw.reshape(m, ckk)
    dx = np.zeros_like(x) if need_dx else None
    cols_buf = np.empty(ckk * bs * hw if kept is None else 0, dtype=x.dtype)
    dy_buf = np.empty(m * bs * hw if bs > 1 else 0, dtype=x.dtype)
    dcols_buf = np.empty(ckk * bs * hw if need_dx else 0, dtype=x.dtype)
    for n0 in range(0, n, bs):
        nb = min(bs, n - n0)
        if kept is not None:
            cols = kept
        else:
            cols = _head(cols_buf, ckk, nb * hw)
            _im2col_kernel(x[n0:n0 + nb], kh, kw, sh, sw, ph, pw, ho, wo, cols)
        if nb == 1:
            dy_mat = dy[n0].reshape(m, hw)
        else:
            dy_mat = _head(dy_buf, m, nb * hw)
            _nchw_to_mat(dy[n0:n0 + nb].reshape(nb, m, hw), dy_mat)
        matmul(dy_mat, cols.T, out=dw_mat, accumulate=n0 > 0)  # dW += dY_mat cols^T
        if need_dx:
            dcols = matmul(w_mat.T, dy_mat, out=_head(dcols_buf, ckk, nb * hw))
            _col2im_kernel(dcols, kh, kw, sh, sw, ph, pw, ho, wo, dx[n0:n0 + nb])
    return dx, dw
