"""im2row: copy every receptive field into a ROW; weights go on the right; one GEMM.

    x (N, C, H, W)                        rows  (N*Ho*Wo) x (C*KH*KW)
    +---------------+                     row i = (n, oh, ow): the window under output
    |  +-----+      |      im2row         pixel (oh, ow) of image n, unrolled c, kh, kw
    |  | win |------------------------->  (the transpose of im2col's cols)
    |  +-----+      |
    +---------------+

      rows (N*Ho*Wo x CKK)  @  W_mat^T (CKK x M)  =  Y_rows (N*Ho*Wo x M)  ==  y in NHWC
                                                                 --> transpose to NCHW

GEMM shapes (BLAS M, N, K):
    forward       Y_rows = rows @ W_mat^T      M = N*Ho*Wo, N = M,    K = C*KH*KW
    weight grad   dW     = dY_rows^T @ rows    M = M,       N = CKK,  K = N*Ho*Wo
    data grad     drows  = dY_rows @ W_mat     M = N*Ho*Wo, N = CKK,  K = M
    then row2im: every row entry is added back onto its input pixel (the Numba row2im runs
    one (n, c) plane of dx per thread, so overlapping windows never race).

Which layout it favours: channels-last (NHWC). The GEMM's natural output, Y_rows, is y in
NHWC order (pixel-major, channel-minor) and its natural gradient input dY_rows is dy in NHWC.
In this NCHW library that costs two transposes per layer pass, each the size of the
output: Y_rows (N, HoWo, M) -> y (N, M, HoWo) in forward, and dy (N, M, HoWo) -> dY_rows
(N, HoWo, M) in backward. A channels-last engine would skip both and read x's windows
as contiguous C-vectors. Each row of the patch matrix is contiguous per output pixel, which
is also what a "fused" GEMM that forms patches on the fly would consume.

Workspace (forward, bytes, what both backends allocate besides x, w and y):
    itemsize * (N*Ho*Wo * C*KH*KW      # rows
                + N*Ho*Wo * M)         # Y_rows (NHWC) before its transpose into NCHW
  The NumPy reference also makes a zero-padded copy of x (itemsize*N*C*(H+2ph)*(W+2pw),
  when padding > 0); the Numba lowering reads x directly, padding by index arithmetic.
Backward: rows again, drows (same size) and dY_rows (N*Ho*Wo x M); see
backward_workspace_bytes.
"""
import numpy as np

from ._common import out_size, pad_nchw
from ._numba import njit, prange, uintp, valid_range
from .gemm import matmul


def workspace_bytes(x_shape, w_shape, stride, padding, itemsize):
    n, c, h, wd = x_shape
    m, _, kh, kw = w_shape
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    return itemsize * (n * ho * wo * c * kh * kw + n * ho * wo * m)


def backward_workspace_bytes(x_shape, w_shape, stride, padding, itemsize):
    n, c, h, wd = x_shape
    m, _, kh, kw = w_shape
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    return itemsize * (2 * n * ho * wo * c * kh * kw + n * ho * wo * m)


# --------------------------------------------------------------------------- shared GEMM steps


def _gemm_forward(w, rows, n, ho, wo):
    m = w.shape[0]
    w_mat = w.reshape(m, -1)  # (M, CKK)
    y_rows = rows @ w_mat.T  # (N*HoWo, M): y in NHWC
    y = np.empty((n, m, ho, wo), dtype=w.dtype)
    y[...] = y_rows.reshape(n, ho, wo, m).transpose(0, 3, 1, 2)  # NHWC -> NCHW
    return y


def _gemm_backward(dy, w, rows):
    n, m, ho, wo = dy.shape
    w_mat = w.reshape(m, -1)
    dy_rows = np.empty((n, ho, wo, m), dtype=dy.dtype)
    dy_rows[...] = dy.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    dy_rows = dy_rows.reshape(n * ho * wo, m)
    dw = np.empty_like(w)
    np.matmul(dy_rows.T, rows, out=dw.reshape(m, -1))  # (M, CKK)
    drows = dy_rows @ w_mat  # (N*HoWo, CKK)
    return dw, drows


# --------------------------------------------------------------------------- NumPy reference


