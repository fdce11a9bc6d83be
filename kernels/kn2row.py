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
import numba
import numpy as np

from ._common import out_size, taps
from ._numba import njit, prange, uintp, valid_range  # sets the threading layer
from .gemm import (
    blocking,
    isa,
    macro_kernel,
    matmul,
    pack_a,
    pack_b,
    panels,
    scratch_tiles,
    split_bounds,
    uses_numba,
)


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
    """The Numba forward's buffers: the kernel matrix + a chunk of images' partial maps, or
    (per-image path, T threads) the packed Wk + T * (one image's P + its packed x[n])."""
    n, _, h, wd = x_shape
    m, c, kh, kw = w_shape
    dtype = np.float32 if itemsize == 4 else np.float64
    parts = _per_image_parts(x_shape, w_shape, dtype)
    if parts:
        blk = blocking(dtype)
        return itemsize * (panels(kh * kw * m, blk["mr"]) * c
                           + parts * (kh * kw * m * h * wd + panels(h * wd, blk["nr"]) * c))
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


@njit(cache=True, nogil=True)
def _shift_add_plane(pf, pbase, yf, ybase, mm, m, ho, wo, h, wd, kh, kw, sh, sw, ph, pw):
    """One output plane y[n, mm] (flat at yf[ybase:]) = sum over taps of the clipped, strided
    shift of P_ij[mm], one image's partial maps flat at pf[pbase:] (KH*KW*M, H*W). Row by
    row: the row stays in L1 while the K*K taps add into it."""
    hw = h * wd
    for oh in range(ho):
        row = ybase + uintp(oh * wo)
        for ow in range(wo):
            yf[row + uintp(ow)] = 0.0
        for i in range(kh):
            ih = oh * sh + i - ph
            if ih < 0 or ih >= h:
                continue
            for j in range(kw):
                lo, hi = valid_range(j, pw, sw, wd, wo)
                # P_ij[mm, ih, lo*sw + j - pw], the first input this row reads
                src = pbase + uintp(((i * kw + j) * m + mm) * hw + ih * wd + lo * sw + j - pw)
                dst = row + uintp(lo)
                if sw == 1:  # unit stride: a contiguous, vectorisable row add
                    for t in range(hi - lo):
                        yf[dst + uintp(t)] += pf[src + uintp(t)]
                else:
                    for t in range(hi - lo):
                        yf[dst + uintp(t)] += pf[src + uintp(t * sw)]


