"""kn2row-aa ("accumulating" kn2row): K*K small GEMMs, each shift-added straight into y.

kn2row (kernels/kn2row.py) does one big GEMM that produces all K*K partial maps at once
(KH*KW*M x H*W floats of workspace). kn2row-aa trades that one GEMM for K*K GEMMs of
M x C @ C x H*W, and after each one shift-adds its partial into the output, which is the
accumulator. Only one M x H*W partial is ever alive (Anderson et al., "Low-memory GEMM-based
convolution algorithms for deep neural networks", 2017).

    for each tap (i, j):                                        y[n]  (M x Ho x Wo)
        W_ij = w[:, :, i, j]   (M x C, copied: BLAS needs         ^
                                a unit stride)                    |  += clipped, strided
        for each image n:                                         |     shift by (i-ph, j-pw)
            P = W_ij @ x[n][:, band]   ------------------------> P  (M x R*W, R <= H)

"band": the GEMM only runs on the input rows this tap can reach (rows ih0 .. ih0+(Ho'-1)*sh,
a contiguous slice of x[n] seen as C x H*W, so no copy); at the borders of a padded
convolution or with stride > 1 that skips rows nobody reads.

GEMM shapes (rows M, cols N, inner K), KH*KW*N_images of each:
    forward      P    = W_ij @ x[n][:, band]          M = Cout   N = R*W    K = Cin
    backward dw  dW_ij += dP @ x[n][:, band]^T        M = Cout   N = Cin    K = R*W
    backward dx  Q    = W_ij^T @ dP                   M = Cin    N = R*W    K = Cout
where dP = S_ij^T(dy[n]) is dy gathered back to the input grid for this tap (the adjoint of
the shift-add), and Q is added into dx[n] on the same band.

Workspace (bytes), what forward really allocates besides y:
    one partial P       Cout * H * W
    the tap's weights   Cout * Cin       (w[:, :, i, j] has no unit stride in MCKK layout)
    workspace_bytes = itemsize * Cout * (H*W + Cin)
    MNIST conv2 (x 64x32x14x14, w 64x32x3x3, pad 1), float32:
        4 * 64 * (196 + 32) = 58,368 bytes  (kn2row: 525,312; im2col per image: 225,792)
    i.e. 25.9% of im2col's per-image buffer: the partial alone is 22.2%, the 8 KiB copy of
    one tap's weights is the rest (a weight layout (KH, KW, M, C) kept by the caller would
    remove it).
Backward allocates W_ij, dP (Cout x H*W), a Cout x Cin GEMM result and a Cin x H*W one:
    itemsize * (2*Cout*Cin + (Cout + Cin)*H*W).

NumPy reference: loops over taps, then images. Numba: the same, inside one compiled
function (no Python loop); the GEMMs run in BLAS (np.dot) on the full H*W (Numba's np.dot
wants contiguous operands, a band is a strided slice); the per-tap shift-add and gather are
small fused serial loops (a parallel launch per tap and image costs more than it saves).
"""
import numpy as np
from numba import njit

from kernels import _numba  # noqa: F401  (sets Numba's threading layer)
from kernels._common import out_size
from kernels.kn2row import input_slice, span, span_nb


# --------------------------------------------------------------------------------------------
# NumPy reference
# --------------------------------------------------------------------------------------------
def forward_numpy(x, w, stride, padding):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = out_size(h, wd, kh, kw, stride, padding)

    wij = np.empty((m, c), dtype=x.dtype)                   # one tap's M x C weights
    p = np.empty((m, h * wd), dtype=x.dtype)                # the one partial
    y = np.zeros((n, m, ho, wo), dtype=x.dtype)             # the accumulator
    for i in range(kh):
        oh0, oh1, ih0 = span(ho, h, i - ph, sh)
        if oh1 == oh0:
            continue
        r0, r1 = ih0, ih0 + (oh1 - oh0 - 1) * sh + 1        # input rows this tap reads
        for j in range(kw):
            ow0, ow1, iw0 = span(wo, wd, j - pw, sw)
            if ow1 == ow0:
                continue
            wij[...] = w[:, :, i, j]
            pb = p[:, :(r1 - r0) * wd]                       # partial on the band
            pb3 = pb.reshape(m, r1 - r0, wd)
            for b in range(n):
                xband = x[b, :, r0:r1, :].reshape(c, (r1 - r0) * wd)   # a view, no copy
                np.matmul(wij, xband, out=pb)
                y[b, :, oh0:oh1, ow0:ow1] += pb3[:, ::sh, input_slice(ow0, ow1, iw0, sw)]
    return y


