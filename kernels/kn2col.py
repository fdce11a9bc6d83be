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

NumPy reference and Numba side by side. Numba, stride 1 ("fused", the last section): the
shift-add happens in the GEMM's write-out, each tap's tiles (rows = pixels, columns =
output channels) added into a channels-last extended output at the tap's row offset, which
the crop writes back channel-major; the backward is kn2row's fused one (dP read in place).
Otherwise: per image on kernels.gemm's loops, or a chunk of images and one fused shift-add
pass per chunk (prange over (image, output row): each iteration owns its row of every
channel), summing the K*K M-vectors in a small row buffer before writing them channel-major.
"""
import numpy as np

from . import kn2row
from ._common import out_size, taps
from ._numba import njit, prange, uintp, valid_range  # sets the threading layer
from .gemm import (
    blocking,
    isa,
    macro_kernel,
    macro_kernel_taps,
    matmul,
    pack_a,
    pack_b,
    panels,
    scratch_tiles,
    split_bounds,
)
from .kn2row import (
    SMALL_C,
    backward_fused,
    chunk_images,
    fused_geometry,
    fused_parts,
    fused_workspace_bytes,
    per_image_threads,
)
from .windows import pad_image


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
    ho, wo = out_size(h, wd, kh, kw, stride, padding)

    wc = kernel_matrix_t(w)                                       # C x (KH*KW*M)
    p = np.empty((h * wd, kh * kw * m), dtype=x.dtype)            # partial maps, pixel-major
    p5 = p.reshape(h, wd, kh, kw, m)
    y = np.zeros((n, m, ho, wo), dtype=x.dtype)
    for b in range(n):
        np.matmul(x[b].reshape(c, h * wd).T, wc, out=p)           # (H*W x C) @ (C x K*K*M)
        yb = y[b].transpose(1, 2, 0)                              # channels-last view of y[b]
        for t in taps(x.shape, w.shape, stride, padding):         # K*K clipped shift-adds
            yb[t.oh, t.ow, :] += p5[t.ih, t.iw, t.i, t.j, :]
    return y


def backward_numpy(dy, x, w, stride, padding):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape

    wc = kernel_matrix_t(w)
    dp = np.empty((h * wd, kh * kw * m), dtype=x.dtype)
    dp5 = dp.reshape(h, wd, kh, kw, m)
    dwc = np.zeros((c, kh * kw * m), dtype=x.dtype)
    share = np.empty((c, kh * kw * m), dtype=x.dtype)             # one image's share
    dx = np.empty_like(x)
    for b in range(n):
        dyb = dy[b].transpose(1, 2, 0)                            # channels-last view of dy[b]
        dp.fill(0)
        for t in taps(x.shape, w.shape, stride, padding):
            dp5[t.ih, t.iw, t.i, t.j, :] = dyb[t.oh, t.ow, :]
        xb = x[b].reshape(c, h * wd)
        np.matmul(wc, dp.T, out=dx[b].reshape(c, h * wd))         # dx[n] = Wc dP^T
        np.matmul(xb, dp, out=share)                              # dWc += x[n] dP
        dwc += share
    dw = np.ascontiguousarray(dwc.reshape(c, kh, kw, m).transpose(3, 0, 1, 2))
    return dx, dw


# Workspace: the same buffers as kn2row's (the kernel matrix and the K*K partial maps),
# transposed, so the same formulas (see the header) count them.
workspace_bytes = kn2row.workspace_bytes
backward_workspace_bytes = kn2row.backward_workspace_bytes


# --------------------------------------------------------------------------------------------
# Numba
# --------------------------------------------------------------------------------------------
# The Numba path: the same GEMMs on kernels.gemm (gemm.matmul from Python, stacked over a
# chunk of images, as many as fit kn2row.CHUNK_BYTES of partial maps), and ONE parallel
# Numba kernel per chunk for the shift-add (forward) or the gather (backward), over the
# chunk's (b, row) pairs. Measured on the project machine (2 cores): the per-image loop in one
# compiled driver (np.dot inside njit = SciPy's BLAS, one parallel launch per image) was
# slower; with C <= kn2row.SMALL_C the GEMM is an outer product (K = C) and a Numba loop
# beats BLAS. The Numba forward therefore holds bs images' partials (workspace_bytes
# describes the NumPy reference). Flat views + unsigned offsets: see kernels/_numba.py.
@njit(parallel=True, cache=True, nogil=True)
def _small_gemm_t_nb(x3, wc, p):
    """p[b] = x3[b]^T @ wc for tiny C: one (b, pixel) row of KH*KW*M per iteration."""
    bs, c, hw = x3.shape
    cols = wc.shape[1]
    pf = p.ravel()
    xf = x3.ravel()
    wf = wc.ravel()
    for job in prange(bs * hw):
        b = job // hw
        q = job % hw
        dst = uintp(job * cols)
        x0 = xf[uintp(b * c * hw + q)]
        for r in range(cols):
            pf[dst + uintp(r)] = x0 * wf[uintp(r)]
        for cc in range(1, c):
            xv = xf[uintp((b * c + cc) * hw + q)]
            for r in range(cols):
                pf[dst + uintp(r)] += xv * wf[uintp(cc * cols + r)]


@njit(cache=True, nogil=True)
def _shift_add_row(pf, pbase, yf, n, oh, acc, m, ho, wo, h, wd, kh, kw, sh, sw, ph, pw):
    """Output row oh of every channel of y[n] from one image's P (flat at pf[pbase:],
    H*W x KH*KW*M): summed in `acc`, a channels-last row buffer (Wo*M), then written out
    channel-major."""
    kkm = kh * kw * m
    for e in range(wo * m):
        acc[e] = 0.0
    for i in range(kh):
        ih = oh * sh - ph + i
        if ih < 0 or ih >= h:
            continue
        for j in range(kw):
            lo, hi = valid_range(j, pw, sw, wd, wo)
            for ow in range(lo, hi):
                src = pbase + uintp((ih * wd + ow * sw + j - pw) * kkm + (i * kw + j) * m)
                dst = uintp(ow * m)
                for mm in range(m):                     # contiguous M-vector
                    acc[dst + uintp(mm)] += pf[src + uintp(mm)]
    for mm in range(m):                                 # back to channel-major
        base = uintp(((n * m + mm) * ho + oh) * wo)
        for ow in range(wo):
            yf[base + uintp(ow)] = acc[uintp(ow * m + mm)]


@njit(parallel=True, cache=True, nogil=True)
def _shift_add_nb(p, y, h, wd, kh, kw, sh, sw, ph, pw):
    """y[b, :, oh, :] = sum over taps of the clipped, strided M-vectors of P[b]; one row each.

    p: (bs, H*W, KH*KW*M) flat per image; y: (bs, M, Ho, Wo). Each iteration owns one output
    row (b, oh) of every channel.
    """
    bs, m, ho, wo = y.shape
    hw_kkm = h * wd * kh * kw * m
    pf = p.ravel()
    yf = y.ravel()
    for job in prange(bs * ho):
        b = job // ho
        acc = np.zeros(wo * m, dtype=y.dtype)
        _shift_add_row(pf, uintp(b * hw_kkm), yf, b, job % ho, acc, m, ho, wo, h, wd, kh, kw,
                       sh, sw, ph, pw)


@njit(cache=True, nogil=True)
def _gather_row(dyf, n, dpf, row, ih, m, ho, wo, h, wd, kh, kw, sh, sw, ph, pw):
    """Input row ih of dP (flat at dpf[row:], W x KH*KW*M) = S^T(dy[n]) there, written whole
    (zeros where no output reads)."""
    kkm = kh * kw * m
    for e in range(wd * kkm):
        dpf[row + uintp(e)] = 0.0
    for i in range(kh):
        a = ih + ph - i                          # = oh*sh when output row oh reads ih
        if a < 0 or a % sh != 0 or a // sh >= ho:
            continue
        oh = a // sh
        for j in range(kw):
            lo, hi = valid_range(j, pw, sw, wd, wo)
            for ow in range(lo, hi):
                dst = row + uintp((ow * sw + j - pw) * kkm + (i * kw + j) * m)
                for mm in range(m):
                    dpf[dst + uintp(mm)] = dyf[uintp(((n * m + mm) * ho + oh) * wo + ow)]


@njit(parallel=True, cache=True, nogil=True)
def _gather_nb(dy, dp, h, wd, kh, kw, sh, sw, ph, pw):
    """dP = S^T(dy) in the partial-map layout; each (b, input row ih) is one iteration's."""
    bs, m, ho, wo = dy.shape
    kkm = kh * kw * m
    dpf = dp.ravel()
    dyf = dy.ravel()
    for job in prange(bs * h):
        _gather_row(dyf, job // h, dpf, uintp(job * wd * kkm), job % h, m, ho, wo, h, wd,
                    kh, kw, sh, sw, ph, pw)


