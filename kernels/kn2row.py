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

The NumPy functions are the readable reference. The Numba ones take one of three paths:
  - stride 1 ("fused", the last section): the shift-add happens in the GEMM's write-out, each
    tap's register tiles added into an extended output at the tap's offset, so the partial
    maps never exist; the backward reads dP = S^T(dy) in place through a table of row
    offsets instead of gathering it. Workspace: per thread a width-padded image and one
    extended output (MNIST conv2, 2 threads: 0.31 MiB), formulas in that section.
  - threads taking whole images whose partial maps fit L2 (kernels.gemm's loops, per image);
  - otherwise the GEMMs on a chunk of images and one parallel shift-add (or gather) pass per
    chunk over independent output planes (the note above forward_numba's kernels).
workspace_bytes counts the NumPy reference's buffers, workspace_bytes_numba the Numba path's.
"""
import numba
import numpy as np

from ._common import out_size, taps
from ._numba import njit, prange, uintp, valid_range  # sets the threading layer
from .gemm import (
    blocking,
    isa,
    macro_kernel,
    macro_kernel_rows_b,
    macro_kernel_rows_d,
    macro_kernel_taps,
    matmul,
    pack_a,
    pack_b,
    panels,
    scratch_tiles,
    split_bounds,
    tile_shape,
    uses_numba,
)
from .windows import crop, dz_layout, pack_dy_t, pad_image, panel_offsets, spread_dy


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
    parts = fused_parts(x_shape, w_shape, stride, padding, dtype)
    if parts:
        return fused_workspace_bytes(x_shape, w_shape, padding, itemsize, parts, False)
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
    parts = fused_parts(x.shape, w.shape, stride, padding, x.dtype)
    if parts:
        return _forward_fused(x, w, padding, parts)
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


def backward_numba(dy, x, w, stride, padding, need_dx=True):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    parts = fused_parts(x.shape, w.shape, stride, padding, x.dtype)
    if parts:
        return backward_fused(dy, x, w, padding, parts, need_dx)
    parts = _per_image_parts(x.shape, w.shape, x.dtype)
    if parts:
        return _backward_per_image(dy, x, w, stride, padding, parts, need_dx)
    kkm = kh * kw * m
    wk = kernel_matrix(w)
    wkt = wk.T
    x3 = x.reshape(n, c, h * wd)
    bs = chunk_images(n, kkm * h * wd * x.itemsize)
    dp = np.empty((bs, kkm, h * wd), dtype=x.dtype)
    t = np.empty((bs, kkm, c), dtype=x.dtype)                      # per-image dWk shares
    dwk = np.zeros((kkm, c), dtype=x.dtype)
    dx = np.empty_like(x) if need_dx else None
    for b0 in range(0, n, bs):
        b1 = min(n, b0 + bs)
        dpb, tb = dp[:b1 - b0], t[:b1 - b0]
        _gather_nb(dy[b0:b1], dpb, kh, kw, sh, sw, ph, pw, h, wd)  # dP = S^T(dy)
        if need_dx:
            matmul(wkt, dpb, out=dx.reshape(n, c, h * wd)[b0:b1])  # dx = Wk^T dP
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
def _backward_images(g, dy, x, wktpack, dps, apacks, bpacks, xtpacks, need_dx, dx, dwk_parts,
                     bounds, kh, kw, sh, sw, ph, pw, mr, nr, kc, tiles):
    """Thread t, for its images n: dP = S^T(dy[n]); dx[n] = Wk^T @ dP (need_dx);
    dWk_t += dP @ x[n]^T."""
    _, c, h, wd = x.shape
    hw = h * wd
    kkm = dps.shape[1]
    for t in prange(bounds.shape[0] - 1):
        for n in range(bounds[t], bounds[t + 1]):
            _gather_image(dy, n, dps[t], kh, kw, sh, sw, ph, pw, h, wd)
            if need_dx:
                pack_b(dps[t], False, 0, kkm, 0, hw, nr, bpacks[t])           # B = dP
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


def _backward_per_image(dy, x, w, stride, padding, parts, need_dx=True):
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
    dx = np.empty_like(x) if need_dx else np.empty((0, c, h, wd), dtype=dt)
    _backward_images(isa(), dy, x, wktpack, dps, apacks, bpacks, xtpacks, need_dx, dx,
                     dwk_parts,
                     np.asarray(split_bounds(n, parts, 1)), kh, kw, sh, sw, ph, pw,
                     mr, nr, blk["kc"], scratch_tiles(dt, parts))
    dwk = dwk_parts.sum(axis=0)
    dw = np.ascontiguousarray(dwk.reshape(kh, kw, m, c).transpose(2, 3, 0, 1))
    return (dx if need_dx else None), dw


# --------------------------------------------------------------------------------------------
# Numba, stride 1: the shift-add fused into the GEMM's write-out (shared with kn2col)
# --------------------------------------------------------------------------------------------
# The per-image path above writes one image's K*K partial maps (MNIST conv2: 441 KiB) and reads
# them back in the shift-add; its backward gathers dP (as big), then packs it twice. Profile,
# MNIST conv2, one thread, all 64 images: forward GEMM 5.3 ms + shift-add 3.3 ms; backward
# gather 3.9 + packing dP 3.1 + GEMMs 10.3 ms: 40% of the time moved partial maps around.
# At stride 1 none of those buffers is needed:
#
#   forward  Lay the image out over the padded WIDTH (C x H*Wp, xpadw: pw zeros at both ends
#            of every row) and the output over an extended grid of Wp-wide rows, y_ext
#            (M x L, output pixel (oh, ow) at column lead + oh*Wp + ow; ow >= Wo are extra
#            columns, dropped by the crop). Then tap (i, j)'s partial at input pixel
#            q = ih*Wp + iw' lands on output column q + s_ij, s_ij = (ph - i)*Wp - j, for
#            every q: no clipping is needed, because a partial that belongs to no output
#            falls into an extra column (iw' - j < 0 wraps to the previous row's last KW-1)
#            or into the margins of y_ext (lead columns before, enough after). So
#                y_ext[:, lead + s_ij + q] += (W_ij @ xpadw)[:, q]     for every tap
#            is ONE macro-kernel call (kernels.gemm.macro_kernel_taps) whose register tiles
#            are added into y_ext at the tap's offset as they leave the registers: the
#            partial maps never exist. B (xpadw, packed once per image) is shared by the
#            K*K taps; A is the tap's M x C weights, packed once per call.
#   dx       = Wk^T @ dP, with dP = S^T(dy) never gathered: dP[(ij, m), q] =
#            dz[m*lz + lead_z + q + s_ij], where dz is dy spread over Wp-wide rows with zero
#            margins (windows.spread_dy). The GEMM reads dP's rows through a table of those
#            offsets (macro_kernel_rows_b, depth K*K*M): no gather, no dP, no packing. Fewer
#            input channels than MR (a first layer): a direct loop (_dx_small_c) instead, as
#            the GEMM would compute MR rows for every one it keeps.
#   dW       dW_ij = dP_ij @ x^T = dY @ S_ij(x)^T: the same sum with the shift moved onto x,
#            dWk^T[(ij, c), m] = sum_o xpad[c, o + i*Wp + j] * dY[m, o]: A's rows read in
#            place in the zero-padded image, stepped along over the kept pixels only, o =
#            oh*Wp + ow (macro_kernel_rows_d), B = dy[n]^T packed once (windows.pack_dy_t),
#            depth Ho*Wo. (dP @ x^T would have C columns: a fraction of the 64-wide tile for
#            C < 64, a sixty-fourth for a first layer.)
#   C < MR   The forward's K = C is then too short: every tile would be a read-modify-write
#            of y_ext for one or two multiply-adds. The taps are folded into the depth
#            instead (_forward_folded: y_ext = W_fold @ S(x), depth K*K*C, the shifted rows
#            of the zero-padded image read in place), so each tile is written once.
#
# Threads take whole images as in the per-image path; each writes only its own images' y /
# dx and sums its own dW. Taken at stride 1 when the KW-1 extra columns are at most a third
# of Wp, whatever the image size: nothing K*K times bigger than the image is held.
# Workspace of the forward (T threads):
#     K*K * ceil(M/MR)*MR * C                          the weights, one packed A per tap
#     + T * (C*H*Wp + ceil(H*Wp/NR)*NR * C + M*L)      xpadw, its packed copy, y_ext
#     L = lead + max(H + ph, Ho) * Wp,  lead = max(0, (KH-1-ph)*Wp + KW-1)
# (MNIST conv2, 2 threads: 0.31 MiB against the per-image path's 0.99 MiB); C < MR:
#     ceil(M/MR)*MR * K*K*C + T * (C*Hp*Wp + KW + VL + M*Ho*Wp).
# The backward holds per thread xpad (C*Hp*Wp + KW + VL), the packed dY^T, dz (M rows of
# lz numbers), dx_ext (C*H*Wp) and a dW^T sum (K*K*C x M), plus Wk^T packed once (C >= MR).


def fused_parts(x_shape, w_shape, stride, padding, dtype):
    """Threads for the fused stride-1 path, or 0 when it does not apply."""
    wp = x_shape[3] + 2 * padding[1]
    if tuple(stride) != (1, 1) or 3 * (w_shape[3] - 1) > wp:
        return 0
    return per_image_threads(x_shape[0], dtype)


def fused_geometry(h, wd, kh, kw, padding):
    """(Wp, Ho, lead, L, shifts): y_ext's layout; shifts[i*KW + j] = lead + (ph - i)*Wp - j is
    where tap (i, j) writes the partial of input column 0 (all >= 0)."""
    ph, pw = padding
    wp, ho = wd + 2 * pw, h + 2 * ph - kh + 1
    lead = max(0, (kh - 1 - ph) * wp + kw - 1)
    length = lead + max(h + ph, ho) * wp
    shifts = (lead + (ph - np.arange(kh)[:, None]) * wp - np.arange(kw)).ravel()
    return wp, ho, lead, length, shifts.astype(np.int64)


def fused_workspace_bytes(x_shape, w_shape, padding, itemsize, parts, transposed):
    """The fused forward's buffers (the note above); `transposed`: kn2col's (packed tiles
    the other way round: x^T in MR panels, each tap's weights in NR panels)."""
    _, c, h, wd = x_shape
    m, _, kh, kw = w_shape
    blk = blocking(np.float32 if itemsize == 4 else np.float64)
    wp, ho, _, length, _ = fused_geometry(h, wd, kh, kw, padding)
    if c < blk["mr"]:  # taps folded into the depth
        hp = h + 2 * padding[0]
        return itemsize * (panels(m, blk["mr"]) * kh * kw * c
                           + parts * (c * hp * wp + kw + blk["vl"] + m * ho * wp))
    mr, nr = (blk["nr"], blk["mr"]) if transposed else (blk["mr"], blk["nr"])
    return itemsize * (kh * kw * panels(m, mr) * c
                       + parts * (c * h * wp + panels(h * wp, nr) * c + m * length))


@njit(cache=True, nogil=True)
def _crop_ext(yext, lead, wp, y, n):
    """y[n, m, oh, ow] = y_ext[m, lead + oh*Wp + ow]."""
    _, m, ho, wo = y.shape
    yf = y.ravel()
    ef = yext.ravel()
    ld = yext.shape[1]
    for mm in range(m):
        for oh in range(ho):
            s = uintp(mm * ld + lead + oh * wp)
            d = uintp(((n * m + mm) * ho + oh) * wo)
            for ow in range(wo):
                yf[d + uintp(ow)] = ef[s + uintp(ow)]


@njit(parallel=True, cache=True, nogil=True)
def _forward_fused_images(g, x, wpacks, a_offs, b_offs, c_offs, pw, lead, y, bounds, xpads,
                          bpacks, yexts, mr, nr, kc, tiles):
    """Thread t, for its images n: y_ext = sum over taps of W_ij @ xpadw, each tap's tiles
    added at its shift (macro_kernel_taps), then y[n] = y_ext cropped."""
    _, c, h, wd = x.shape
    m = y.shape[1]
    wp = wd + 2 * pw
    for t in prange(bounds.shape[0] - 1):
        ef = yexts[t].ravel()
        for n in range(bounds[t], bounds[t + 1]):
            pad_image(x, n, 0, pw, xpads[t].ravel())
            pack_b(xpads[t], False, 0, c, 0, h * wp, nr, bpacks[t])
            for e in range(ef.shape[0]):
                ef[e] = 0.0
            macro_kernel_taps(g, c, wpacks, a_offs, bpacks[t], b_offs, yexts[t], c_offs, m,
                              h * wp, mr, nr, kc, tiles[t])
            _crop_ext(yexts[t], lead, wp, y, n)


@njit(parallel=True, cache=True, nogil=True)
def _forward_folded_images(g, x, wpack, tab, ph, pw, y, bounds, xpads, yexts, mr, nr, kc,
                           tiles):
    """Thread t, for its images n: y_ext (M x Ho*Wp) = W_fold @ B, B's row (ij, c) read in
    place in the zero-padded image from c*Hp*Wp + i*Wp + j; y[n] = y_ext cropped."""
    m, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    wp = x.shape[3] + 2 * pw
    for t in prange(bounds.shape[0] - 1):
        for n in range(bounds[t], bounds[t + 1]):
            pad_image(x, n, ph, pw, xpads[t])
            macro_kernel_rows_b(g, tab.shape[0], wpack, xpads[t], tab, yexts[t], m, ho * wp,
                                False, mr, nr, kc, tiles[t])
            crop(yexts[t], wp, 0, m * ho, wo, y, n)


def _forward_folded(x, w, padding, parts):
    """The fused forward for C < MR: the taps folded into the GEMM's depth (the note above)."""
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    ph, pw = padding
    dt = x.dtype
    hp, wp = h + 2 * ph, wd + 2 * pw
    ho, wo = hp - kh + 1, wp - kw + 1
    blk = blocking(dt)
    mr, nr, vl = blk["mr"], blk["nr"], blk["vl"]
    kkc = kh * kw * c
    wpack = np.empty(panels(m, mr) * kkc, dtype=dt)        # A[m, (ij, c)] = w[m, c, i, j]
    pack_a(np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(m, kkc), False, 0, m, 0, kkc,
           mr, wpack)
    xpads = np.zeros((parts, c * hp * wp + kw + vl), dtype=dt)
    yexts = np.empty((parts, m, ho * wp), dtype=dt)
    y = np.empty((n, m, ho, wo), dtype=dt)
    _forward_folded_images(isa(), x, wpack, _x_rows(c, kh, kw, hp, wp, 1), ph, pw, y,
                           split_bounds(n, parts, 1), xpads, yexts, mr, nr, blk["kc"],
                           scratch_tiles(dt, parts))
    return y


def _x_rows(c, kh, kw, hp, wp, rows):
    """Row (ij, c) of the zero-padded image seen as a matrix of windows: c*Hp*Wp + i*Wp + j,
    padded with its last entry to whole panels of `rows`."""
    tap_off = (np.arange(kh)[:, None] * wp + np.arange(kw)).ravel()
    tab = (tap_off[:, None] + np.arange(c) * (hp * wp)).ravel().astype(np.int64)
    return np.concatenate([tab, np.full(panels(tab.size, rows) - tab.size, tab[-1])])


def _forward_fused(x, w, padding, parts):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    dt = x.dtype
    if c < blocking(dt)["mr"]:
        return _forward_folded(x, w, padding, parts)
    wp, ho, lead, length, shifts = fused_geometry(h, wd, kh, kw, padding)
    blk = blocking(dt)
    mr, nr = blk["mr"], blk["nr"]
    taps = kh * kw
    pa = panels(m, mr) * c
    wk = kernel_matrix(w)
    wpacks = np.empty(taps * pa, dtype=dt)
    for t in range(taps):                                  # A_ij = W_ij (M x C), packed
        pack_a(wk, False, t * m, m, 0, c, mr, wpacks[t * pa:])
    del wk  # a temporary: gone before the per-thread buffers (workspace_bytes_numba)
    xpads = np.zeros((parts, c, h * wp), dtype=dt)
    bpacks = np.empty((parts, panels(h * wp, nr) * c), dtype=dt)
    yexts = np.empty((parts, m, length), dtype=dt)
    y = np.empty((n, m, ho, wd + 2 * padding[1] - kw + 1), dtype=dt)
    _forward_fused_images(isa(), x, wpacks, np.arange(taps, dtype=np.int64) * pa,
                          np.zeros(taps, np.int64), shifts, padding[1], lead, y,
                          split_bounds(n, parts, 1), xpads, bpacks, yexts, mr, nr, blk["kc"],
                          scratch_tiles(dt, parts))
    return y


@njit(cache=True, nogil=True)
def _dx_small_c(wk, dz, dtab, dxext):
    """dx_ext[c] = sum_r Wk[r, c] * dz[dtab[r]:][:H*Wp]: Wk^T @ dP for a few channels, as
    vectorised row updates, four rows of dP per pass over the dx row (in L1)."""
    kkm, c_in = wk.shape
    q_len = dxext.shape[1]
    df = dxext.ravel()
    for c in range(c_in):
        row = uintp(c * q_len)
        for q in range(q_len):
            df[row + uintp(q)] = 0.0
        r4 = kkm - kkm % 4
        for r in range(0, r4, 4):
            w0, w1, w2, w3 = wk[r, c], wk[r + 1, c], wk[r + 2, c], wk[r + 3, c]
            b0, b1 = uintp(dtab[r]), uintp(dtab[r + 1])
            b2, b3 = uintp(dtab[r + 2]), uintp(dtab[r + 3])
            for q in range(q_len):
                u = uintp(q)
                df[row + u] += (w0 * dz[b0 + u] + w1 * dz[b1 + u]) + (
                    w2 * dz[b2 + u] + w3 * dz[b3 + u])
        for r in range(r4, kkm):
            wv = wk[r, c]
            base = uintp(dtab[r])
            for q in range(q_len):
                df[row + uintp(q)] += wv * dz[base + uintp(q)]


@njit(parallel=True, cache=True, nogil=True)
def _backward_fused_images(g, dy, x, wk, wktpack, xtab, dsteps, dtab, ph, pw, lead, lz,
                           need_dx, dx, dwt_parts, small, bounds, xpads, dypacks, dzs, dxexts,
                           mr, nr, mra, nra, kc, tiles):
    """Thread t, for its images n: dWk^T_t += S(x[n]) @ dY^T over the kept pixels (depth
    steps dsteps); dx[n] = Wk^T @ dP, dP's rows read in place in dz (need_dx)."""
    c, h, wd = x.shape[1], x.shape[2], x.shape[3]
    m, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    kkc = dwt_parts.shape[1]
    wp = wd + 2 * pw
    for t in prange(bounds.shape[0] - 1):
        for n in range(bounds[t], bounds[t + 1]):
            pad_image(x, n, ph, pw, xpads[t])
            pack_dy_t(dy, n, wo, nra, dypacks[t])
            macro_kernel_rows_d(g, ho * wo, xpads[t], xtab, dsteps, dypacks[t], dwt_parts[t],
                                kkc, m, n > bounds[t], mra, nra, kc, tiles[t])
            if not need_dx:
                continue
            spread_dy(dy, n, wp, lead, lz, dzs[t])
            if small:
                _dx_small_c(wk, dzs[t], dtab, dxexts[t])
            else:
                macro_kernel_rows_b(g, dtab.shape[0], wktpack, dzs[t], dtab, dxexts[t], c,
                                    h * wp, False, mr, nr, kc, tiles[t])
            crop(dxexts[t], wp, pw, c * h, wd, dx, n)


def backward_fused(dy, x, w, padding, parts, need_dx=True):
    """(dx, dw) on the fused stride-1 path (kn2row's and kn2col's: with dP never stored, its
    layout, the one difference between the two, is gone)."""
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    ph, pw = padding
    hp, wp = h + 2 * ph, wd + 2 * pw
    ho, wo = dy.shape[2], dy.shape[3]
    dt = x.dtype
    blk = blocking(dt)
    mr, nr, vl = blk["mr"], blk["nr"], blk["vl"]
    mra, nra = tile_shape(dt, "rows")
    taps, kkm = kh * kw, kh * kw * m
    xtab = _x_rows(c, kh, kw, hp, wp, mra)  # A of the dW GEMM: windows of xpad, in place
    dsteps = panel_offsets(ho, wo, wp, 0, 1)  # its depth: the kept pixels, oh*Wp + ow
    # dP's rows in dz: row (ij, m) = dz[m*lz + lead + (ph - i)*Wp - j:]
    lead, lz = dz_layout(kh, kw, wp, ph, h, ho, vl)
    shift = (ph * wp - np.arange(kh)[:, None] * wp - np.arange(kw)).ravel()
    dtab = (shift[:, None] + lead + np.arange(m) * lz).ravel().astype(np.int64)
    wk = kernel_matrix(w)
    small = c < mr
    wktpack = np.empty(0 if small else panels(c, mr) * kkm, dtype=dt)
    if not small:
        pack_a(wk, True, 0, c, 0, kkm, mr, wktpack)        # A = Wk^T (C x K*K*M)
    xpads = np.zeros((parts, c * hp * wp + kw + vl), dtype=dt)
    dypacks = np.zeros((parts, panels(m, nra) * ho * wo), dtype=dt)
    dzs = np.zeros((parts, m * lz if need_dx else 0), dtype=dt)
    dxexts = np.empty((parts, c, h * wp if need_dx else 0), dtype=dt)
    dwt_parts = np.empty((parts, taps * c, m), dtype=dt)
    dx = np.empty_like(x) if need_dx else np.empty((0, c, h, wd), dtype=dt)
    _backward_fused_images(isa(), dy, x, wk, wktpack, xtab, dsteps, dtab, ph, pw, lead, lz,
                           need_dx, dx, dwt_parts, small, split_bounds(n, parts, 1), xpads,
                           dypacks, dzs, dxexts, mr, nr, mra, nra, blk["kc"],
                           scratch_tiles(dt, parts))
    dwt = dwt_parts[0]
    for t in range(1, parts):
        dwt += dwt_parts[t]
    dw = np.ascontiguousarray(dwt.reshape(kh, kw, c, m).transpose(3, 2, 0, 1))
    return (dx if need_dx else None), dw
