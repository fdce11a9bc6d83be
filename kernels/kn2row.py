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
NumPy's BLAS, stacked over a chunk of images, and replace the K*K slice-adds (and the
backward gather) by one fused, parallel pass per chunk over independent output planes (see
the note above forward_numba's kernels; its partial holds a chunk of images, not one).
"""
import numpy as np

from ._common import out_size, taps
from ._numba import njit, prange, uintp, valid_range  # sets the threading layer
from .gemm import matmul


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
    ho, wo = out_size(h, wd, kh, kw, stride, padding)

    wk = kernel_matrix(w)                                          # (KH*KW*M, C)
    p = np.empty((kh * kw * m, h * wd), dtype=x.dtype)             # the K*K partial maps
    p5 = p.reshape(kh, kw, m, h, wd)
    y = np.zeros((n, m, ho, wo), dtype=x.dtype)
    for b in range(n):
        np.matmul(wk, x[b].reshape(c, h * wd), out=p)              # ONE GEMM per image
        for t in taps(x.shape, w.shape, stride, padding):          # K*K clipped shift-adds
            y[b, :, t.oh, t.ow] += p5[t.i, t.j, :, t.ih, t.iw]
    return y


def backward_numpy(dy, x, w, stride, padding):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape

    wk = kernel_matrix(w)                                          # (KH*KW*M, C)
    dp = np.empty((kh * kw * m, h * wd), dtype=x.dtype)            # dy gathered into K*K maps
    dp5 = dp.reshape(kh, kw, m, h, wd)
    dwk = np.zeros((kh * kw * m, c), dtype=x.dtype)                # accumulates over images
    share = np.empty((kh * kw * m, c), dtype=x.dtype)              # one image's share
    dx = np.empty_like(x)
    for b in range(n):
        # dP = S^T(dy): the adjoint of the shift-add. Tap (i, j) sent P_ij[ih, iw] to
        # y[oh, ow]; the gradient goes back the same way (a plain copy: for one tap the map
        # (oh, ow) -> (ih, iw) is one-to-one). Input pixels no output reads stay zero.
        dp.fill(0)
        for t in taps(x.shape, w.shape, stride, padding):
            dp5[t.i, t.j, :, t.ih, t.iw] = dy[b, :, t.oh, t.ow]
        xb = x[b].reshape(c, h * wd)
        np.matmul(wk.T, dp, out=dx[b].reshape(c, h * wd))         # dx = Wk^T dP
        np.matmul(dp, xb.T, out=share)                             # dWk += dP x^T
        dwk += share
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
# The Numba path runs the same GEMMs as the reference, on kernels.gemm (gemm.matmul, from
# Python, stacked over a chunk of images), and replaces the data movement with ONE parallel
# kernel per chunk: the K*K shift-adds (forward) and the gather dP = S^T(dy) (backward).
# Measured on the project machine (2 cores, OpenBLAS): np.dot called from inside njit goes
# through SciPy's BLAS (a second thread pool), and a parallel launch per image cost more than
# the shift-add it ran (MNIST conv2: 64 launches of 14x14 planes). With a chunk of images the
# kernel has bs*M independent planes to share out, and the chunk's partial maps stay in cache
# between the GEMM that writes them and the shift-add that reads them.
#
# Chunk: as many images as fit CHUNK_BYTES of partial maps (at least one), so the Numba
# forward allocates  itemsize * bs * KH*KW*Cout * H*W  for P instead of one image's share
# (MNIST conv2: 8 images, 3.6 MB; wide 16x64x56x56: one image). workspace_bytes describes
# the NumPy reference, workspace_bytes_numba this path.
# Flat views + unsigned offsets: see "Indexing" in kernels/_numba.py.
CHUNK_BYTES = 4 << 20
SMALL_C = 4  # C <= SMALL_C: P = Wk @ x is an outer product; a Numba loop beats BLAS there


def chunk_images(n, image_bytes):
    """How many of n images' partial maps (image_bytes each) fit CHUNK_BYTES; at least one."""
    return max(1, min(n, CHUNK_BYTES // max(1, image_bytes)))


def workspace_bytes_numba(x_shape, w_shape, stride, padding, itemsize):
    """The Numba forward's buffers: the kernel matrix + a chunk of images' partial maps."""
    n, _, h, wd = x_shape
    m, c, kh, kw = w_shape
    bs = chunk_images(n, kh * kw * m * h * wd * itemsize)
    return itemsize * kh * kw * m * (c + bs * h * wd)


@njit(parallel=True, cache=True, nogil=True)
def _small_gemm_nb(wk, x3, p):
    """p[b] = wk @ x3[b] for tiny C (K of the GEMM): one (b, row) per iteration."""
    bs, c, hw = x3.shape
    rows = wk.shape[0]
    pf = p.ravel()
    xf = x3.ravel()
    for job in prange(bs * rows):
        b = job // rows
        r = job % rows
        dst = uintp(job * hw)
        src = uintp(b * c * hw)
        w0 = wk[r, 0]
        for q in range(hw):
            pf[dst + uintp(q)] = w0 * xf[src + uintp(q)]
        for cc in range(1, c):
            wc = wk[r, cc]
            s = src + uintp(cc * hw)
            for q in range(hw):
                pf[dst + uintp(q)] += wc * xf[s + uintp(q)]


@njit(parallel=True, cache=True, nogil=True)
def _shift_add_nb(p, y, kh, kw, sh, sw, ph, pw, h, wd):
    """y[b, m] = sum_ij clipped, strided shift of P_ij[b, m]; one (b, m) plane per iteration.

    p: (bs, KH*KW*M, H*W), y: (bs, M, Ho, Wo), both C-contiguous. Each iteration writes only
    its own output plane, row by row (the row stays in L1 while the K*K taps add into it).
    """
    bs, m, ho, wo = y.shape
    hw = h * wd
    kkm = kh * kw * m
    pf = p.ravel()
    yf = y.ravel()
    for job in prange(bs * m):
        b = job // m
        mm = job % m
        for oh in range(ho):
            row = uintp((job * ho + oh) * wo)
            for ow in range(wo):
                yf[row + uintp(ow)] = 0.0
            for i in range(kh):
                ih = oh * sh + i - ph
                if ih < 0 or ih >= h:
                    continue
                for j in range(kw):
                    lo, hi = valid_range(j, pw, sw, wd, wo)
                    # P_ij[b, m, ih, lo*sw + j - pw], the first input this row reads
                    src = uintp((b * kkm + (i * kw + j) * m + mm) * hw + ih * wd
                                + lo * sw + j - pw)
                    dst = row + uintp(lo)
                    if sw == 1:  # unit stride: a contiguous, vectorisable row add
                        for t in range(hi - lo):
                            yf[dst + uintp(t)] += pf[src + uintp(t)]
                    else:
                        for t in range(hi - lo):
                            yf[dst + uintp(t)] += pf[src + uintp(t * sw)]


@njit(parallel=True, cache=True, nogil=True)
def _gather_nb(dy, dp, kh, kw, sh, sw, ph, pw, h, wd):
    """dP = S^T(dy) for a chunk: dp (bs, KH*KW*M, H*W) from dy (bs, M, Ho, Wo).

    One (b, tap, m) map per iteration, written whole (zeros where no output reads), so no
    two iterations write the same element.
    """
    bs, m, ho, wo = dy.shape
    hw = h * wd
    kkm = kh * kw * m
    dpf = dp.ravel()
    dyf = dy.ravel()
    for job in prange(bs * kkm):
        b = job // kkm
        r = job % kkm
        tap = r // m
        mm = r % m
        i = tap // kw
        j = tap % kw
        lo, hi = valid_range(j, pw, sw, wd, wo)
        for ih in range(h):
            dst = uintp(job * hw + ih * wd)
            for iw in range(wd):
                dpf[dst + uintp(iw)] = 0.0
            a = ih + ph - i  # = oh*sh when output row oh reads input row ih through tap i
            if a < 0 or a % sh != 0 or a // sh >= ho:
                continue
            oh = a // sh
            src = uintp(((b * m + mm) * ho + oh) * wo + lo)
            d0 = dst + uintp(lo * sw + j - pw)
            if sw == 1:
                for t in range(hi - lo):
                    dpf[d0 + uintp(t)] = dyf[src + uintp(t)]
            else:
                for t in range(hi - lo):
                    dpf[d0 + uintp(t * sw)] = dyf[src + uintp(t)]


def _partials(wk, x3, out):
    """out[b] = Wk @ x3[b] for the images of one chunk (BLAS, or a Numba loop for tiny C)."""
    if x3.shape[1] <= SMALL_C:
        _small_gemm_nb(wk, x3, out)
    else:
        matmul(wk, x3, out=out)


def forward_numba(x, w, stride, padding):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    kkm = kh * kw * m
    wk = kernel_matrix(w)
    x3 = x.reshape(n, c, h * wd)
    bs = chunk_images(n, kkm * h * wd * x.itemsize)
    p = np.empty((bs, kkm, h * wd), dtype=x.dtype)
    y = np.empty((n, m, ho, wo), dtype=x.dtype)
    for b0 in range(0, n, bs):
        b1 = min(n, b0 + bs)
        pb = p[:b1 - b0]
        _partials(wk, x3[b0:b1], pb)                               # GEMM(s): P = Wk @ x[b]
        _shift_add_nb(pb, y[b0:b1], kh, kw, sh, sw, ph, pw, h, wd)  # one parallel pass
    return y


def backward_numba(dy, x, w, stride, padding):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    kkm = kh * kw * m
    wk = kernel_matrix(w)
    wkt = wk.T
    x3 = x.reshape(n, c, h * wd)
    bs = chunk_images(n, kkm * h * wd * x.itemsize)
    dp = np.empty((bs, kkm, h * wd), dtype=x.dtype)
    t = np.empty((bs, kkm, c), dtype=x.dtype)                      # per-image dWk shares
    dwk = np.zeros((kkm, c), dtype=x.dtype)
    dx = np.empty_like(x)
    dx3 = dx.reshape(n, c, h * wd)
    for b0 in range(0, n, bs):
        b1 = min(n, b0 + bs)
        dpb, tb = dp[:b1 - b0], t[:b1 - b0]
        _gather_nb(dy[b0:b1], dpb, kh, kw, sh, sw, ph, pw, h, wd)  # dP = S^T(dy)
        matmul(wkt, dpb, out=dx3[b0:b1])                        # dx = Wk^T dP
        matmul(dpb, x3[b0:b1].transpose(0, 2, 1), out=tb)       # dWk += dP x^T
        dwk += tb.sum(axis=0) if b1 - b0 > 1 else tb[0]
    dw = np.ascontiguousarray(dwk.reshape(kh, kw, m, c).transpose(2, 3, 0, 1))
    return dx, dw