def workspace_bytes_numba(x_shape, w_shape, stride, padding, itemsize):
    """kn2row's chunked buffers (transposed), or the per-image path's (see its note)."""
    n, c, h, wd = x_shape
    m, _, kh, kw = w_shape
    dtype = np.float32 if itemsize == 4 else np.float64
    parts = fused_parts(x_shape, w_shape, stride, padding, dtype)
    if parts:
        return fused_workspace_bytes(x_shape, w_shape, padding, itemsize, parts, True)
    parts = per_image_threads(n, dtype) if c > SMALL_C else 0
    if not parts:
        return kn2row.workspace_bytes_numba(x_shape, w_shape, stride, padding, itemsize)
    blk = blocking(dtype)
    wo = out_size(h, wd, kh, kw, stride, padding)[1]
    kkm = kh * kw * m
    return itemsize * (panels(kkm, blk["nr"]) * c + parts * (
        h * wd * kkm + panels(h * wd, blk["mr"]) * c + wo * m))


def forward_numba(x, w, stride, padding):
    n, c, h, wd = x.shape
    parts = fused_parts(x.shape, w.shape, stride, padding, x.dtype)
    if parts:
        return _forward_fused(x, w, padding, parts)
    parts = per_image_threads(n, x.dtype) if c > SMALL_C else 0
    if parts:
        return _forward_per_image(x, w, stride, padding, parts)
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    kkm = kh * kw * m
    wc = kernel_matrix_t(w)
    x3 = x.reshape(n, c, h * wd)
    bs = chunk_images(n, kkm * h * wd * x.itemsize)
    p = np.empty((bs, h * wd, kkm), dtype=x.dtype)
    y = np.empty((n, m, ho, wo), dtype=x.dtype)
    for b0 in range(0, n, bs):
        b1 = min(n, b0 + bs)
        pb = p[:b1 - b0]
        if c <= SMALL_C:
            _small_gemm_t_nb(x3[b0:b1], wc, pb)
        else:
            matmul(x3[b0:b1].transpose(0, 2, 1), wc, out=pb)   # (H*W x C) @ (C x K*K*M)
        _shift_add_nb(pb, y[b0:b1], h, wd, kh, kw, sh, sw, ph, pw)
    return y