def im2row_numpy(x, kh, kw, stride, padding):
    """rows[(n, oh, ow), (c, i, j)] = xpad[n, c, oh*sh + i, ow*sw + j]."""
    n, c, h, wd = x.shape
    (sh, sw) = stride
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    xp = pad_nchw(x, padding)
    rows = np.empty((n, ho, wo, c, kh, kw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            rows[:, :, :, :, i, j] = xp[:, :, i:i + sh * ho:sh, j:j + sw * wo:sw].transpose(
                0, 2, 3, 1
            )
    return rows.reshape(n * ho * wo, c * kh * kw)


def row2im_numpy(drows, x_shape, kh, kw, stride, padding):
    """The adjoint of im2row: add every row entry back onto its input pixel."""
    n, c, h, wd = x_shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    drows = drows.reshape(n, ho, wo, c, kh, kw)
    dxp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=drows.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + sh * ho:sh, j:j + sw * wo:sw] += drows[:, :, :, :, i, j].transpose(
                0, 3, 1, 2
            )
    return np.ascontiguousarray(dxp[:, :, ph:ph + h, pw:pw + wd])


def forward_numpy(x, w, stride, padding):
    n, _, h, wd = x.shape
    _, _, kh, kw = w.shape
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    rows = im2row_numpy(x, kh, kw, stride, padding)
    return _gemm_forward(w, rows, n, ho, wo)


def backward_numpy(dy, x, w, stride, padding):
    kh, kw = w.shape[2:]
    rows = im2row_numpy(x, kh, kw, stride, padding)
    dw, drows = _gemm_backward(dy, w, rows)
    dx = row2im_numpy(drows, x.shape, kh, kw, stride, padding)
    return dx, dw


# --------------------------------------------------------------------------- Numba


@njit(parallel=True, cache=True, fastmath=False, nogil=True)
def _im2row_kernel(x, kh, kw, sh, sw, ph, pw, ho, wo, rows):
    # One job per (n, oh): it writes Wo whole rows of C*KH*KW entries.
    # Flat views + unsigned (uintp) offsets: see "Indexing" in kernels/_numba.py.
    n_img, c_in, h, wd = x.shape
    kk = kh * kw
    ckk = c_in * kk
    xf = x.ravel()
    rf = rows.ravel()
    for job in prange(n_img * ho):
        n = job // ho
        oh = job % ho
        for c in range(c_in):
            for i in range(kh):
                ih = oh * sh + i - ph
                for j in range(kw):
                    col = c * kk + i * kw + j
                    dst = uintp(job * wo * ckk + col)  # rows[(n, oh, 0), col]
                    if ih < 0 or ih >= h:
                        for ow in range(wo):
                            rf[dst + uintp(ow * ckk)] = 0
                        continue
                    lo, hi = valid_range(j, pw, sw, wd, wo)
                    src = uintp(((n * c_in + c) * h + ih) * wd + j - pw)  # x[n, c, ih, j-pw]
                    for ow in range(lo):
                        rf[dst + uintp(ow * ckk)] = 0
                    for ow in range(lo, hi):
                        rf[dst + uintp(ow * ckk)] = xf[src + uintp(ow * sw)]
                    for ow in range(hi, wo):
                        rf[dst + uintp(ow * ckk)] = 0


@njit(parallel=True, cache=True, fastmath=False, nogil=True)
def _row2im_kernel(drows, kh, kw, sh, sw, ph, pw, ho, wo, dx):
    # One job per (n, c) plane of dx: it alone writes that plane (no races). dx zeroed.
    n_img, c_in, h, wd = dx.shape
    kk = kh * kw
    ckk = c_in * kk
    dxf = dx.ravel()
    drf = drows.ravel()
    for job in prange(n_img * c_in):
        n = job // c_in
        c = job % c_in
        plane = job * h * wd
        for oh in range(ho):
            for i in range(kh):
                ih = oh * sh + i - ph
                if ih < 0 or ih >= h:
                    continue
                for j in range(kw):
                    lo, hi = valid_range(j, pw, sw, wd, wo)
                    src = uintp((n * ho + oh) * wo * ckk + c * kk + i * kw + j)
                    dst = uintp(plane + ih * wd + j - pw)  # dx[n, c, ih, j - pw]
                    for ow in range(lo, hi):
                        dxf[dst + uintp(ow * sw)] += drf[src + uintp(ow * ckk)]


def im2row_numba(x, kh, kw, stride, padding):
    n, c, h, wd = x.shape
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    rows = np.empty((n * ho * wo, c * kh * kw), dtype=x.dtype)
    _im2row_kernel(x, kh, kw, stride[0], stride[1], padding[0], padding[1], ho, wo, rows)
    return rows


@njit(parallel=True, cache=True, fastmath=False, nogil=True)
def _row2im_images_kernel(drows, kh, kw, sh, sw, ph, pw, ho, wo, dx):
    # One job per image n: it alone writes dx[n] (no races) and reads its Ho*Wo rows of
    # drows front to back, contiguously. (The per-plane kernel above reads each row with a
    # stride of C*KH*KW elements, one useful float per cache line; with enough images to
    # share out this one moves a fraction of the memory.) dx zeroed.
    n_img, c_in, h, wd = dx.shape
    kk = kh * kw
    ckk = c_in * kk
    dxf = dx.ravel()
    drf = drows.ravel()
    for n in prange(n_img):
        for oh in range(ho):
            for i in range(kh):
                ih = oh * sh + i - ph
                if ih < 0 or ih >= h:
                    continue
                for j in range(kw):
                    lo, hi = valid_range(j, pw, sw, wd, wo)
                    for c in range(c_in):
                        # dx[n, c, ih, lo*sw + j - pw] <- drows[(n, oh, lo), (c, i, j)]
                        dst = uintp(((n * c_in + c) * h + ih) * wd + lo * sw + j - pw)
                        src = uintp(((n * ho + oh) * wo + lo) * ckk + c * kk + i * kw + j)
                        for t in range(hi - lo):
                            dxf[dst + uintp(t * sw)] += drf[src + uintp(t * ckk)]


def row2im_numba(drows, x_shape, kh, kw, stride, padding):
    n, c, h, wd = x_shape
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    dx = np.zeros(x_shape, dtype=drows.dtype)
    kernel = _row2im_images_kernel if n >= 8 else _row2im_kernel
    kernel(drows, kh, kw, stride[0], stride[1], padding[0], padding[1], ho, wo, dx)
    return dx


# The Numba path runs the same three GEMMs with the small operand on the LEFT: the
# pixel-major result is computed transposed, Y_rows^T = W_mat @ rows^T (M x N*Ho*Wo, the same
# bytes as Y_rows), and dY_rows is kept as dY_rows^T (M x N*Ho*Wo). Measured on the project
# machine (OpenBLAS, Haswell kernels, 2 cores): rows @ W_mat^T, an N = M = 32..64 wide GEMM,
# ran at 5-30% of peak (MNIST conv1: 6.9 ms, against 0.26 ms for W_mat @ rows^T; the wide
# layer 25-48 ms against 20 ms), and (M, N, HoWo) -> (N, M, HoWo) is a copy of whole
# contiguous planes instead of an element-wise NHWC -> NCHW transpose. The GEMMs run on
# kernels.gemm (see its MODE).


def _gemm_forward_t(w, rows, n, ho, wo):
    m = w.shape[0]
    y_t = matmul(w.reshape(m, -1), rows.T)                      # (M, N*HoWo) = Y_rows^T
    y = np.empty((n, m, ho, wo), dtype=w.dtype)
    y.reshape(n, m, ho * wo)[...] = y_t.reshape(m, n, ho * wo).transpose(1, 0, 2)
    return y


def _gemm_backward_t(dy, w, rows):
    n, m, ho, wo = dy.shape
    dy_t = np.empty((m, n, ho * wo), dtype=dy.dtype)      # dY_rows^T
    dy_t[...] = dy.reshape(n, m, ho * wo).transpose(1, 0, 2)
    dy_t = dy_t.reshape(m, n * ho * wo)
    dw = np.empty_like(w)
    matmul(dy_t, rows, out=dw.reshape(m, -1))          # (M, CKK)
    drows = matmul(dy_t.T, w.reshape(m, -1))                     # (N*HoWo, CKK)
    return dw, drows


def forward_numba(x, w, stride, padding):
    n, _, h, wd = x.shape
    _, _, kh, kw = w.shape
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    rows = im2row_numba(x, kh, kw, stride, padding)
    return _gemm_forward_t(w, rows, n, ho, wo)


def backward_numba(dy, x, w, stride, padding):
    kh, kw = w.shape[2:]
    rows = im2row_numba(x, kh, kw, stride, padding)
    dw, drows = _gemm_backward_t(dy, w, rows)
    dx = row2im_numba(drows, x.shape, kh, kw, stride, padding)
    return dx, dw
