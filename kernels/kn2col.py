"""kn2col: kn2row transposed, i.e. kn2row in the channels-last (NHWC) layout.

Same idea as kn2row (one GEMM on the unrolled kernel, then K*K shift-adds), with rows and
columns swapped: the input is read as an H*W x C matrix (one row per pixel, channels along
the row), the kernel matrix is C x (KH*KW*M), and the partial maps come out as
H*W x (KH*KW*M): for every input pixel, the M outputs of every tap side by side. The
shift-add then moves whole M-long channel vectors, which is what channels-last favours.

      x[n]^T                     kernel matrix Wc                 partial maps P
    (H*W) x C                    C x (KH*KW*M)                    (H*W) x (KH*KW*M)
   +---------+         +---------+---------+-----+---------+     +----+----+-----+----+
   | pixel 0 |         |  W_00^T |  W_01^T | ... |  W_kk^T |     |P_00|P_01| ... |P_kk|  pixel 0
   | pixel 1 |    @    |  (CxM)  |         |     |         |  =  |    |    |     |    |  pixel 1
   |  ...    |         +---------+---------+-----+---------+     | .. | .. |     | .. |
   +---------+                                                   +----+----+-----+----+
   y[n][oh, ow, :] = sum_ij P[(oh*sh - ph + i, ow*sw - pw + j), tap ij, :]  (an M-vector,
                                                      clipped at the borders, strided reads)

Layout it favours: NHWC. With NHWC data x[n] *is* the H*W x C matrix and y[n] is filled in
its natural order. Our contract is NCHW, so: the input costs nothing (x[n] seen as C x H*W,
transposed, is a Fortran-ordered H*W x C matrix that BLAS reads directly, no copy), and the
shift-add writes through a channels-last *view* of the NCHW output (y[n].transpose(1, 2, 0)),
so the layout conversion of the result is folded into the shift-add: no NHWC buffer.

GEMM shapes per image (rows M, cols N, inner K):
    forward      P    = x[n]^T @ Wc          M = H*W     N = KH*KW*Cout   K = Cin
    backward dx  dx^T = dP @ Wc^T            M = H*W     N = Cin          K = KH*KW*Cout
                 (computed as dx[n] = Wc @ dP^T, straight into the NCHW dx)
    backward dw  dWc += x[n] @ dP            M = Cin     N = KH*KW*Cout   K = H*W
with dP (H*W x KH*KW*Cout) = dy gathered back into the partial-map layout (the adjoint of
the shift-add), zero where no output reads.

Workspace (bytes), what forward really allocates besides y (the same totals as kn2row,
transposed):
    kernel matrix Wc    Cin * KH*KW*Cout
    partial P           H*W * KH*KW*Cout
    workspace_bytes = itemsize * KH*KW*Cout * (Cin + H*W)
    MNIST conv2 (x 64x32x14x14, w 64x32x3x3), float32: 525,312 bytes
Backward: Wc, dP, a dWc accumulator and one per-image dWc:
    itemsize * KH*KW*Cout * (3*Cin + H*W).

NumPy reference and Numba side by side; the Numba shift-add is one fused pass per output row
(prange over output rows: each iteration owns its row of every channel), summing the K*K
M-vectors in a small row buffer before writing them out channel-major.
"""
import numpy as np
from numba import njit, prange

from kernels import _numba  # noqa: F401  (sets Numba's threading layer)
from kernels._common import out_size
from kernels.kn2row import input_slice, span, span_nb


def kernel_matrix_t(w):
    """(M, C, KH, KW) -> (C, KH*KW*M): column (i*KW + j)*M + m holds w[m, :, i, j]."""
    m, c, kh, kw = w.shape
    return np.ascontiguousarray(w.transpose(1, 2, 3, 0)).reshape(c, kh * kw * m)


# --------------------------------------------------------------------------------------------
# NumPy reference
# --------------------------------------------------------------------------------------------
def forward_numpy(x, w, stride, padding):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = out_size(h, wd, kh, kw, stride, padding)

    wc = kernel_matrix_t(w)                                       # C x (KH*KW*M)
    p = np.empty((h * wd, kh * kw * m), dtype=x.dtype)            # partial maps, pixel-major
    p5 = p.reshape(h, wd, kh, kw, m)
    y = np.zeros((n, m, ho, wo), dtype=x.dtype)
    for b in range(n):
        np.matmul(x[b].reshape(c, h * wd).T, wc, out=p)           # (H*W x C) @ (C x K*K*M)
        yb = y[b].transpose(1, 2, 0)                              # channels-last view of y[b]
        for i in range(kh):
            oh0, oh1, ih0 = span(ho, h, i - ph, sh)
            for j in range(kw):
                ow0, ow1, iw0 = span(wo, wd, j - pw, sw)
                if oh1 > oh0 and ow1 > ow0:
                    yb[oh0:oh1, ow0:ow1, :] += p5[input_slice(oh0, oh1, ih0, sh),
                                                  input_slice(ow0, ow1, iw0, sw), i, j, :]
    return y