def backward_numba(dy, x, w, stride, padding, need_dx=True):
    n, c, h, wd = x.shape
    parts = fused_parts(x.shape, w.shape, stride, padding, x.dtype)
    if parts:
        return backward_fused(dy, x, w, padding, parts, need_dx)
    parts = per_image_threads(n, x.dtype) if c > SMALL_C else 0
    if parts:
        return _backward_per_image(dy, x, w, stride, padding, parts, need_dx)
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    kkm = kh * kw * m
    wc = kernel_matrix_t(w)
    x3 = x.reshape(n, c, h * wd)
    bs = chunk_images(n, kkm * h * wd * x.itemsize)
    dp = np.empty((bs, h * wd, kkm), dtype=x.dtype)
    t = np.empty((bs, c, kkm), dtype=x.dtype)               # per-image dWc shares
    dwc = np.zeros((c, kkm), dtype=x.dtype)
    dx = np.empty_like(x) if need_dx else None
    for b0 in range(0, n, bs):
        b1 = min(n, b0 + bs)
        dpb, tb = dp[:b1 - b0], t[:b1 - b0]
        _gather_nb(dy[b0:b1], dpb, h, wd, kh, kw, sh, sw, ph, pw)
        if need_dx:                                           # dx[n] = Wc dP^T
            matmul(wc, dpb.transpose(0, 2, 1), out=dx.reshape(n, c, h * wd)[b0:b1])
        matmul(x3[b0:b1], dpb, out=tb)                        # dWc += x[n] dP
        dwc += tb.sum(axis=0) if b1 - b0 > 1 else tb[0]
    dw = np.ascontiguousarray(dwc.reshape(c, kh, kw, m).transpose(3, 0, 1, 2))
    return dx, dw


