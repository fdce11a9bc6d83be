"""kn2row: convolution as ONE GEMM on the *kernel* side, then K*K shift-adds.

im2col copies the input K*K times so that one GEMM does everything. kn2row leaves the input
alone and instead unrolls the kernel: each of the KH*KW taps (i, j) is an M x C matrix
W_ij[m, c] = w[m, c, i, j]. Stacking the K*K taps gives one (KH*KW*M) x C kernel matrix, and
one GEMM with the unpadded input (C x H*W) computes, for every tap at once, what that tap
contributes at every input pixel. Tap (i, j) contributes to output (oh, ow) through input
pixel (oh*sh - ph + i, ow*sw - pw + j), so each partial map is shifted by (i - ph, j - pw),
read at the stride, clipped at the borders (that is where the zero padding goes: nothing is
ever padded) and added into the output.

       kernel matrix Wk            input x[n]           partial maps P
    (KH*KW*M) x C                  C x (H*W)            (KH*KW*M) x (H*W)
   +-------------+              +-------------+       +-------------------+
   |  W_00 (MxC) |              |             |       | P_00 = W_00 x[n]  |--shift(-ph,-pw)--+
   |  W_01       |      @       |  x[n] as is |   =   | P_01              |--shift(-ph,1-pw)-+
   |  ...        |              |  (no copy)  |       | ...               |   ...            |
   |  W_kk       |              |             |       | P_kk              |--shift ...-------+
   +-------------+              +-------------+       +-------------------+                  |
                                                                                             v
       y[n, m, oh, ow] = sum_ij P_ij[m, oh*sh - ph + i, ow*sw - pw + j]   (terms outside the
                                                                          input are dropped)

GEMM shapes per image, written (rows M, cols N, inner K) of the GEMM:
    forward      P   = Wk @ x[n]           M = KH*KW*Cout   N = H*W        K = Cin
    backward dx  dx  = Wk^T @ dP           M = Cin          N = H*W        K = KH*KW*Cout
    backward dw  dWk += dP @ x[n]^T        M = KH*KW*Cout   N = Cin        K = H*W
where dP = S^T(dy[n]) is the adjoint of the shift-add: dy gathered back into K*K maps of
Cout x H x W (zero where no output reads that input pixel, e.g. between strides).
With stride > 1 the GEMM still produces the partial at every input pixel (that is kn2row's
price); the shift-add only *reads* the strided positions it needs.

Batching choice: one GEMM per image, reusing one partial buffer. Batching the N images into
one GEMM (C x N*H*W) would need a transposed copy of x and an N times larger partial
(MNIST conv2: 29 MB instead of 0.45 MB) and gave no speedup: 576 x 32 x 196 is already a
comfortable BLAS shape, and the per-image partial stays in cache for the shift-add.

Workspace (bytes, itemsize = 4 for float32), what forward really allocates besides y:
    kernel matrix Wk   KH*KW*Cout*Cin
    partial P          KH*KW*Cout*H*W
    workspace_bytes = itemsize * KH*KW*Cout * (Cin + H*W)
    MNIST conv2 (x 64x32x14x14, w 64x32x3x3): 4 * 576 * (32 + 196) = 525,312 bytes
Backward allocates Wk, dP (same size as P), and two KH*KW*Cout x Cin buffers (the dWk
accumulator and one per-image GEMM result): itemsize * KH*KW*Cout * (3*Cin + H*W).

The NumPy functions are the readable reference; the Numba ones run the same GEMMs through
BLAS (np.dot inside njit) and replace the K*K slice-adds by one fused, parallel pass over
the output planes (prange over output channels: each iteration owns its plane, no races).
"""
import numpy as np
from numba import njit, prange

from kernels import _numba  # noqa: F401  (sets Numba's threading layer)
from kernels._common import out_size


