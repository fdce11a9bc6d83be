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

NumPy reference: loops over taps, then images. Numba, stride 1 on kernels.gemm: threads take
whole images and each tap's GEMM reads its shifted input rows in place and accumulates into
the output, so the shift-add is the GEMM's write-out (the "windows" note below). Otherwise:
the tap-by-tap GEMMs stacked over a chunk of images, and one parallel shift-add (gather, band
add) kernel per tap and chunk; see the note at the Numba section for the chunk's memory.
"""
import functools

import numba
import numpy as np

from ._common import out_size, taps
from ._numba import njit, prange, uintp  # sets the threading layer
from .gemm import (
    blocking,
    isa,
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
from .kn2row import SMALL_C, chunk_images, per_image_threads
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
# With C <= kn2row.SMALL_C (a first layer) the tap's GEMM has K = C (an outer product, where
# BLAS is overhead-bound) and is fused into the shift-add: no partial at all. One parallel
# loop does every tap: each output plane stays in L1 while the taps add into it, the
# "accumulating" of kn2row-aa done in the plane itself. At stride 1 the plane is laid over
# the padded width (Ho x Wp, as the windows path below): tap (i, j) then reads ONE run of
# Ho*Wp numbers of the padded image from i*Wp + j, a loop long enough to vectorise (a row
# of 28 is not: LLVM's vector loop wants 64 iterations), and the backward's dW is one dot
# of that length per (m, tap, c). Measured on MNIST conv1 (64 x 1 x 28 x 28, 32 filters, 2
# cores, Zen 4): forward 2.0 -> 0.8 ms, dW-only backward (need_dx=False, what a first layer
# asks for) 4.9 -> 0.9 ms; the backward used to gather dP, run BLAS and compute dx anyway.
# Flat views + unsigned offsets: see "Indexing" in kernels/_numba.py.
BS = 1


def workspace_bytes_numba(x_shape, w_shape, stride, padding, itemsize):
    """The Numba forward's buffers: one tap's weights + one image's partial; when C <=
    SMALL_C (the taps' GEMMs fused into the shift-add) nothing, or at stride 1 per thread a
    padded image and one output plane over Wp-wide rows."""
    n, _, h, wd = x_shape
    m, c, kh, kw = w_shape
    dtype = np.float32 if itemsize == 4 else np.float64
    parts = _uses_windows(x_shape, w_shape, stride, padding, dtype)
    if parts:  # the windows path (see its note below)
        blk = blocking(dtype)
        hp, wp = h + 2 * padding[0], wd + 2 * padding[1]
        ho, wo = hp - kh + 1, wp - kw + 1
        if uses_windows_t(dtype, wo, ho * wo, m):
            return itemsize * (kh * kw * panels(m, tile_shape(dtype, "cols")[1]) * c
                               + parts * (c * hp * wp + kw + blk["vl"] + ho * wo * m))
        return itemsize * (kh * kw * panels(m, blk["mr"]) * c
                           + parts * (c * hp * wp + kw + blk["vl"] + m * ho * wp))
    if c <= SMALL_C:
        if tuple(stride) != (1, 1):
            return 0
        hp, wp = h + 2 * padding[0], wd + 2 * padding[1]
        threads = min(n, numba.get_num_threads())
        return itemsize * threads * (c * hp * wp + kw + (hp - kh + 1) * wp)
    return itemsize * m * (h * wd + c)


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


def _tap_table(x_shape, w_shape, stride, padding):
    """The taps as rows (i, j, oh0, oh1, ow0, ow1, ih0, iw0) for the compiled small-C loops."""
    return np.array([(t.i, t.j, t.oh.start, t.oh.stop, t.ow.start, t.ow.stop, t.ih.start,
                      t.iw.start) for t in taps(x_shape, w_shape, stride, padding)],
                    dtype=np.int64).reshape(-1, 8)


def _ext_offsets(kh, kw, wp):
    """offs[tap] = i*Wp + j: where tap (i, j)'s run of Ho*Wp starts in a padded plane."""
    return np.array([i * wp + j for i in range(kh) for j in range(kw)], dtype=np.int64)


@njit(parallel=True, cache=True, nogil=True)
def _small_c_forward_nb(x, w, tt, sh, sw, y):
    """Tiny C: y[b, m] = sum over taps (i, j) and channels c of w[m, c, i, j] times x[b, c]
    shifted by the tap; one output plane per iteration, in L1 while every tap adds into it."""
    n, c, h, wd = x.shape
    m, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    xf = x.ravel()
    yf = y.ravel()
    for job in prange(n * m):
        b = job // m
        mm = job % m
        base = uintp(job * ho * wo)
        for e in range(ho * wo):
            yf[base + uintp(e)] = 0.0
        for k in range(tt.shape[0]):
            i, j, oh0, oh1 = tt[k, 0], tt[k, 1], tt[k, 2], tt[k, 3]
            ow0, cnt, ih0, iw0 = tt[k, 4], tt[k, 5] - tt[k, 4], tt[k, 6], tt[k, 7]
            for cc in range(c):
                wv = w[mm, cc, i, j]
                for oh in range(oh0, oh1):
                    dst = base + uintp(oh * wo + ow0)
                    src = uintp(((b * c + cc) * h + ih0 + (oh - oh0) * sh) * wd + iw0)
                    if sw == 1:
                        for t in range(cnt):
                            yf[dst + uintp(t)] += wv * xf[src + uintp(t)]
                    else:
                        for t in range(cnt):
                            yf[dst + uintp(t)] += wv * xf[src + uintp(t * sw)]


@njit(parallel=True, cache=True, nogil=True)
def _small_c_backward_nb(dy, x, w, tt, sh, sw, need_dx, dx, dw_parts, bounds, accs):
    """Tiny C, the adjoint of _small_c_forward_nb. Thread t, for its images b and every
    output channel m, tap and input channel c, in one pass over the tap's rows:
        dw_parts[t, m, c, i, j] += <dy[b, m], x[b, c] shifted by the tap>
        dx[b, c] (shifted back) += w[m, c, i, j] * dy[b, m]          (need_dx)
    The dot is summed element-wise into the row-long accs[t] and reduced once per
    (m, tap, c). Each thread writes only its own images' dx and its own dw_parts[t]. (Rows
    are short here, too short for LLVM's vector loop: stride 1 takes the _ext kernels.)"""
    n, c, h, wd = x.shape
    m, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    xf = x.ravel()
    dyf = dy.ravel()
    dxf = dx.ravel()
    for th in prange(bounds.shape[0] - 1):
        acc = accs[th]
        dwp = dw_parts[th]
        for b in range(bounds[th], bounds[th + 1]):
            for mm in range(m):
                for k in range(tt.shape[0]):
                    i, j, oh0, oh1 = tt[k, 0], tt[k, 1], tt[k, 2], tt[k, 3]
                    ow0, cnt, ih0, iw0 = tt[k, 4], tt[k, 5] - tt[k, 4], tt[k, 6], tt[k, 7]
                    for cc in range(c):
                        wv = w[mm, cc, i, j]
                        for t in range(cnt):
                            acc[t] = 0.0
                        for oh in range(oh0, oh1):
                            d = uintp(((b * m + mm) * ho + oh) * wo + ow0)
                            s = uintp(((b * c + cc) * h + ih0 + (oh - oh0) * sh) * wd + iw0)
                            for t in range(cnt):
                                g = dyf[d + uintp(t)]
                                acc[t] += g * xf[s + uintp(t * sw)]
                                if need_dx:
                                    dxf[s + uintp(t * sw)] += wv * g
                        total = acc[0] * 0.0
                        for t in range(cnt):
                            total += acc[t]
                        dwp[mm, cc, i, j] += total


@njit(parallel=True, cache=True, nogil=True)
def _small_c_forward_ext_nb(x, w, offs, ph, pw, y, bounds, xpads, yexts):
    """Tiny C, stride 1. Thread t, for its images b: xpad = x[b] zero-padded; for each output
    channel m, Y_ext (Ho x Wp, in L1) = sum over taps and channels of w[m, c, i, j] times
    xpad's plane c read from offs[tap] = i*Wp + j on (one contiguous run of Ho*Wp, the
    windows' trick), then cropped to y[b, m]."""
    n, c, h, wd = x.shape
    m, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    kw = w.shape[3]
    hp, wp = h + 2 * ph, wd + 2 * pw
    run = ho * wp
    yf = y.ravel()
    for th in prange(bounds.shape[0] - 1):
        xp = xpads[th]
        ye = yexts[th]
        for b in range(bounds[th], bounds[th + 1]):
            pad_image(x, b, ph, pw, xp)
            for mm in range(m):
                for q in range(run):
                    ye[q] = 0.0
                for k in range(offs.shape[0]):
                    for cc in range(c):
                        wv = w[mm, cc, k // kw, k % kw]
                        src = uintp(cc * hp * wp + offs[k])
                        for q in range(run):
                            ye[uintp(q)] += wv * xp[src + uintp(q)]
                base = uintp((b * m + mm) * ho * wo)
                for oh in range(ho):
                    for t in range(wo):
                        yf[base + uintp(oh * wo + t)] = ye[uintp(oh * wp + t)]


# fastmath "reassoc": the dW dots are sums over Ho*Wp products, which LLVM vectorises only
# when it may reorder the additions (a rounding difference of the order of the GEMMs' own).
@njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _small_c_backward_ext_nb(dy, x, w, offs, ph, pw, need_dx, dx, dw_parts, bounds, xpads,
                             dzs, dxpads):
    """Tiny C, stride 1: the adjoint of _small_c_forward_ext_nb. Thread t, for its images b
    and output channels m, with dz = dy[b, m] spread over Wp-wide rows (zeros between):
        dw_parts[t, m, c, i, j] += dz . (xpad's plane c from offs[tap])    one dot of Ho*Wp
        dxpad[c] from offs[tap] += w[m, c, i, j] * dz                        (need_dx)
    and dx[b] = dxpad's interior. Each thread writes only its own images' dx and its own
    dw_parts[t]."""
    n, c, h, wd = x.shape
    m, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    kw = w.shape[3]
    hp, wp = h + 2 * ph, wd + 2 * pw
    run = ho * wp
    dyf = dy.ravel()
    for th in prange(bounds.shape[0] - 1):
        xp = xpads[th]
        dz = dzs[th]
        dxp = dxpads[th]
        dwp = dw_parts[th]
        for b in range(bounds[th], bounds[th + 1]):
            pad_image(x, b, ph, pw, xp)
            if need_dx:
                for q in range(dxp.shape[0]):
                    dxp[q] = 0.0
            for mm in range(m):
                base = uintp((b * m + mm) * ho * wo)
                for oh in range(ho):
                    for t in range(wo):
                        dz[uintp(oh * wp + t)] = dyf[base + uintp(oh * wo + t)]
                for k in range(offs.shape[0]):
                    for cc in range(c):
                        src = uintp(cc * hp * wp + offs[k])
                        total = dz.dtype.type(0)
                        for q in range(run):
                            total += dz[uintp(q)] * xp[src + uintp(q)]
                        dwp[mm, cc, k // kw, k % kw] += total
                        if need_dx:
                            wv = w[mm, cc, k // kw, k % kw]
                            for q in range(run):
                                dxp[src + uintp(q)] += wv * dz[uintp(q)]
            if need_dx:  # dx[b, c] = the interior of dxpad's plane c
                for cc in range(c):
                    crop(dxp[(cc * hp + ph) * wp:], wp, pw, h, wd, dx, b * c + cc)


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
    parts = _uses_windows(x.shape, w.shape, stride, padding, x.dtype)
    if parts:
        return _forward_numba_windows(x, w, padding, parts)
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    sh, sw = stride
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    if c <= SMALL_C:  # each tap's K = C product fused into its shift-add, all taps at once
        y = np.empty((n, m, ho, wo), dtype=x.dtype)
        if (sh, sw) == (1, 1):
            threads, (ph, pw) = min(n, numba.get_num_threads()), padding
            hp, wp = h + 2 * ph, wd + 2 * pw
            _small_c_forward_ext_nb(x, w, _ext_offsets(kh, kw, wp), ph, pw, y,
                                    np.asarray(split_bounds(n, threads, 1)),
                                    np.zeros((threads, c * hp * wp + kw), dtype=x.dtype),
                                    np.empty((threads, ho * wp), dtype=x.dtype))
        else:
            _small_c_forward_nb(x, w, _tap_table(x.shape, w.shape, stride, padding), sh, sw, y)
        return y
    y = np.zeros((n, m, ho, wo), dtype=x.dtype)             # the accumulator
    x3 = x.reshape(n, c, h * wd)
    wij = np.empty((m, c), dtype=x.dtype)
    bs = BS
    p = np.empty(bs * m * h * wd, dtype=x.dtype)            # partials of bs images, flat
    for t in taps(x.shape, w.shape, stride, padding):
        r0, r1 = t.ih.start, t.ih.stop                       # the band: input rows t reads
        oh0, oh1, ow0, ow1, iw0 = t.oh.start, t.oh.stop, t.ow.start, t.ow.stop, t.iw.start
        wij[...] = w[:, :, t.i, t.j]
        band = (r1 - r0) * wd
        for b0 in range(0, n, bs):
            b1 = min(n, b0 + bs)
            pb = p[:(b1 - b0) * m * band].reshape(b1 - b0, m, band)
            np.matmul(wij, x3[b0:b1, :, r0 * wd:r1 * wd], out=pb)   # BLAS, stacked
            _shift_add_tap_nb(pb.reshape(b1 - b0, m, r1 - r0, wd), y[b0:b1],
                              oh0, oh1, ow0, ow1, iw0, sh, sw)
    return y


def backward_numba(dy, x, w, stride, padding, need_dx=True):
    parts = _uses_windows(x.shape, w.shape, stride, padding, x.dtype)
    if parts:
        return _backward_numba_windows(dy, x, w, padding, parts, need_dx)
    n, c, h, wd = x.shape
    m = w.shape[0]
    sh, sw = stride
    if c <= SMALL_C:  # the adjoint of the fused small-C forward: no dP, no GEMM
        threads = min(n, numba.get_num_threads())
        bounds = np.asarray(split_bounds(n, threads, 1))
        dw_parts = np.zeros((threads,) + w.shape, dtype=x.dtype)
        if (sh, sw) == (1, 1):
            (ph, pw), (kh, kw), ho = padding, w.shape[2:], dy.shape[2]
            hp, wp = h + 2 * ph, wd + 2 * pw
            dx = np.empty_like(x) if need_dx else np.empty(0, dtype=x.dtype)
            _small_c_backward_ext_nb(
                dy, x, w, _ext_offsets(kh, kw, wp), ph, pw, need_dx, dx, dw_parts, bounds,
                np.zeros((threads, c * hp * wp + kw), dtype=x.dtype),
                np.zeros((threads, ho * wp), dtype=x.dtype),
                np.empty((threads, c * hp * wp + kw if need_dx else 0), dtype=x.dtype))
        else:
            dx = np.zeros_like(x) if need_dx else np.empty(0, dtype=x.dtype)
            _small_c_backward_nb(dy, x, w, _tap_table(x.shape, w.shape, stride, padding), sh,
                                 sw, need_dx, dx, dw_parts, bounds,
                                 np.empty((threads, dy.shape[3]), dtype=x.dtype))
        return (dx if need_dx else None), dw_parts.sum(axis=0)
    x3 = x.reshape(n, c, h * wd)
    bs = chunk_images(n, max(m, c) * h * wd * x.itemsize)
    wij = np.empty((m, c), dtype=x.dtype)
    dp = np.empty(bs * m * h * wd, dtype=x.dtype)           # dP of bs images, flat
    dwij = np.empty((bs, m, c), dtype=x.dtype)              # per-image dW_ij shares
    q = np.empty(bs * c * h * wd, dtype=x.dtype)            # per-image shares of dx
    dx = np.zeros_like(x) if need_dx else None
    dx3 = dx.reshape(n, c, h * wd) if need_dx else None
    dw = np.zeros_like(w)
    for t in taps(x.shape, w.shape, stride, padding):
        r0, r1 = t.ih.start, t.ih.stop                       # the band: input rows t reads
        wij[...] = w[:, :, t.i, t.j]
        band = (r1 - r0) * wd
        for b0 in range(0, n, bs):
            b1 = min(n, b0 + bs)
            nb = b1 - b0
            dpb = dp[:nb * m * band].reshape(nb, m, band)
            _gather_tap_nb(dy[b0:b1], dpb.reshape(nb, m, r1 - r0, wd),
                           t.oh.start, t.oh.stop, t.ow.start, t.ow.stop, t.iw.start, sh, sw)
            xband = x3[b0:b1, :, r0 * wd:r1 * wd]
            np.matmul(dpb, xband.transpose(0, 2, 1), out=dwij[:nb])   # dW_ij += dP x^T
            dw[:, :, t.i, t.j] += dwij[:nb].sum(axis=0) if nb > 1 else dwij[0]
            if need_dx:
                qb = q[:nb * c * band].reshape(nb, c, band)
                np.matmul(wij.T, dpb, out=qb)                         # dx += W_ij^T dP
                _add_band_nb(qb, dx3, b0, r0 * wd)
    return dx, dw


# --------------------------------------------------------------------------------------------
# Numba, stride 1: the shift-add fused into the GEMM ("windows", as in kernels/im2col.py)
# --------------------------------------------------------------------------------------------
# With stride 1, and the output computed over the padded width Wp (output "pixel"
# p = oh*Wp + ow; the last KW-1 of every row are extra, computed and dropped), tap (i, j)'s
# shift is a constant offset: the partial it adds at output p is W_ij @ xpad[:, p + i*Wp + j].
# So the tap's GEMM reads its B rows (one per input channel) in place, from a row table
# off_ij[c] = c*Hp*Wp + i*Wp + j into the zero-padded image (kernels.gemm's
# macro_kernel_rows_b), and accumulates straight into the output Y_ext (M x Ho*Wp): the
# shift-add IS the GEMM's write-out, and the partial P is never stored. Per thread and image:
#     xpad = x[n] zero-padded;  Y_ext = sum over taps of W_ij @ B_ij;  y[n] = Y_ext cropped
#     dW_ij^T (C x M) += B_ij @ dY_ext^T       A rows read in place (macro_kernel_rows_a)
#     dX_ext (C x H*Wp) = sum over taps W_ij^T @ dZ_ij, dZ_ij rows read in place in dz (dy
#                         spread over Wp-wide rows with zeros around): the adjoint shift
# Each thread's buffers are one image's (in L2); the images are shared out between threads
# and every thread writes only its own images' y / dx and its own dW sum.
# As in im2col (kernels/im2col_fused.py, "windows, transposed"): where the "cols" tile's MR
# divides the output width, the forward and dX turn each tap's product round, so no padding
# column is computed:
#     Y^T (Ho*Wo x M) += B_ij^T @ W_ij^T     B_ij^T read in place by columns (one per channel)
#     dX^T (H*W x C)  += dZ_ij^T @ W_ij      dZ_ij^T likewise, from dz
# and transposed back to NCHW per image; and dW's depth steps over the kept pixels only
# (kernels.gemm's "rows_d"), with dY^T packed without padding columns.
# Workspace of this forward (T threads, MR = the GEMM's tile height):
#     KH*KW * ceil(M/MR)*MR * C                the packed W_ij
#     + T * (C*Hp*Wp + KW + VL + M*Ho*Wp)      xpad (+ the last window's tail) and Y_ext
# or, transposed (NR' = the "cols" tile's width):
#     KH*KW * ceil(M/NR')*NR' * C              the packed W_ij^T
#     + T * (C*Hp*Wp + KW + VL + Ho*Wo*M)      xpad and Y^T
# MNIST conv2, 2 threads: 0.14 MiB. The backward allocates per thread xpad, the packed
# dY^T, dz, dX_ext (or dX^T) and a dW^T sum (KH*KW*C*M), and the packed W_ij^T (or W_ij)
# once.


def _uses_windows(x_shape, w_shape, stride, padding, dtype):
    """Threads for the windows path (0: not taken): stride 1, kernels.gemm the GEMM, enough
    images for every thread, C above SMALL_C, and at most a third of the columns extra."""
    n, c, _, wd = x_shape
    kw = w_shape[3]
    if tuple(stride) != (1, 1) or c <= SMALL_C or 3 * (kw - 1) > wd + 2 * padding[1]:
        return 0
    return per_image_threads(n, dtype)


def _tap_tables(c, kh, kw, hp, wp, rows):
    """off[tap, c] = c*Hp*Wp + i*Wp + j, each tap's row padded to `rows` with its last entry."""
    off = np.empty((kh * kw, rows), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            off[i * kw + j, :c] = np.arange(c) * (hp * wp) + i * wp + j
            off[i * kw + j, c:] = off[i * kw + j, c - 1]
    return off


@njit(parallel=True, cache=True, nogil=True)
def _forward_windows(g, x, wpacks, offs, ph, pw, y, bounds, xpads, yexts, mr, nr, kc, tiles):
    """Thread t, for its images n: y[n] = sum over taps of W_ij @ (xpad shifted by (i, j))."""
    c = x.shape[1]
    m, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    wp = x.shape[3] + 2 * pw
    for t in prange(bounds.shape[0] - 1):
        for n in range(bounds[t], bounds[t + 1]):
            pad_image(x, n, ph, pw, xpads[t])
            for tap in range(offs.shape[0]):  # the tap's GEMM adds into Y_ext: its shift-add
                macro_kernel_rows_b(g, c, wpacks[tap], xpads[t], offs[tap], yexts[t], m,
                                    ho * wp, tap > 0, mr, nr, kc, tiles[t])
            crop(yexts[t], wp, 0, m * ho, wo, y, n)


@functools.lru_cache(maxsize=64)
def _turned_tables(c, kh, kw, hp, wp, ho, wo, mr):
    """(chans, a_offs) of the turned-round forward: chans[c] = c*Hp*Wp, the depth table;
    a_offs[tap] = where each MR-pixel panel starts for tap (i, j), shifted by i*Wp + j.
    (Read-only, cached per layer shape: a training step asks for the same tables.)"""
    chans = np.arange(c, dtype=np.int64) * (hp * wp)
    a_offs = np.stack([panel_offsets(ho, wo, wp, i * wp + j, mr)
                       for i in range(kh) for j in range(kw)])
    chans.flags.writeable = False
    a_offs.flags.writeable = False
    return chans, a_offs


@njit(parallel=True, cache=True, nogil=True)
def _forward_windows_t(g, x, wtpacks, chans, a_offs, ph, pw, y, bounds, xpads, yts, mr, nr, kc,
                       tiles):
    """Thread t, for its images n: y[n] = (sum over taps of B_ij^T @ W_ij^T)^T, B_ij^T read
    by columns (chans[c] = c*Hp*Wp) from the tap's panel offsets a_offs[tap]."""
    c = x.shape[1]
    m, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    for t in prange(bounds.shape[0] - 1):
        for n in range(bounds[t], bounds[t + 1]):
            pad_image(x, n, ph, pw, xpads[t])
            for tap in range(a_offs.shape[0]):
                macro_kernel_cols_a(g, c, xpads[t], chans, a_offs[tap], wtpacks[tap], yts[t],
                                    ho * wo, m, tap > 0, mr, nr, kc, tiles[t])
            transpose_into(yts[t], y, n)


@njit(parallel=True, cache=True, nogil=True)
def _backward_windows(g, dy, x, w2packs, offs, dsteps, dtabs, ph, pw, lead, lz, need_dx, dx,
                      dwt_parts, dx_t, dx_offs, bounds, xpads, dypacks, dzs, dxexts, mr, nr, mra,
                      nra, kc, tiles, rtiles):
    """Thread t, for its images n and every tap: dwt_parts[t, tap] += B_ij @ dY^T over the
    kept pixels (depth steps dsteps), and (need_dx) dX_ext += W_ij^T @ dZ_ij, dx[n] = dX_ext
    cropped; or (dx_t) dX^T += dZ_ij^T @ W_ij, panels from dx_offs, dx[n] = dX^T transposed.
    (mr, nr): the dX GEMM's tile."""
    c, h, wd = x.shape[1], x.shape[2], x.shape[3]
    m, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    wp = wd + 2 * pw
    for t in prange(bounds.shape[0] - 1):
        for n in range(bounds[t], bounds[t + 1]):
            pad_image(x, n, ph, pw, xpads[t])
            pack_dy_t(dy, n, wo, nra, dypacks[t])
            if need_dx:
                spread_dy(dy, n, wp, lead, lz, dzs[t])
            for tap in range(offs.shape[0]):
                macro_kernel_rows_d(g, ho * wo, xpads[t], offs[tap], dsteps, dypacks[t],
                                    dwt_parts[t, tap], c, m, n > bounds[t], mra, nra, kc,
                                    rtiles[t])
                if not need_dx:
                    continue
                if dx_t:
                    macro_kernel_cols_a(g, m, dzs[t], dtabs[tap], dx_offs, w2packs[tap],
                                        dxexts[t], h * wd, c, tap > 0, mr, nr, kc, tiles[t])
                else:
                    macro_kernel_rows_b(g, m, w2packs[tap], dzs[t], dtabs[tap], dxexts[t], c,
                                        h * wp, tap > 0, mr, nr, kc, tiles[t])
            if not need_dx:
                continue
            if dx_t:
                transpose_into(dxexts[t], dx, n)
            else:
                crop(dxexts[t], wp, pw, c * h, wd, dx, n)


def _forward_numba_windows(x, w, padding, parts):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    ph, pw = padding
    hp, wp = h + 2 * ph, wd + 2 * pw
    ho, wo = hp - kh + 1, wp - kw + 1
    dt = x.dtype
    blk = blocking(dt)
    mr, nr, vl = blk["mr"], blk["nr"], blk["vl"]
    xpads = np.zeros((parts, c * hp * wp + kw + vl), dtype=dt)
    y = np.empty((n, m, ho, wo), dtype=dt)
    bounds = np.asarray(split_bounds(n, parts, 1))
    if uses_windows_t(dt, wo, ho * wo, m):  # the taps' products turned round (see above)
        mrt, nrt = tile_shape(dt, "cols")
        chans, a_offs = _turned_tables(c, kh, kw, hp, wp, ho, wo, mrt)
        wtpacks = np.empty((kh * kw, panels(m, nrt) * c), dtype=dt)
        for i in range(kh):
            for j in range(kw):
                pack_b(w[:, :, i, j], True, 0, c, 0, m, nrt, wtpacks[i * kw + j])  # W_ij^T
        yts = np.empty((parts, ho * wo, m), dtype=dt)
        _forward_windows_t(isa(), x, wtpacks, chans, a_offs, ph, pw, y, bounds, xpads, yts,
                           mrt, nrt, blk["kc"], scratch_tiles(dt, parts, "cols"))
        return y
    offs = _tap_tables(c, kh, kw, hp, wp, c)
    wpacks = np.empty((kh * kw, panels(m, mr) * c), dtype=dt)
    for i in range(kh):
        for j in range(kw):
            pack_a(w[:, :, i, j], False, 0, m, 0, c, mr, wpacks[i * kw + j])
    yexts = np.empty((parts, m, ho * wp), dtype=dt)
    _forward_windows(isa(), x, wpacks, offs, ph, pw, y, bounds, xpads, yexts, mr, nr,
                     blk["kc"], scratch_tiles(dt, parts))
    return y


def _backward_numba_windows(dy, x, w, padding, parts, need_dx=True):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    ph, pw = padding
    hp, wp = h + 2 * ph, wd + 2 * pw
    ho, wo = dy.shape[2], dy.shape[3]
    dt = x.dtype
    blk = blocking(dt)
    vl = blk["vl"]
    mra, nra = tile_shape(dt, "rows")  # the dW GEMMs' tile: A's rows read in place
    offs = _tap_tables(c, kh, kw, hp, wp, panels(c, mra))
    dsteps = panel_offsets(ho, wo, wp, 0, 1)  # dW's depth: the kept pixels, oh*Wp + ow
    lead, lz = dz_layout(kh, kw, wp, ph, h, ho, vl)  # where dy's rows go in dz
    dx_t = uses_windows_t(dt, wd, h * wd, c)  # dX turned round (see above)
    mr, nr = tile_shape(dt, "cols") if dx_t else (blk["mr"], blk["nr"])
    dx_offs = panel_offsets(h, wd, wp, pw, mr) if dx_t else np.empty(0, np.int64)
    dtabs = np.empty((kh * kw, m), dtype=np.int64)
    w2packs = np.empty((kh * kw, panels(c, nr if dx_t else mr) * m), dtype=dt)
    for i in range(kh):
        for j in range(kw):
            dtabs[i * kw + j] = np.arange(m) * lz + lead + (ph - i) * wp - j
            if dx_t:  # B = W_ij, in panels of NR' input channels
                pack_b(w[:, :, i, j], False, 0, m, 0, c, nr, w2packs[i * kw + j])
            else:     # A = W_ij^T
                pack_a(w[:, :, i, j], True, 0, c, 0, m, mr, w2packs[i * kw + j])
    xpads = np.zeros((parts, c * hp * wp + kw + vl), dtype=dt)
    dypacks = np.zeros((parts, panels(m, nra) * ho * wo), dtype=dt)
    dzs = np.zeros((parts, m * lz if need_dx else 0), dtype=dt)
    dxexts = np.empty(((parts, h * wd, c) if dx_t else (parts, c, h * wp)) if need_dx
                      else (parts, 0, 0), dtype=dt)
    dwt_parts = np.empty((parts, kh * kw, c, m), dtype=dt)
    rtiles = np.empty((parts, mra, nra), dtype=dt)
    dx = np.empty_like(x) if need_dx else np.empty((0, 0, 0, 0), dtype=dt)
    _backward_windows(isa(), dy, x, w2packs, offs, dsteps, dtabs, ph, pw, lead, lz, need_dx, dx,
                      dwt_parts, dx_t, dx_offs, np.asarray(split_bounds(n, parts, 1)), xpads,
                      dypacks, dzs, dxexts, mr, nr, mra, nra, blk["kc"],
                      scratch_tiles(dt, parts, "cols" if dx_t else "packed"), rtiles)
    dwt = dwt_parts.sum(axis=0)                                   # (KH*KW, C, M)
    dw = np.ascontiguousarray(dwt.reshape(kh, kw, c, m).transpose(3, 2, 0, 1))
    return (dx if need_dx else None), dw