def backward_numpy(dy, x, w, stride, padding):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = out_size(h, wd, kh, kw, stride, padding)

    wc = kernel_matrix_t(w)
    dp = np.empty((h * wd, kh * kw * m), dtype=x.dtype)
    dp5 = dp.reshape(h, wd, kh, kw, m)
    dwc = np.zeros((c, kh * kw * m), dtype=x.dtype)
    t = np.empty((c, kh * kw * m), dtype=x.dtype)
    dx = np.empty_like(x)
    for b in range(n):
        dyb = dy[b].transpose(1, 2, 0)                            # channels-last view of dy[b]
        dp.fill(0)
        for i in range(kh):
            oh0, oh1, ih0 = span(ho, h, i - ph, sh)
            for j in range(kw):
                ow0, ow1, iw0 = span(wo, wd, j - pw, sw)
                if oh1 > oh0 and ow1 > ow0:
                    dp5[input_slice(oh0, oh1, ih0, sh), input_slice(ow0, ow1, iw0, sw),
                        i, j, :] = dyb[oh0:oh1, ow0:ow1, :]
        xb = x[b].reshape(c, h * wd)
        np.matmul(wc, dp.T, out=dx[b].reshape(c, h * wd))         # dx[n] = Wc dP^T
        np.matmul(xb, dp, out=t)                                  # dWc += x[n] dP
        dwc += t
    dw = np.ascontiguousarray(dwc.reshape(c, kh, kw, m).transpose(3, 0, 1, 2))
    return dx, dw


def workspace_bytes(x_shape, w_shape, stride, padding, itemsize):
    """Bytes forward allocates besides its output: kernel matrix + partial maps."""
    _, _, h, wd = x_shape
    m, c, kh, kw = w_shape
    return itemsize * kh * kw * m * (c + h * wd)


def backward_workspace_bytes(x_shape, w_shape, stride, padding, itemsize):
    """Bytes backward allocates besides dx and dw: Wc, dP, dWc accumulator, per-image dWc."""
    _, _, h, wd = x_shape
    m, c, kh, kw = w_shape
    return itemsize * kh * kw * m * (3 * c + h * wd)


# --------------------------------------------------------------------------------------------
# Numba
# --------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True)
def _shift_add_nb(p5, y, sh, sw, ph, pw):
    """y[:, oh, :] = sum over taps of the clipped, strided M-vectors of p5; one row each."""
    h, wd, kh, kw, m = p5.shape
    _, ho, wo = y.shape
    for oh in prange(ho):
        acc = np.zeros((wo, m), dtype=y.dtype)                    # this row, channels-last
        for i in range(kh):
            ih = oh * sh - ph + i
            if ih < 0 or ih >= h:
                continue
            for j in range(kw):
                ow0, ow1, iw0 = span_nb(wo, wd, j - pw, sw)
                for ow in range(ow0, ow1):
                    iw = iw0 + (ow - ow0) * sw
                    for mm in range(m):                           # contiguous M-vector
                        acc[ow, mm] += p5[ih, iw, i, j, mm]
        for mm in range(m):                                       # back to channel-major
            for ow in range(wo):
                y[mm, oh, ow] = acc[ow, mm]


@njit(parallel=True, cache=True)
def _gather_nb(dy, dp5, sh, sw, ph, pw):
    """dP = S^T(dy) in the partial-map layout; each input row ih is one iteration's alone."""
    h, wd, kh, kw, m = dp5.shape
    _, ho, wo = dy.shape
    for ih in prange(h):
        for iw in range(wd):
            for i in range(kh):
                for j in range(kw):
                    for mm in range(m):
                        dp5[ih, iw, i, j, mm] = 0.0
        for i in range(kh):
            a = ih + ph - i                          # = oh*sh when output row oh reads ih
            oh = a // sh
            if a < 0 or a % sh != 0 or oh >= ho:
                continue
            for j in range(kw):
                ow0, ow1, iw0 = span_nb(wo, wd, j - pw, sw)
                for ow in range(ow0, ow1):
                    iw = iw0 + (ow - ow0) * sw
                    for mm in range(m):
                        dp5[ih, iw, i, j, mm] = dy[mm, oh, ow]


@njit(cache=True)
def _forward_nb(x3, wc, p, p5, y, sh, sw, ph, pw):
    for b in range(x3.shape[0]):
        np.dot(x3[b].T, wc, p)                     # BLAS: (H*W x C) @ (C x K*K*M)
        _shift_add_nb(p5, y[b], sh, sw, ph, pw)


def forward_numba(x, w, stride, padding):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    wc = kernel_matrix_t(w)
    p = np.empty((h * wd, kh * kw * m), dtype=x.dtype)
    y = np.empty((n, m, ho, wo), dtype=x.dtype)
    _forward_nb(x.reshape(n, c, h * wd), wc, p, p.reshape(h, wd, kh, kw, m), y,
                sh, sw, ph, pw)
    return y


@njit(cache=True)
def _backward_nb(dy, x3, wc, dp, dp5, dwc, t, dx3, sh, sw, ph, pw):
    dpt = dp.T
    for b in range(x3.shape[0]):
        _gather_nb(dy[b], dp5, sh, sw, ph, pw)
        np.dot(wc, dpt, dx3[b])                    # dx[n] = Wc dP^T
        np.dot(x3[b], dp, t)                       # dWc += x[n] dP
        dwc += t


def backward_numba(dy, x, w, stride, padding):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    wc = kernel_matrix_t(w)
    dp = np.empty((h * wd, kh * kw * m), dtype=x.dtype)
    dwc = np.zeros((c, kh * kw * m), dtype=x.dtype)
    t = np.empty((c, kh * kw * m), dtype=x.dtype)
    dx = np.empty_like(x)
    _backward_nb(dy, x.reshape(n, c, h * wd), wc, dp, dp.reshape(h, wd, kh, kw, m), dwc, t,
                 dx.reshape(n, c, h * wd), sh, sw, ph, pw)
    dw = np.ascontiguousarray(dwc.reshape(c, kh, kw, m).transpose(3, 0, 1, 2))
    return dx, dw