# --------------------------------------------------------------------------------------------
# Numba, per image on kernels.gemm's loops (see the note in kernels/kn2row.py)
# --------------------------------------------------------------------------------------------
# Each thread takes whole images: P = x[n]^T @ Wc (H*W x KH*KW*M, in L2) with x[n]^T packed
# straight from the NCHW image and Wc packed once, then the shift-add of that one image;
# backward: dP gathered for one image, dx[n] = Wc @ dP^T and dWc_t += x[n] @ dP. Workspace of
# the forward (T threads): ceil(KH*KW*M/NR)*NR * C (packed Wc) + T * (H*W*KH*KW*M (P)
# + ceil(H*W/MR)*MR * C (packed x[n]^T) + Wo*M (a row's accumulator)).


@njit(cache=True, nogil=True)
def _shift_add_image(p, y, n, acc, h, wd, kh, kw, sh, sw, ph, pw):
    """y[n] from one image's P (H*W, KH*KW*M): _shift_add_nb's rows for image n."""
    _, m, ho, wo = y.shape
    pf = p.ravel()
    yf = y.ravel()
    for oh in range(ho):
        _shift_add_row(pf, uintp(0), yf, n, oh, acc, m, ho, wo, h, wd, kh, kw, sh, sw, ph, pw)


@njit(cache=True, nogil=True)
def _gather_image(dy, n, dp, h, wd, kh, kw, sh, sw, ph, pw):
    """dP (H*W, KH*KW*M) = S^T(dy[n]): _gather_nb's rows for image n."""
    _, m, ho, wo = dy.shape
    kkm = kh * kw * m
    dpf = dp.ravel()
    dyf = dy.ravel()
    for ih in range(h):
        _gather_row(dyf, n, dpf, uintp(ih * wd * kkm), ih, m, ho, wo, h, wd, kh, kw, sh, sw,
                    ph, pw)


@njit(parallel=True, cache=True, nogil=True)
def _forward_images(g, x, wcpack, ps, apacks, accs, y, bounds, kh, kw, sh, sw, ph, pw,
                    mr, nr, kc, tiles):
    _, c, h, wd = x.shape
    hw = h * wd
    kkm = ps.shape[2]
    for t in prange(bounds.shape[0] - 1):
        for n in range(bounds[t], bounds[t + 1]):
            pack_a(x[n].reshape(c, hw), True, 0, hw, 0, c, mr, apacks[t])   # A = x[n]^T
            macro_kernel(g, c, apacks[t], wcpack, ps[t], 0, hw, 0, kkm, False, mr, nr, kc,
                         tiles[t])
            _shift_add_image(ps[t], y, n, accs[t], h, wd, kh, kw, sh, sw, ph, pw)