@njit(parallel=True, cache=True, nogil=True)
def _shift_add_nb(p, y, kh, kw, sh, sw, ph, pw, h, wd):
    """y[b, m] = sum_ij clipped, strided shift of P_ij[b, m]; one (b, m) plane per iteration.

    p: (bs, KH*KW*M, H*W), y: (bs, M, Ho, Wo), both C-contiguous. Each iteration writes only
    its own output plane.
    """
    bs, m, ho, wo = y.shape
    kkm_hw = kh * kw * m * h * wd
    pf = p.ravel()
    yf = y.ravel()
    for job in prange(bs * m):
        _shift_add_plane(pf, uintp((job // m) * kkm_hw), yf, uintp(job * ho * wo), job % m,
                         m, ho, wo, h, wd, kh, kw, sh, sw, ph, pw)


@njit(cache=True, nogil=True)
def _gather_map(dyf, dybase, dpf, dst0, r, m, ho, wo, h, wd, kh, kw, sh, sw, ph, pw):
    """One partial-map gradient dP[r] (r = tap*M + m; flat at dpf[dst0:], H*W) from one
    image's dy (flat at dyf[dybase:], M x Ho x Wo), written whole: zeros where no output
    reads."""
    tap = r // m
    mm = r % m
    i = tap // kw
    j = tap % kw
    lo, hi = valid_range(j, pw, sw, wd, wo)
    for ih in range(h):
        dst = dst0 + uintp(ih * wd)
        for iw in range(wd):
            dpf[dst + uintp(iw)] = 0.0
        a = ih + ph - i  # = oh*sh when output row oh reads input row ih through tap i
        if a < 0 or a % sh != 0 or a // sh >= ho:
            continue
        oh = a // sh
        src = dybase + uintp((mm * ho + oh) * wo + lo)
        d0 = dst + uintp(lo * sw + j - pw)
        if sw == 1:
            for t in range(hi - lo):
                dpf[d0 + uintp(t)] = dyf[src + uintp(t)]
        else:
            for t in range(hi - lo):
                dpf[d0 + uintp(t * sw)] = dyf[src + uintp(t)]


@njit(parallel=True, cache=True, nogil=True)
def _gather_nb(dy, dp, kh, kw, sh, sw, ph, pw, h, wd):
    """dP = S^T(dy) for a chunk: dp (bs, KH*KW*M, H*W) from dy (bs, M, Ho, Wo).

    One (b, tap, m) map per iteration, written whole, so no two iterations write the same
    element.
    """
    bs, m, ho, wo = dy.shape
    kkm = kh * kw * m
    dpf = dp.ravel()
    dyf = dy.ravel()
    for job in prange(bs * kkm):
        _gather_map(dyf, uintp((job // kkm) * m * ho * wo), dpf, uintp(job * h * wd),
                    job % kkm, m, ho, wo, h, wd, kh, kw, sh, sw, ph, pw)


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
    parts = _per_image_parts(x.shape, w.shape, x.dtype)
    if parts:
        return _forward_per_image(x, w, stride, padding, parts)
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
    parts = _per_image_parts(x.shape, w.shape, x.dtype)
    if parts:
        return _backward_per_image(dy, x, w, stride, padding, parts)
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


# --------------------------------------------------------------------------------------------
# Numba, per image on kernels.gemm's loops (shared by kn2row, kn2row-aa and kn2col)
# --------------------------------------------------------------------------------------------
# When kernels.gemm is the fast GEMM here (gemm.uses_numba) and there are at least as many
# images as threads, each thread takes whole images, one at a time, as the Numba im2col
# does: every buffer of one image (its partial maps, its dP) stays in the core's L2 between
# the GEMM that writes it and the shift-add (or GEMM) that reads it, the GEMMs call
# kernels.gemm's loops 1-2 (macro_kernel) on operands packed once per call (the weights) or
# per image, and the shift-add runs in the same thread right after. One parallel launch per
# call, not one per chunk or tap; each thread writes only its own images' y / dx and sums
# its own dW: nothing races.
def per_image_threads(n, dtype):
    """Threads for the per-image path, or 0 when it does not apply (BLAS GEMM, few images)."""
    threads = numba.get_num_threads()
    if not uses_numba(dtype) or n < threads:
        return 0
    return threads


# One image's partial maps must stay in the core's L2 (1 MiB) for the per-image path to pay:
# the wide benchmark layer's (64 x 56 x 56, 3x3: 7.2 MB an image) ran 1.3x slower per image
# than the chunked path above.
PER_THREAD_IMAGE_BYTES = 1 << 20


def _per_image_parts(x_shape, w_shape, dtype):
    n, c, h, wd = x_shape
    m, _, kh, kw = w_shape
    if c <= SMALL_C or kh * kw * m * h * wd * np.dtype(dtype).itemsize > PER_THREAD_IMAGE_BYTES:
        return 0
    return per_image_threads(n, dtype)


@njit(cache=True, nogil=True)
def pad_image(x, n, ph, pw, xpad):
    """The interior of xpad (C planes of Hp x Wp, flat) = x[n]; its zero border (and tail)
    is written once, by the caller."""
    _, c_in, h, wd = x.shape
    hp, wp = h + 2 * ph, wd + 2 * pw
    xf = x.ravel()
    for c in range(c_in):
        for ih in range(h):
            src = uintp(((n * c_in + c) * h + ih) * wd)
            dst = uintp((c * hp + ih + ph) * wp + pw)
            for iw in range(wd):
                xpad[dst + uintp(iw)] = xf[src + uintp(iw)]


@njit(cache=True, nogil=True)
def _shift_add_image(p, y, n, kh, kw, sh, sw, ph, pw, h, wd):
    """y[n] = sum_ij clipped, strided shift of P_ij; p (KH*KW*M, H*W) is one image's maps."""
    _, m, ho, wo = y.shape
    pf = p.ravel()
    yf = y.ravel()
    for mm in range(m):
        _shift_add_plane(pf, uintp(0), yf, uintp((n * m + mm) * ho * wo), mm, m, ho, wo, h,
                         wd, kh, kw, sh, sw, ph, pw)


@njit(cache=True, nogil=True)
def _gather_image(dy, n, dp, kh, kw, sh, sw, ph, pw, h, wd):
    """dP (KH*KW*M, H*W) = S^T(dy[n]), zero where no output reads."""
    _, m, ho, wo = dy.shape
    dpf = dp.ravel()
    dyf = dy.ravel()
    for r in range(kh * kw * m):
        _gather_map(dyf, uintp(n * m * ho * wo), dpf, uintp(r * h * wd), r, m, ho, wo, h, wd,
                    kh, kw, sh, sw, ph, pw)


@njit(parallel=True, cache=True, nogil=True)
def _forward_images(g, x, wkpack, ps, bpacks, y, bounds, kh, kw, sh, sw, ph, pw,
                    mr, nr, kc, tiles):
    """Thread t, for its images n: P = Wk @ x[n] (in L2), then y[n] = shift-add of P."""
    _, c, h, wd = x.shape
    hw = h * wd
    kkm = ps.shape[1]
    for t in prange(bounds.shape[0] - 1):
        for n in range(bounds[t], bounds[t + 1]):
            xn = x[n].reshape(c, hw)
            pack_b(xn, False, 0, c, 0, hw, nr, bpacks[t])
            macro_kernel(g, c, wkpack, bpacks[t], ps[t], 0, kkm, 0, hw, False, mr, nr, kc,
                         tiles[t])
            _shift_add_image(ps[t], y, n, kh, kw, sh, sw, ph, pw, h, wd)


@njit(parallel=True, cache=True, nogil=True)
def _backward_images(g, dy, x, wktpack, dps, apacks, bpacks, xtpacks, dx, dwk_parts, bounds,
                     kh, kw, sh, sw, ph, pw, mr, nr, kc, tiles):
    """Thread t, for its images n: dP = S^T(dy[n]); dx[n] = Wk^T @ dP; dWk_t += dP @ x[n]^T."""
    _, c, h, wd = x.shape
    hw = h * wd
    kkm = dps.shape[1]
    for t in prange(bounds.shape[0] - 1):
        for n in range(bounds[t], bounds[t + 1]):
            _gather_image(dy, n, dps[t], kh, kw, sh, sw, ph, pw, h, wd)
            pack_b(dps[t], False, 0, kkm, 0, hw, nr, bpacks[t])               # B = dP
            macro_kernel(g, kkm, wktpack, bpacks[t], dx[n].reshape(c, hw), 0, c, 0, hw,
                         False, mr, nr, kc, tiles[t])
            pack_a(dps[t], False, 0, kkm, 0, hw, mr, apacks[t])               # A = dP
            pack_b(x[n].reshape(c, hw), True, 0, hw, 0, c, nr, xtpacks[t])    # B = x[n]^T
            macro_kernel(g, hw, apacks[t], xtpacks[t], dwk_parts[t], 0, kkm, 0, c,
                         n > bounds[t], mr, nr, kc, tiles[t])


def _forward_per_image(x, w, stride, padding, parts):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    kkm, hw = kh * kw * m, h * wd
    blk = blocking(x.dtype)
    mr, nr = blk["mr"], blk["nr"]
    wkpack = np.empty(panels(kkm, mr) * c, dtype=x.dtype)
    pack_a(kernel_matrix(w), False, 0, kkm, 0, c, mr, wkpack)
    ps = np.empty((parts, kkm, hw), dtype=x.dtype)
    bpacks = np.empty((parts, panels(hw, nr) * c), dtype=x.dtype)
    y = np.empty((n, m, ho, wo), dtype=x.dtype)
    _forward_images(isa(), x, wkpack, ps, bpacks, y, np.asarray(split_bounds(n, parts, 1)),
                    kh, kw, sh, sw, ph, pw, mr, nr, blk["kc"], scratch_tiles(x.dtype, parts))
    return y


def _backward_per_image(dy, x, w, stride, padding, parts):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    kkm, hw = kh * kw * m, h * wd
    dt = x.dtype
    blk = blocking(dt)
    mr, nr = blk["mr"], blk["nr"]
    wktpack = np.empty(panels(c, mr) * kkm, dtype=dt)
    pack_a(kernel_matrix(w), True, 0, c, 0, kkm, mr, wktpack)                 # A = Wk^T
    dps = np.empty((parts, kkm, hw), dtype=dt)
    apacks = np.empty((parts, panels(kkm, mr) * hw), dtype=dt)
    bpacks = np.empty((parts, panels(hw, nr) * kkm), dtype=dt)
    xtpacks = np.empty((parts, panels(c, nr) * hw), dtype=dt)
    dwk_parts = np.empty((parts, kkm, c), dtype=dt)
    dx = np.empty_like(x)
    _backward_images(isa(), dy, x, wktpack, dps, apacks, bpacks, xtpacks, dx, dwk_parts,
                     np.asarray(split_bounds(n, parts, 1)), kh, kw, sh, sw, ph, pw,
                     mr, nr, blk["kc"], scratch_tiles(dt, parts))
    dwk = dwk_parts.sum(axis=0)
    dw = np.ascontiguousarray(dwk.reshape(kh, kw, m, c).transpose(2, 3, 0, 1))
    return dx, dw