def backward_numpy(dy, x, w, stride, padding):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = out_size(h, wd, kh, kw, stride, padding)

    wij = np.empty((m, c), dtype=x.dtype)
    dp = np.empty((m, h * wd), dtype=x.dtype)               # dy gathered back for one tap
    t = np.empty((m, c), dtype=x.dtype)                     # one image's dW_ij
    q = np.empty((c, h * wd), dtype=x.dtype)                # one image's share of dx
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for i in range(kh):
        oh0, oh1, ih0 = span(ho, h, i - ph, sh)
        if oh1 == oh0:
            continue
        r0, r1 = ih0, ih0 + (oh1 - oh0 - 1) * sh + 1
        for j in range(kw):
            ow0, ow1, iw0 = span(wo, wd, j - pw, sw)
            if ow1 == ow0:
                continue
            wij[...] = w[:, :, i, j]
            band = (r1 - r0) * wd
            dpb, qb = dp[:, :band], q[:, :band]
            dpb3 = dpb.reshape(m, r1 - r0, wd)
            for b in range(n):
                dpb.fill(0)                                  # S_ij^T: a one-to-one copy
                dpb3[:, ::sh, input_slice(ow0, ow1, iw0, sw)] = dy[b, :, oh0:oh1, ow0:ow1]
                xband = x[b, :, r0:r1, :].reshape(c, band)
                np.matmul(dpb, xband.T, out=t)               # dW_ij += dP x^T
                dw[:, :, i, j] += t
                np.matmul(wij.T, dpb, out=qb)                # dx += W_ij^T dP
                dx[b, :, r0:r1, :] += qb.reshape(c, r1 - r0, wd)
    return dx, dw


def workspace_bytes(x_shape, w_shape, stride, padding, itemsize):
    """Bytes forward allocates besides its output: one M x H*W partial + one tap's weights."""
    _, _, h, wd = x_shape
    m, c, _, _ = w_shape
    return itemsize * m * (h * wd + c)


def backward_workspace_bytes(x_shape, w_shape, stride, padding, itemsize):
    """Bytes backward allocates besides dx and dw: W_ij, dP, one dW_ij, one dx share."""
    _, _, h, wd = x_shape
    m, c, _, _ = w_shape
    return itemsize * (2 * m * c + (m + c) * h * wd)


# --------------------------------------------------------------------------------------------
# Numba
# --------------------------------------------------------------------------------------------
# One tap's shift-add is small (M x Ho x Wo adds, 12,544 on MNIST conv2), so these run
# serially inside the compiled driver: a parallel launch per tap and image would cost more
# than it saves. Row slices indexed from 0 let LLVM vectorise.
@njit(cache=True)
def _shift_add_tap_nb(p, y, oh0, oh1, ih0, ow0, ow1, iw0, sh, sw):
    """y[m, oh0:oh1, ow0:ow1] += p[m] read at the tap's strided input positions."""
    cnt = ow1 - ow0
    for mm in range(p.shape[0]):
        for oh in range(oh0, oh1):
            yrow = y[mm, oh, ow0:ow1]
            prow = p[mm, ih0 + (oh - oh0) * sh, iw0:iw0 + (cnt - 1) * sw + 1:sw]
            for t in range(cnt):
                yrow[t] += prow[t]