@njit(parallel=True, cache=True, nogil=True)
def _backward_images(g, dy, x, wcapack, dps, apacks, bpacks, need_dx, dx, dwc_parts, bounds,
                     kh, kw, sh, sw, ph, pw, mr, nr, kc, tiles):
    _, c, h, wd = x.shape
    hw = h * wd
    kkm = dps.shape[2]
    for t in prange(bounds.shape[0] - 1):
        for n in range(bounds[t], bounds[t + 1]):
            _gather_image(dy, n, dps[t], h, wd, kh, kw, sh, sw, ph, pw)
            if need_dx:
                pack_b(dps[t], True, 0, kkm, 0, hw, nr, bpacks[t])           # B = dP^T
                macro_kernel(g, kkm, wcapack, bpacks[t], dx[n].reshape(c, hw), 0, c, 0, hw,
                             False, mr, nr, kc, tiles[t])
            pack_a(x[n].reshape(c, hw), False, 0, c, 0, hw, mr, apacks[t])  # A = x[n]
            pack_b(dps[t], False, 0, hw, 0, kkm, nr, bpacks[t])              # B = dP
            macro_kernel(g, hw, apacks[t], bpacks[t], dwc_parts[t], 0, c, 0, kkm,
                         n > bounds[t], mr, nr, kc, tiles[t])


def _forward_per_image(x, w, stride, padding, parts):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    kkm, hw, dt = kh * kw * m, h * wd, x.dtype
    blk = blocking(dt)
    mr, nr = blk["mr"], blk["nr"]
    wcpack = np.empty(panels(kkm, nr) * c, dtype=dt)
    pack_b(kernel_matrix_t(w), False, 0, c, 0, kkm, nr, wcpack)
    ps = np.empty((parts, hw, kkm), dtype=dt)
    apacks = np.empty((parts, panels(hw, mr) * c), dtype=dt)
    accs = np.empty((parts, wo * m), dtype=dt)
    y = np.empty((n, m, ho, wo), dtype=dt)
    _forward_images(isa(), x, wcpack, ps, apacks, accs, y,
                    np.asarray(split_bounds(n, parts, 1)), kh, kw, sh, sw, ph, pw,
                    mr, nr, blk["kc"], scratch_tiles(dt, parts))
    return y


def _backward_per_image(dy, x, w, stride, padding, parts, need_dx=True):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    kkm, hw, dt = kh * kw * m, h * wd, x.dtype
    blk = blocking(dt)
    mr, nr = blk["mr"], blk["nr"]
    wcapack = np.empty(panels(c, mr) * kkm, dtype=dt)
    pack_a(kernel_matrix_t(w), False, 0, c, 0, kkm, mr, wcapack)               # A = Wc
    dps = np.empty((parts, hw, kkm), dtype=dt)
    apacks = np.empty((parts, panels(c, mr) * hw), dtype=dt)
    bpacks = np.empty((parts, max(panels(hw, nr) * kkm, panels(kkm, nr) * hw)), dtype=dt)
    dwc_parts = np.empty((parts, c, kkm), dtype=dt)
    dx = np.empty_like(x) if need_dx else np.empty((0, c, h, wd), dtype=dt)
    _backward_images(isa(), dy, x, wcapack, dps, apacks, bpacks, need_dx, dx, dwc_parts,
                     np.asarray(split_bounds(n, parts, 1)), kh, kw, sh, sw, ph, pw,
                     mr, nr, blk["kc"], scratch_tiles(dt, parts))
    dwc = dwc_parts.sum(axis=0)
    dw = np.ascontiguousarray(dwc.reshape(c, kh, kw, m).transpose(3, 0, 1, 2))
    return (dx if need_dx else None), dw