# --------------------------------------------------------------------------------------------
# Border clipping, shared by kn2row, kn2row_aa and kn2col.
# --------------------------------------------------------------------------------------------
def span(o_size, in_size, offset, stride):
    """The outputs o in [o0, o1) whose input o*stride + offset lies inside [0, in_size).

    offset = tap - padding. Returns (o0, o1, i0) with i0 = o0*stride + offset the first input
    index read; o1 == o0 means this tap touches no output at all.
    """
    o0 = max(0, -(offset // stride))                      # ceil(-offset / stride), >= 0
    o1 = min(o_size, (in_size - 1 - offset) // stride + 1)
    o1 = max(o0, o1)
    return o0, o1, o0 * stride + offset


span_nb = njit(cache=True)(span)


def input_slice(o0, o1, i0, stride):
    """The strided input slice that outputs [o0, o1) of one tap read."""
    return slice(i0, i0 + (o1 - o0 - 1) * stride + 1, stride)


def kernel_matrix(w):
    """(M, C, KH, KW) -> (KH*KW*M, C): row (i*KW + j)*M + m holds w[m, :, i, j]."""
    m, c, kh, kw = w.shape
    return np.ascontiguousarray(w.transpose(2, 3, 0, 1)).reshape(kh * kw * m, c)


# --------------------------------------------------------------------------------------------
# NumPy reference
# --------------------------------------------------------------------------------------------
def forward_numpy(x, w, stride, padding):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = out_size(h, wd, kh, kw, stride, padding)

    wk = kernel_matrix(w)                                          # (KH*KW*M, C)
    p = np.empty((kh * kw * m, h * wd), dtype=x.dtype)             # the K*K partial maps
    p5 = p.reshape(kh, kw, m, h, wd)
    y = np.zeros((n, m, ho, wo), dtype=x.dtype)
    for b in range(n):
        np.matmul(wk, x[b].reshape(c, h * wd), out=p)              # ONE GEMM per image
        for i in range(kh):                                        # K*K clipped shift-adds
            oh0, oh1, ih0 = span(ho, h, i - ph, sh)
            for j in range(kw):
                ow0, ow1, iw0 = span(wo, wd, j - pw, sw)
                if oh1 > oh0 and ow1 > ow0:
                    y[b, :, oh0:oh1, ow0:ow1] += p5[i, j, :, input_slice(oh0, oh1, ih0, sh),
                                                    input_slice(ow0, ow1, iw0, sw)]
    return y


def backward_numpy(dy, x, w, stride, padding):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = out_size(h, wd, kh, kw, stride, padding)

    wk = kernel_matrix(w)                                          # (KH*KW*M, C)
    dp = np.empty((kh * kw * m, h * wd), dtype=x.dtype)            # dy gathered into K*K maps
    dp5 = dp.reshape(kh, kw, m, h, wd)
    dwk = np.zeros((kh * kw * m, c), dtype=x.dtype)                # accumulates over images
    t = np.empty((kh * kw * m, c), dtype=x.dtype)                  # one image's share
    dx = np.empty_like(x)
    for b in range(n):
        # dP = S^T(dy): the adjoint of the shift-add. Tap (i, j) sent P_ij[ih, iw] to
        # y[oh, ow]; the gradient goes back the same way (a plain copy: for one tap the map
        # (oh, ow) -> (ih, iw) is one-to-one). Input pixels no output reads stay zero.
        dp.fill(0)
        for i in range(kh):
            oh0, oh1, ih0 = span(ho, h, i - ph, sh)
            for j in range(kw):
                ow0, ow1, iw0 = span(wo, wd, j - pw, sw)
                if oh1 > oh0 and ow1 > ow0:
                    dp5[i, j, :, input_slice(oh0, oh1, ih0, sh),
                        input_slice(ow0, ow1, iw0, sw)] = dy[b, :, oh0:oh1, ow0:ow1]
        xb = x[b].reshape(c, h * wd)
        np.matmul(wk.T, dp, out=dx[b].reshape(c, h * wd))         # dx = Wk^T dP
        np.matmul(dp, xb.T, out=t)                                 # dWk += dP x^T
        dwk += t
    dw = np.ascontiguousarray(dwk.reshape(kh, kw, m, c).transpose(2, 3, 0, 1))
    return dx, dw


def workspace_bytes(x_shape, w_shape, stride, padding, itemsize):
    """Bytes forward allocates besides its output: kernel matrix + K*K partial maps."""
    _, _, h, wd = x_shape
    m, c, kh, kw = w_shape
    return itemsize * kh * kw * m * (c + h * wd)


def backward_workspace_bytes(x_shape, w_shape, stride, padding, itemsize):
    """Bytes backward allocates besides dx and dw: Wk, dP, dWk accumulator, per-image dWk."""
    _, _, h, wd = x_shape
    m, c, kh, kw = w_shape
    return itemsize * kh * kw * m * (3 * c + h * wd)


# --------------------------------------------------------------------------------------------
# Numba
# --------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True)
def _shift_add_nb(p5, y, sh, sw, ph, pw):
    """y[m] = sum_ij clipped, strided shift of p5[i, j, m]; one output plane per iteration.

    The inner loops run on row slices indexed from 0 (LLVM then knows the index is
    non-negative and vectorises; absolute indices would keep Numba's wraparound checks).
    """
    kh, kw, m, h, wd = p5.shape
    _, ho, wo = y.shape
    for mm in prange(m):
        for oh in range(ho):
            for ow in range(wo):
                y[mm, oh, ow] = 0.0
        for i in range(kh):
            oh0, oh1, ih0 = span_nb(ho, h, i - ph, sh)
            for j in range(kw):
                ow0, ow1, iw0 = span_nb(wo, wd, j - pw, sw)
                cnt = ow1 - ow0
                for oh in range(oh0, oh1):
                    yrow = y[mm, oh, ow0:ow1]
                    prow = p5[i, j, mm, ih0 + (oh - oh0) * sh, iw0:iw0 + (cnt - 1) * sw + 1:sw]
                    for t in range(cnt):
                        yrow[t] += prow[t]


@njit(parallel=True, cache=True)
def _gather_nb(dy, dp5, sh, sw, ph, pw):
    """dP = S^T(dy): each (i, j, m) map is written by one iteration only (no races)."""
    kh, kw, m, h, wd = dp5.shape
    _, ho, wo = dy.shape
    for q in prange(kh * kw * m):
        i = q // (kw * m)
        j = (q // m) % kw
        mm = q % m
        for ih in range(h):
            for iw in range(wd):
                dp5[i, j, mm, ih, iw] = 0.0
        oh0, oh1, ih0 = span_nb(ho, h, i - ph, sh)
        ow0, ow1, iw0 = span_nb(wo, wd, j - pw, sw)
        cnt = ow1 - ow0
        for oh in range(oh0, oh1):
            dyrow = dy[mm, oh, ow0:ow1]
            prow = dp5[i, j, mm, ih0 + (oh - oh0) * sh, iw0:iw0 + (cnt - 1) * sw + 1:sw]
            for t in range(cnt):
                prow[t] = dyrow[t]


# The drivers below run the per-image loop inside Numba (one call, no Python loop); they are
# sequential themselves: the parallelism is in the kernels they call and in BLAS.
@njit(cache=True)
def _forward_images_nb(x3, wk, p, p5, y, sh, sw, ph, pw):
    for b in range(x3.shape[0]):
        np.dot(wk, x3[b], p)                       # BLAS GEMM (KH*KW*M x C) @ (C x H*W)
        _shift_add_nb(p5, y[b], sh, sw, ph, pw)


def forward_numba(x, w, stride, padding):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    wk = kernel_matrix(w)
    p = np.empty((kh * kw * m, h * wd), dtype=x.dtype)
    y = np.empty((n, m, ho, wo), dtype=x.dtype)
    _forward_images_nb(x.reshape(n, c, h * wd), wk, p, p.reshape(kh, kw, m, h, wd), y,
                       sh, sw, ph, pw)
    return y


@njit(cache=True)
def _backward_images_nb(dy, x3, wk, dp, dp5, dwk, t, dx3, sh, sw, ph, pw):
    wkt = wk.T
    for b in range(x3.shape[0]):
        _gather_nb(dy[b], dp5, sh, sw, ph, pw)
        np.dot(wkt, dp, dx3[b])                    # dx = Wk^T dP
        np.dot(dp, x3[b].T, t)                     # dWk += dP x^T
        dwk += t


def backward_numba(dy, x, w, stride, padding):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    wk = kernel_matrix(w)
    dp = np.empty((kh * kw * m, h * wd), dtype=x.dtype)
    dwk = np.zeros((kh * kw * m, c), dtype=x.dtype)
    t = np.empty((kh * kw * m, c), dtype=x.dtype)
    dx = np.empty_like(x)
    _backward_images_nb(dy, x.reshape(n, c, h * wd), wk, dp, dp.reshape(kh, kw, m, h, wd),
                        dwk, t, dx.reshape(n, c, h * wd), sh, sw, ph, pw)
    dw = np.ascontiguousarray(dwk.reshape(kh, kw, m, c).transpose(2, 3, 0, 1))
    return dx, dw