@njit(cache=True)
def _gather_tap_nb(dy, dp, oh0, oh1, ih0, ow0, ow1, iw0, sh, sw):
    """dp[m] = S_ij^T(dy[m]), zero where no output reads."""
    cnt = ow1 - ow0
    for mm in range(dp.shape[0]):
        for ih in range(dp.shape[1]):
            for iw in range(dp.shape[2]):
                dp[mm, ih, iw] = 0.0
        for oh in range(oh0, oh1):
            dyrow = dy[mm, oh, ow0:ow1]
            prow = dp[mm, ih0 + (oh - oh0) * sh, iw0:iw0 + (cnt - 1) * sw + 1:sw]
            for t in range(cnt):
                prow[t] = dyrow[t]


@njit(cache=True)
def _copy_tap_nb(w, i, j, wij):
    for mm in range(w.shape[0]):
        for cc in range(w.shape[1]):
            wij[mm, cc] = w[mm, cc, i, j]


# Drivers: sequential loops over taps and images (parallelism is in BLAS and in the kernels).
@njit(cache=True)
def _forward_nb(x3, w, wij, p, p3, y, sh, sw, ph, pw):
    kh, kw = w.shape[2], w.shape[3]
    h, wd = p3.shape[1], p3.shape[2]
    ho, wo = y.shape[2], y.shape[3]
    for i in range(kh):
        oh0, oh1, ih0 = span_nb(ho, h, i - ph, sh)
        for j in range(kw):
            ow0, ow1, iw0 = span_nb(wo, wd, j - pw, sw)
            if oh1 == oh0 or ow1 == ow0:
                continue
            _copy_tap_nb(w, i, j, wij)
            for b in range(x3.shape[0]):
                np.dot(wij, x3[b], p)                       # BLAS: (M x C) @ (C x H*W)
                _shift_add_tap_nb(p3, y[b], oh0, oh1, ih0, ow0, ow1, iw0, sh, sw)


def forward_numba(x, w, stride, padding):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    wij = np.empty((m, c), dtype=x.dtype)
    p = np.empty((m, h * wd), dtype=x.dtype)
    y = np.zeros((n, m, ho, wo), dtype=x.dtype)
    _forward_nb(x.reshape(n, c, h * wd), w, wij, p, p.reshape(m, h, wd), y, sh, sw, ph, pw)
    return y


@njit(cache=True)
def _backward_nb(dy, x3, w, wij, dp, dp3, t, q, dx3, dw, sh, sw, ph, pw):
    kh, kw = w.shape[2], w.shape[3]
    h, wd = dp3.shape[1], dp3.shape[2]
    ho, wo = dy.shape[2], dy.shape[3]
    for i in range(kh):
        oh0, oh1, ih0 = span_nb(ho, h, i - ph, sh)
        for j in range(kw):
            ow0, ow1, iw0 = span_nb(wo, wd, j - pw, sw)
            if oh1 == oh0 or ow1 == ow0:
                continue
            _copy_tap_nb(w, i, j, wij)
            wijt = wij.T
            for b in range(x3.shape[0]):
                _gather_tap_nb(dy[b], dp3, oh0, oh1, ih0, ow0, ow1, iw0, sh, sw)
                np.dot(dp, x3[b].T, t)                       # dW_ij += dP x^T
                for mm in range(t.shape[0]):
                    for cc in range(t.shape[1]):
                        dw[mm, cc, i, j] += t[mm, cc]
                np.dot(wijt, dp, q)                          # dx += W_ij^T dP
                dx3[b] += q


def backward_numba(dy, x, w, stride, padding):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    wij = np.empty((m, c), dtype=x.dtype)
    dp = np.empty((m, h * wd), dtype=x.dtype)
    t = np.empty((m, c), dtype=x.dtype)
    q = np.empty((c, h * wd), dtype=x.dtype)
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    _backward_nb(dy, x.reshape(n, c, h * wd), w, wij, dp, dp.reshape(m, h, wd), t, q,
                 dx.reshape(n, c, h * wd), dw, sh, sw, ph, pw)
    return dx, dw
