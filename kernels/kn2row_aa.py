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

NumPy reference: loops over taps, then images. Numba: the same tap-by-tap GEMMs through
NumPy's BLAS, stacked over a chunk of images, and one parallel shift-add (gather, band add)
kernel per tap and chunk; see the note at the Numba section for the chunk's memory.
"""
import numpy as np

from ._common import out_size, taps
from ._numba import njit, prange, uintp  # sets the threading layer
from .kn2row import SMALL_C, chunk_images


# --------------------------------------------------------------------------------------------
# NumPy reference
# --------------------------------------------------------------------------------------------
def forward_numpy(x, w, stride, padding):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    sh = stride[0]
    ho, wo = out_size(h, wd, kh, kw, stride, padding)

    wij = np.empty((m, c), dtype=x.dtype)                   # one tap's M x C weights
    p = np.empty((m, h * wd), dtype=x.dtype)                # the one partial
    y = np.zeros((n, m, ho, wo), dtype=x.dtype)             # the accumulator
    for t in taps(x.shape, w.shape, stride, padding):
        r0, r1 = t.ih.start, t.ih.stop                       # the band: input rows t reads
        wij[...] = w[:, :, t.i, t.j]
        pb = p[:, :(r1 - r0) * wd]                           # partial on the band
        pb3 = pb.reshape(m, r1 - r0, wd)
        for b in range(n):
            xband = x[b, :, r0:r1, :].reshape(c, (r1 - r0) * wd)   # a view, no copy
            np.matmul(wij, xband, out=pb)
            y[b, :, t.oh, t.ow] += pb3[:, ::sh, t.iw]
    return y


def backward_numpy(dy, x, w, stride, padding):
    n, c, h, wd = x.shape
    m = w.shape[0]
    sh = stride[0]

    wij = np.empty((m, c), dtype=x.dtype)
    dp = np.empty((m, h * wd), dtype=x.dtype)               # dy gathered back for one tap
    dwij = np.empty((m, c), dtype=x.dtype)                  # one image's dW_ij
    q = np.empty((c, h * wd), dtype=x.dtype)                # one image's share of dx
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for t in taps(x.shape, w.shape, stride, padding):
        r0, r1 = t.ih.start, t.ih.stop                       # the band: input rows t reads
        wij[...] = w[:, :, t.i, t.j]
        band = (r1 - r0) * wd
        dpb, qb = dp[:, :band], q[:, :band]
        dpb3 = dpb.reshape(m, r1 - r0, wd)
        for b in range(n):
            dpb.fill(0)                                      # S_ij^T: a one-to-one copy
            dpb3[:, ::sh, t.iw] = dy[b, :, t.oh, t.ow]
            xband = x[b, :, r0:r1, :].reshape(c, band)
            np.matmul(dpb, xband.T, out=dwij)                # dW_ij += dP x^T
            dw[:, :, t.i, t.j] += dwij
            np.matmul(wij.T, dpb, out=qb)                    # dx += W_ij^T dP
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
# The same tap-by-tap GEMMs as the reference, through NumPy's BLAS (np.matmul from Python,
# stacked over a chunk of images, on the band), with the data movement in parallel Numba
# kernels: per tap and chunk, ONE shift-add over the chunk's (b, m) output planes (forward),
# and one gather dP = S_ij^T(dy) plus one band add into dx (backward). Each iteration writes
# only its own plane or row: no races. Measured on the project machine (2 cores): the
# per-image loop in one compiled driver (np.dot inside njit, i.e. SciPy's BLAS, 576 small
# GEMMs on MNIST conv2) lost to the NumPy reference; stacking the images gives BLAS one call
# per tap and the shift-add kernel bs*M planes to share out.
#
# Chunk: the forward works ONE image at a time (BS below). kn2row-aa exists to keep a single
# M x H*W partial alive, and its Numba forward keeps that promise: it allocates exactly what
# workspace_bytes says. The backward stacks a chunk of images per GEMM (as many as fit
# kn2row.CHUNK_BYTES, see chunk_images): one image at a time it lost to the NumPy
# reference (MNIST conv2 forward+backward 27.5 vs 23.9 ms), stacked it wins.
# With C <= kn2row.SMALL_C the tap's GEMM has K = C (an outer product, where BLAS is
# overhead-bound) and is fused into the shift-add: no partial at all.
# Flat views + unsigned offsets: see "Indexing" in kernels/_numba.py.
BS = 1


def workspace_bytes_numba(x_shape, w_shape, stride, padding, itemsize):
    """The Numba forward's buffers: one tap's weights + one image's partial, or nothing when
    C <= SMALL_C (the tap's GEMM is fused into the shift-add)."""
    _, _, h, wd = x_shape
    m, c, _, _ = w_shape
    return 0 if c <= SMALL_C else itemsize * m * (h * wd + c)


@njit(parallel=True, cache=True, nogil=True)
def _shift_add_tap_nb(p, y, oh0, oh1, ow0, ow1, iw0, sh, sw):
    """y[b, m, oh0:oh1, ow0:ow1] += P[b, m] at the tap's strided inputs; one plane each.

    p: (bs, M, R, W), the partial on the band (row 0 = input row ih0); y: (bs, M, Ho, Wo).
    """
    bs, m, r, wd = p.shape
    ho, wo = y.shape[2], y.shape[3]
    pf = p.ravel()
    yf = y.ravel()
    cnt = ow1 - ow0
    for job in prange(bs * m):
        for oh in range(oh0, oh1):
            dst = uintp((job * ho + oh) * wo + ow0)
            src = uintp((job * r + (oh - oh0) * sh) * wd + iw0)
            if sw == 1:
                for t in range(cnt):
                    yf[dst + uintp(t)] += pf[src + uintp(t)]
            else:
                for t in range(cnt):
                    yf[dst + uintp(t)] += pf[src + uintp(t * sw)]


@njit(parallel=True, cache=True, nogil=True)
def _fused_tap_nb(x, w, i, j, y, oh0, oh1, ih0, ow0, ow1, iw0, sh, sw):
    """Tiny C: y[b, m, oh, ow] += sum_c w[m, c, i, j] * x[b, c, ih, iw] for one tap."""
    n, c, h, wd = x.shape
    m, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    xf = x.ravel()
    yf = y.ravel()
    cnt = ow1 - ow0
    for job in prange(n * m):
        b = job // m
        mm = job % m
        for cc in range(c):
            wv = w[mm, cc, i, j]
            for oh in range(oh0, oh1):
                dst = uintp((job * ho + oh) * wo + ow0)
                src = uintp(((b * c + cc) * h + ih0 + (oh - oh0) * sh) * wd + iw0)
                for t in range(cnt):
                    yf[dst + uintp(t)] += wv * xf[src + uintp(t * sw)]


@njit(parallel=True, cache=True, nogil=True)
def _gather_tap_nb(dy, dp, oh0, oh1, ow0, ow1, iw0, sh, sw):
    """dP[b, m] = S_ij^T(dy[b, m]) on the band, zero where no output reads; one map each."""
    bs, m, r, wd = dp.shape
    ho, wo = dy.shape[2], dy.shape[3]
    dpf = dp.ravel()
    dyf = dy.ravel()
    cnt = ow1 - ow0
    for job in prange(bs * m):
        base = uintp(job * r * wd)
        for e in range(r * wd):
            dpf[base + uintp(e)] = 0.0
        for oh in range(oh0, oh1):
            dst = base + uintp((oh - oh0) * sh * wd + iw0)
            src = uintp((job * ho + oh) * wo + ow0)
            for t in range(cnt):
                dpf[dst + uintp(t * sw)] = dyf[src + uintp(t)]


@njit(parallel=True, cache=True, nogil=True)
def _add_band_nb(q, dx3, b0, off):
    """dx3[b0 + b, c, off:off + band] += q[b, c]; one (b, c) row per iteration."""
    bs, c, band = q.shape
    hw = dx3.shape[2]
    qf = q.ravel()
    dxf = dx3.ravel()
    for job in prange(bs * c):
        dst = uintp((b0 * c + job) * hw + off)
        src = uintp(job * band)
        for t in range(band):
            dxf[dst + uintp(t)] += qf[src + uintp(t)]


def forward_numba(x, w, stride, padding):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    sh, sw = stride
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    y = np.zeros((n, m, ho, wo), dtype=x.dtype)             # the accumulator
    small = c <= SMALL_C
    if not small:
        x3 = x.reshape(n, c, h * wd)
        wij = np.empty((m, c), dtype=x.dtype)
        bs = BS
        p = np.empty(bs * m * h * wd, dtype=x.dtype)        # partials of bs images, flat
    for t in taps(x.shape, w.shape, stride, padding):
        r0, r1 = t.ih.start, t.ih.stop                       # the band: input rows t reads
        oh0, oh1, ow0, ow1, iw0 = t.oh.start, t.oh.stop, t.ow.start, t.ow.stop, t.iw.start
        if small:
            _fused_tap_nb(x, w, t.i, t.j, y, oh0, oh1, r0, ow0, ow1, iw0, sh, sw)
            continue
        wij[...] = w[:, :, t.i, t.j]
        band = (r1 - r0) * wd
        for b0 in range(0, n, bs):
            b1 = min(n, b0 + bs)
            pb = p[:(b1 - b0) * m * band].reshape(b1 - b0, m, band)
            np.matmul(wij, x3[b0:b1, :, r0 * wd:r1 * wd], out=pb)   # BLAS, stacked
            _shift_add_tap_nb(pb.reshape(b1 - b0, m, r1 - r0, wd), y[b0:b1],
                              oh0, oh1, ow0, ow1, iw0, sh, sw)
    return y


def backward_numba(dy, x, w, stride, padding):
    n, c, h, wd = x.shape
    m = w.shape[0]
    sh, sw = stride
    x3 = x.reshape(n, c, h * wd)
    bs = chunk_images(n, max(m, c) * h * wd * x.itemsize)
    wij = np.empty((m, c), dtype=x.dtype)
    dp = np.empty(bs * m * h * wd, dtype=x.dtype)           # dP of bs images, flat
    dwij = np.empty((bs, m, c), dtype=x.dtype)              # per-image dW_ij shares
    q = np.empty(bs * c * h * wd, dtype=x.dtype)            # per-image shares of dx
    dx = np.zeros_like(x)
    dx3 = dx.reshape(n, c, h * wd)
    dw = np.zeros_like(w)
    for t in taps(x.shape, w.shape, stride, padding):
        r0, r1 = t.ih.start, t.ih.stop                       # the band: input rows t reads
        wij[...] = w[:, :, t.i, t.j]
        band = (r1 - r0) * wd
        for b0 in range(0, n, bs):
            b1 = min(n, b0 + bs)
            nb = b1 - b0
            dpb = dp[:nb * m * band].reshape(nb, m, band)
            qb = q[:nb * c * band].reshape(nb, c, band)
            _gather_tap_nb(dy[b0:b1], dpb.reshape(nb, m, r1 - r0, wd),
                           t.oh.start, t.oh.stop, t.ow.start, t.ow.stop, t.iw.start, sh, sw)
            xband = x3[b0:b1, :, r0 * wd:r1 * wd]
            np.matmul(dpb, xband.transpose(0, 2, 1), out=dwij[:nb])   # dW_ij += dP x^T
            dw[:, :, t.i, t.j] += dwij[:nb].sum(axis=0) if nb > 1 else dwij[0]
            np.matmul(wij.T, dpb, out=qb)                             # dx += W_ij^T dP
            _add_band_nb(qb, dx3, b0, r0 * wd)
    return dx, dw