# --------------------------------------------------------------------------------------------
# Numba, stride 1: the shift-add fused into the GEMM's write-out (see the note in kn2row.py)
# --------------------------------------------------------------------------------------------
# kn2row's fused forward, transposed: the output is extended and CHANNELS-LAST, y_ext^T
# (L x M, output pixel (oh, ow) at row lead + oh*Wp + ow), and tap (i, j)'s partials for input
# pixel q (the M-vector of P's row q) land on row q + s_ij of it, straight from the register
# tile: rows of the tile are pixels, columns output channels. A = x[n]^T over the padded width
# (H*Wp x C, packed once per image) is shared by the taps; B_ij = Wc's M columns of tap (i, j)
# (C x M), packed once per call. The crop writes y[n] channel-major from y_ext^T: the layout
# change of the result, folded into the copy that drops the extra columns, as the chunked
# path's shift-add does. With C < MR the taps are folded into the depth instead (kn2row's
# _forward_folded, shared). The backward is kn2row's (backward_fused): once dP is read in
# place and never stored, its layout, the one thing that told the two apart, is gone.
# Workspace of the forward (T threads):
#     K*K * ceil(M/NR)*NR * C                          each tap's weights, packed as B
#     + T * (C*H*Wp + ceil(H*Wp/MR)*MR * C + L*M)      xpadw, its packed transpose, y_ext^T


@njit(cache=True, nogil=True)
def _crop_ext_t(yext_t, lead, wp, y, n):
    """y[n, m, oh, ow] = y_ext^T[lead + oh*Wp + ow, m]."""
    _, m, ho, wo = y.shape
    yf = y.ravel()
    ef = yext_t.ravel()
    for oh in range(ho):
        for mm in range(m):
            d = uintp(((n * m + mm) * ho + oh) * wo)
            s = uintp((lead + oh * wp) * m + mm)
            for ow in range(wo):
                yf[d + uintp(ow)] = ef[s + uintp(ow * m)]


@njit(parallel=True, cache=True, nogil=True)
def _forward_fused_images(g, x, wpacks, a_offs, b_offs, c_offs, pw, lead, y, bounds, xpads,
                          apacks, yexts, mr, nr, kc, tiles):
    """Thread t, for its images n: y_ext^T = sum over taps of x^T @ Wc_ij, each tap's tiles
    added at its row shift (macro_kernel_taps), then y[n] = y_ext^T cropped, channel-major."""
    _, c, h, wd = x.shape
    m = y.shape[1]
    wp = wd + 2 * pw
    for t in prange(bounds.shape[0] - 1):
        ef = yexts[t].ravel()
        for n in range(bounds[t], bounds[t + 1]):
            pad_image(x, n, 0, pw, xpads[t].ravel())
            pack_a(xpads[t], True, 0, h * wp, 0, c, mr, apacks[t])       # A = xpadw^T
            for e in range(ef.shape[0]):
                ef[e] = 0.0
            macro_kernel_taps(g, c, apacks[t], a_offs, wpacks, b_offs, yexts[t], c_offs,
                              h * wp, m, mr, nr, kc, tiles[t])
            _crop_ext_t(yexts[t], lead, wp, y, n)


def _forward_fused(x, w, padding, parts):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    dt = x.dtype
    blk = blocking(dt)
    mr, nr = blk["mr"], blk["nr"]
    if c < mr:
        return kn2row._forward_folded(x, w, padding, parts)
    wp, ho, lead, length, shifts = fused_geometry(h, wd, kh, kw, padding)
    taps = kh * kw
    pb = panels(m, nr) * c
    wc = kernel_matrix_t(w)
    wpacks = np.empty(taps * pb, dtype=dt)
    for t in range(taps):                                  # B_ij = Wc[:, tap ij] (C x M)
        pack_b(wc, False, 0, c, t * m, m, nr, wpacks[t * pb:])
    del wc  # a temporary: gone before the per-thread buffers (workspace_bytes_numba)
    xpads = np.zeros((parts, c, h * wp), dtype=dt)
    apacks = np.empty((parts, panels(h * wp, mr) * c), dtype=dt)
    yexts = np.empty((parts, length, m), dtype=dt)
    y = np.empty((n, m, ho, wp - kw + 1), dtype=dt)
    _forward_fused_images(isa(), x, wpacks, np.zeros(taps, np.int64),
                          np.arange(taps, dtype=np.int64) * pb, shifts * m, padding[1], lead,
                          y, split_bounds(n, parts, 1), xpads, apacks, yexts, mr, nr,
                          blk["kc"], scratch_tiles(dt, parts))
    return y
