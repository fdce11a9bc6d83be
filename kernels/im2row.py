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
    then row2im: every row entry is added back onto its input pixel.

Which layout it favours: channels-last (NHWC). The GEMM's natural output, Y_rows, is y in
NHWC order (pixel-major, channel-minor) and its natural gradient input dY_rows is dy in NHWC.
In this NCHW library that costs two transposes per layer pass, each the size of the
output: Y_rows (N, HoWo, M) -> y (N, M, HoWo) in forward, and dy (N, M, HoWo) -> dY_rows
(N, HoWo, M) in backward. A channels-last engine would skip both and read x's windows
as contiguous C-vectors. Each row of the patch matrix is contiguous per output pixel, which
is also what a "fused" GEMM that forms patches on the fly would consume.

The NumPy reference (first below) builds the batch's whole patch matrix and runs the three
GEMMs on it. The Numba path ("fused", after it) never does: it takes a chunk of one image's
output pixels at a time (a whole MNIST image, or 112 pixels of a 56 x 56 one), writes the
chunk's rows straight into the GEMM's packed panels while they fit the core's L2 cache, and
stores the chunk's Y_rows into y transposed, so the transposes shrink to L1-sized tiles.
When kernels.gemm is not the GEMM in use (MINIGRAD_GEMM=blas), it runs the reference's
steps on the whole batch instead ("batch", last in this file).

Workspace (forward, bytes, what the NumPy reference and the Numba "batch" path allocate
besides x, w and y):
    itemsize * (N*Ho*Wo * C*KH*KW      # rows
                + N*Ho*Wo * M)         # Y_rows (NHWC) before its transpose into NCHW
  The NumPy reference also makes a zero-padded copy of x (itemsize*N*C*(H+2ph)*(W+2pw),
  when padding > 0); the batch lowering reads x directly, padding by index arithmetic.
  The fused Numba path holds a few chunks instead (formula in its section below,
  workspace_bytes_numba): MNIST conv2, float32, 2 threads: 0.71 MiB against 16.84 MiB.
Backward (NumPy): rows again, drows (same size) and dY_rows (N*Ho*Wo x M); see
backward_workspace_bytes.
"""
import numba
import numpy as np

from ._common import out_size, pad_nchw
from ._numba import njit, prange, uintp, valid_range
from .gemm import (
    blocking,
    macro_kernel,
    matmul,
    pack_a,
    pack_b,
    panels,
    scratch_tiles,
    split_bounds,
    uses_numba,
)
from .gemm import (
    isa as gemm_isa,
)
from .windows import pad_image


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


# --------------------------------------------------------------------------- Numba: fused paths
# The Numba im2row never builds the batch's patch matrix. It cuts the work into CHUNKS of
# output pixels of one image (a whole small image, or a few hundred pixels of a big one) and
# does everything for a chunk while its part of the patch matrix is in the core's L2 cache.
# A chunk's rows are written straight in the order kernels.gemm's micro-kernel reads its
# packed operands, so the GEMM packs nothing but the weights, once per call. In numbers
# (tables as in im2col's packed path: xpad is the zero-padded image, C x Hp x Wp):
#     rows[p, k] = xpad[off[k] + base[p]]     off[(c, i, j)] = c*Hp*Wp + i*Wp + j
#                                             base[(oh, ow)] = oh*sh*Wp + ow*sw
#
#   forward, per chunk P of image n (threads take chunks: parallel even for one image)
#     A = rows[P]          (|P| x CKK)  lowered into packed MR-row panels: MR pixels' windows
#     B = W_mat^T          (CKK x M)    packed once per call, shared by the threads
#     Y_rows[P] = A @ B    (|P| x M)    y in NHWC, a small buffer in L1/L2; stored transposed
#                                       into y[n, :, P] (NCHW): no batch-sized transpose
#   backward, per image n (threads take images), per chunk P:
#     dW += dY_rows[P]^T @ rows[P]      A = dy[n][:, P] packed, B = rows[P] lowered into packed
#                                       NR-column panels; one private dW per thread, summed
#     drows[P]^T = W_mat^T @ dY_rows[P]^T     the data gradient computed transposed (CKK x |P|;
#                                       A = W_mat^T packed once, B = dy[n][:, P] packed), so
#                                       that row2im adds runs of pixels that sit side by side
#                                       in dx (a row of drows would scatter one number per
#                                       window); drows[P] added onto dxpad, the thread's
#                                       padded dx of image n, cropped into dx[n] when the image
#                                       is done: each thread writes only its own images
# The backward needs two images or more to share between threads (else "batch").
#
# Workspace of the Numba forward (T = threads at work, P = the chunk's pixels, a multiple of
# MR; Mc = M, or M rounded up to NR columns when the depth is tiny, see _padded_columns):
#     T * (C*Hp*Wp  +  P * C*KH*KW  +  P * Mc)      xpad + packed rows + Y_rows
#     + ceil(M / NR)*NR * C*KH*KW                   the packed W_mat^T
#     + 8 * (C*KH*KW + Ho*Wo) bytes                 the off and base tables (int64)
# (MNIST conv2, float32, 2 threads: 0.71 MiB against the reference's 16.84 MiB.) kernels.gemm's
# MR x NR scratch tiles are GEMM internals, not counted. The backward allocates per thread
# xpad and dxpad, the chunk's rows packed as B (ceil(CKK/NR)*NR * P), dy's chunk packed twice
# (as dY_rows^T and as dY_rows), drows^T (CKK x P) and a dW sum; and the packed W_mat^T once.
#
# The copies are plain loops on flat arrays (kernels/_numba.py, "Indexing"); the ones that
# run often load 8 numbers and then store them, because a loop that stores as it loads
# cannot be turned into vector moves (apack might overlap xpad for all LLVM knows): that
# took the MNIST conv2 lowering from 1.1 to 0.6 ms per core.

# A chunk's packed rows stay at most this big, so that they and the micro-panels of the
# weights stay in the core's L2 (1 MiB on the project machine): a whole MNIST image
# (196 x 288 floats, 221 KiB) is one chunk, the wide layer's 56 x 56 x 576 is 29.
CHUNK_BYTES = 256 << 10


def chunk_pixels(hw, ckk, itemsize, mr, min_chunks=1):
    """Pixels per chunk: the image cut into equal chunks of at most CHUNK_BYTES of packed rows
    (at least min_chunks of them), each a whole number of MR-row panels."""
    chunks = max(min_chunks, -(-hw * ckk * itemsize // CHUNK_BYTES), 1)
    chunks = min(chunks, -(-hw // mr))
    return panels(-(-hw // chunks), mr)


def _tables(c, h, wd, kh, kw, stride, padding, ho, wo):
    """off (C*KH*KW,) and base (Ho*Wo,): rows[p, k] = xpad[off[k] + base[p]]."""
    (sh, sw), (ph, pw) = stride, padding
    hp, wp = h + 2 * ph, wd + 2 * pw
    taps = (np.arange(kh)[:, None] * wp + np.arange(kw)).ravel()
    off = (np.arange(c)[:, None] * (hp * wp) + taps).ravel()
    base = (np.arange(ho)[:, None] * (sh * wp) + np.arange(wo) * sw).ravel()
    return off.astype(np.int64), base.astype(np.int64)


@njit(cache=True, nogil=True)
def _lower_rows_a(xpad, off, base, p0, p1, mr, bases, apack):
    """A = rows[p0:p1] packed in MR-row panels (what pack_a writes):
    apack[q, k, i] = rows[p0 + q*MR + i, k] = xpad[off[k] + base[p0 + q*MR + i]].
    A panel's rows past p1 repeat its last pixel (they land in rows of C never stored).
    `bases` (MR numbers) holds the panel's pixel offsets while its taps are copied."""
    ckk = off.shape[0]
    for q in range((p1 - p0 + mr - 1) // mr):
        first = p0 + q * mr
        for i in range(mr):
            bases[i] = base[min(first + i, p1 - 1)]
        dst = uintp(q * ckk * mr)
        if mr == 8:  # 8 loads, then 8 stores: LLVM pairs them into vector moves (a loop that
            # stores as it loads cannot be, as apack might overlap xpad for all it knows)
            b0, b1, b2, b3 = bases[0], bases[1], bases[2], bases[3]
            b4, b5, b6, b7 = bases[4], bases[5], bases[6], bases[7]
            # a full panel's bases strictly increase, so 7 apart means side by side
            side_by_side = first + 8 <= p1 and b7 - b0 == 7  # stride 1, one output row
            for k in range(ckk):
                o = off[k]
                d = dst + uintp(k * 8)
                if side_by_side:
                    s = uintp(o + b0)
                    v0, v1 = xpad[s], xpad[s + uintp(1)]
                    v2, v3 = xpad[s + uintp(2)], xpad[s + uintp(3)]
                    v4, v5 = xpad[s + uintp(4)], xpad[s + uintp(5)]
                    v6, v7 = xpad[s + uintp(6)], xpad[s + uintp(7)]
                else:
                    v0, v1 = xpad[uintp(o + b0)], xpad[uintp(o + b1)]
                    v2, v3 = xpad[uintp(o + b2)], xpad[uintp(o + b3)]
                    v4, v5 = xpad[uintp(o + b4)], xpad[uintp(o + b5)]
                    v6, v7 = xpad[uintp(o + b6)], xpad[uintp(o + b7)]
                apack[d], apack[d + uintp(1)] = v0, v1
                apack[d + uintp(2)], apack[d + uintp(3)] = v2, v3
                apack[d + uintp(4)], apack[d + uintp(5)] = v4, v5
                apack[d + uintp(6)], apack[d + uintp(7)] = v6, v7
            continue
        for k in range(ckk):
            o = off[k]
            d = dst + uintp(k * mr)
            for i in range(mr):
                apack[d + uintp(i)] = xpad[uintp(o + bases[i])]


@njit(cache=True, nogil=True)
def _lower_rows_b(xpad, off, base, p0, p1, nr, bpack):
    """B = rows[p0:p1] (P x CKK) packed in NR-column panels (what pack_b writes):
    bpack[q, p, j] = rows[p0 + p, q*NR + j], zero past the last column. Each pixel's NR
    taps are gathered 8 at a time, loads first, so that the stores become vector stores."""
    ckk = off.shape[0]
    npix = p1 - p0
    for q in range((ckk + nr - 1) // nr):
        k0 = q * nr
        width = min(nr, ckk - k0)
        w8 = width - width % 8
        for p in range(npix):
            d = uintp((q * npix + p) * nr)
            b = base[p0 + p]
            for j in range(0, w8, 8):
                o = off[k0 + j:k0 + j + 8]
                v0, v1 = xpad[uintp(o[0] + b)], xpad[uintp(o[1] + b)]
                v2, v3 = xpad[uintp(o[2] + b)], xpad[uintp(o[3] + b)]
                v4, v5 = xpad[uintp(o[4] + b)], xpad[uintp(o[5] + b)]
                v6, v7 = xpad[uintp(o[6] + b)], xpad[uintp(o[7] + b)]
                e = d + uintp(j)
                bpack[e], bpack[e + uintp(1)] = v0, v1
                bpack[e + uintp(2)], bpack[e + uintp(3)] = v2, v3
                bpack[e + uintp(4)], bpack[e + uintp(5)] = v4, v5
                bpack[e + uintp(6)], bpack[e + uintp(7)] = v6, v7
            for j in range(w8, width):
                bpack[d + uintp(j)] = xpad[uintp(off[k0 + j] + b)]
            for j in range(width, nr):
                bpack[d + uintp(j)] = 0


@njit(cache=True, nogil=True)
def _store_t(yrows, npix, y, n, p0):
    """y[n, m, p0 + p] = yrows[p, m] for p < npix: Y_rows (NHWC) stored into NCHW, in blocks
    of 32 pixels (whose rows of yrows stay in L1)."""
    m_out, hw = y.shape[1], y.shape[2]
    ld = yrows.shape[1]
    yf = y.ravel()
    yr = yrows.ravel()
    for pb in range(0, npix, 32):
        pe = min(npix, pb + 32)
        for m in range(m_out):
            d = uintp((n * m_out + m) * hw + p0)
            for p in range(pb, pe):
                yf[d + uintp(p)] = yr[uintp(p * ld + m)]


@njit(cache=True, nogil=True)
def _row2im_chunk(drows_t, off, wo, sh_wp, sw, p0, p1, dxpad):
    """row2im of pixels p0:p1, from drows^T (CKK x chunk): dxpad[off[k] + base[p]] +=
    drows[p, k], pixel runs along one output row at a time (contiguous at stride 1)."""
    ckk = off.shape[0]
    ld = drows_t.shape[1]
    df = drows_t.ravel()
    p = p0
    while p < p1:
        oh = p // wo
        ow = p - oh * wo
        run = min(wo - ow, p1 - p)
        b = oh * sh_wp + ow * sw
        for k in range(ckk):
            d = uintp(off[k] + b)
            s = uintp(k * ld + p - p0)
            if sw == 1:
                for r in range(run):
                    dxpad[d + uintp(r)] += df[s + uintp(r)]
            else:
                for r in range(run):
                    dxpad[d + uintp(r * sw)] += df[s + uintp(r)]
        p += run


@njit(cache=True, nogil=True)
def _crop_dx(dxpad, n, ph, pw, dx):
    """dx[n] = the interior of dxpad (C x Hp x Wp, flat)."""
    _, c_in, h, wd = dx.shape
    hp, wp = h + 2 * ph, wd + 2 * pw
    dxf = dx.ravel()
    for c in range(c_in):
        for ih in range(h):
            src = uintp((c * hp + ih + ph) * wp + pw)
            dst = uintp(((n * c_in + c) * h + ih) * wd)
            for iw in range(wd):
                dxf[dst + uintp(iw)] = dxpad[src + uintp(iw)]


@njit(parallel=True, cache=True, nogil=True)
def _forward_chunks(isa, x, wtpack, off, base, ph, pw, chunk, y, bounds, xpads, apacks, yrows,
                    mr, nr, kc, tiles):
    """Thread t takes jobs bounds[t]:bounds[t+1], job = (image n, chunk of `chunk` pixels):
    y[n, :, chunk] = (rows[chunk] @ W_mat^T)^T."""
    m, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    hw = ho * wo
    ckk = off.shape[0]
    per_image = (hw + chunk - 1) // chunk
    for t in prange(bounds.shape[0] - 1):
        padded = -1
        bases = np.empty(mr, dtype=np.int64)
        y_t = y.reshape(y.shape[0], m, hw)
        for job in range(bounds[t], bounds[t + 1]):
            n = job // per_image
            p0 = (job % per_image) * chunk
            p1 = min(hw, p0 + chunk)
            if n != padded:
                pad_image(x, n, ph, pw, xpads[t])
                padded = n
            _lower_rows_a(xpads[t], off, base, p0, p1, mr, bases, apacks[t])
            macro_kernel(isa, ckk, apacks[t], wtpack, yrows[t], 0, p1 - p0, 0, yrows.shape[2],
                         False, mr, nr, kc, tiles[t])
            _store_t(yrows[t], p1 - p0, y_t, n, p0)


@njit(parallel=True, cache=True, nogil=True)
def _backward_images(isa, dy, x, wtpack, off, base, sh, sw, ph, pw, chunk, dx, dw_parts,
                     need_dx, bounds, xpads, dxpads, bpacks, apacks, dypacks, drows_t,
                     mr, nr, kc, tiles):
    """Thread t, for its images n and each chunk P of n's pixels:
    dw_parts[t] += dy[n][:, P] @ rows[P];  dxpad += row2im((W_mat^T @ dy[n][:, P])^T)."""
    m, wo = dy.shape[1], dy.shape[3]
    hw = dy.shape[2] * wo
    ckk = off.shape[0]
    sh_wp = sh * (x.shape[3] + 2 * pw)
    for t in prange(bounds.shape[0] - 1):
        for n in range(bounds[t], bounds[t + 1]):
            dy_n = dy[n].reshape(m, hw)
            pad_image(x, n, ph, pw, xpads[t])
            if need_dx:
                dxpads[t][:] = 0
            for p0 in range(0, hw, chunk):
                p1 = min(hw, p0 + chunk)
                npix = p1 - p0
                _lower_rows_b(xpads[t], off, base, p0, p1, nr, bpacks[t])       # B = rows[P]
                pack_a(dy_n, False, 0, m, p0, npix, mr, apacks[t])             # A = dY_rows^T
                macro_kernel(isa, npix, apacks[t], bpacks[t], dw_parts[t], 0, m, 0, ckk,
                             n > bounds[t] or p0 > 0, mr, nr, kc, tiles[t])
                if need_dx:
                    pack_b(dy_n, False, 0, m, p0, npix, nr, dypacks[t])       # B = dY_rows^T
                    macro_kernel(isa, m, wtpack, dypacks[t], drows_t[t], 0, ckk, 0, npix,
                                 False, mr, nr, kc, tiles[t])
                    _row2im_chunk(drows_t[t], off, wo, sh_wp, sw, p0, p1, dxpads[t])
            if need_dx:
                _crop_dx(dxpads[t], n, ph, pw, dx)


def _padded_columns(m, ckk, nr, vl):
    """Columns of the forward's Y_rows buffer: M, or M rounded up to whole NR panels when
    the depth is so short (a first layer: C*KH*KW = 9) that computing the panel's extra
    columns costs less than the edge tile's scratch round trip."""
    if m % nr and ckk * (nr // vl) <= 2 * (m % nr):
        return panels(m, nr)
    return m


def _forward_plan(n, hw, ckk, itemsize, mr, threads):
    """(chunk, bounds): pixels per chunk, and thread t's jobs bounds[t]:bounds[t+1], job
    j = chunk j % (chunks per image) of image j // (chunks per image)."""
    chunk = chunk_pixels(hw, ckk, itemsize, mr, -(-threads // n))
    jobs = n * -(-hw // chunk)
    return chunk, split_bounds(jobs, min(threads, jobs), 1)


def workspace_bytes_numba(x_shape, w_shape, stride, padding, itemsize):
    """The Numba forward's buffers: the fused path's (formula in the comment that opens the
    fused section), or the batch path's (the header's formula, workspace_bytes)."""
    n, c, h, wd = x_shape
    m, _, kh, kw = w_shape
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    hw, ckk = ho * wo, c * kh * kw
    dtype = np.float32 if itemsize == 4 else np.float64
    path, threads = _numba_path(n, dtype)
    if path == "batch":
        return workspace_bytes(x_shape, w_shape, stride, padding, itemsize)
    blk = blocking(dtype)
    mr, nr = blk["mr"], blk["nr"]
    chunk, bounds = _forward_plan(n, hw, ckk, itemsize, mr, threads)
    parts = len(bounds) - 1
    xpad = c * (h + 2 * padding[0]) * (wd + 2 * padding[1])
    per_thread = xpad + panels(chunk, mr) * ckk + chunk * _padded_columns(m, ckk, nr, blk["vl"])
    tables = 8 * (ckk + hw)  # off and base, int64
    return itemsize * (parts * per_thread + panels(m, nr) * ckk) + tables


def forward_fused(x, w, stride, padding, parts):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    ph, pw = padding
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    hw, ckk = ho * wo, c * kh * kw
    dt = x.dtype
    blk = blocking(dt)
    mr, nr = blk["mr"], blk["nr"]
    chunk, bounds = _forward_plan(n, hw, ckk, dt.itemsize, mr, parts)
    parts = len(bounds) - 1
    off, base = _tables(c, h, wd, kh, kw, stride, padding, ho, wo)
    wtpack = np.empty(panels(m, nr) * ckk, dtype=dt)
    pack_b(w.reshape(m, ckk), True, 0, ckk, 0, m, nr, wtpack)   # B = W_mat^T, packed once
    xpads = np.zeros((parts, c * (h + 2 * ph) * (wd + 2 * pw)), dtype=dt)
    apacks = np.empty((parts, panels(chunk, mr) * ckk), dtype=dt)
    yrows = np.empty((parts, chunk, _padded_columns(m, ckk, nr, blk["vl"])), dtype=dt)
    y = np.empty((n, m, ho, wo), dtype=dt)
    _forward_chunks(gemm_isa(), x, wtpack, off, base, ph, pw, chunk, y, bounds, xpads, apacks,
                    yrows, mr, nr, blk["kc"], scratch_tiles(dt, parts))
    return y


def backward_fused(dy, x, w, stride, padding, need_dx, parts):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = dy.shape[2:]
    hw, ckk = ho * wo, c * kh * kw
    dt = x.dtype
    blk = blocking(dt)
    mr, nr = blk["mr"], blk["nr"]
    chunk = chunk_pixels(hw, ckk, dt.itemsize, mr)
    bounds = split_bounds(n, min(parts, n), 1)
    parts = len(bounds) - 1
    off, base = _tables(c, h, wd, kh, kw, stride, padding, ho, wo)
    padsize = c * (h + 2 * ph) * (wd + 2 * pw)
    xpads = np.zeros((parts, padsize), dtype=dt)
    bpacks = np.empty((parts, panels(ckk, nr) * chunk), dtype=dt)
    apacks = np.empty((parts, panels(m, mr) * chunk), dtype=dt)
    dw_parts = np.empty((parts, m, ckk), dtype=dt)
    if need_dx:
        wtpack = np.empty(panels(ckk, mr) * m, dtype=dt)
        pack_a(w.reshape(m, ckk), True, 0, ckk, 0, m, mr, wtpack)   # A = W_mat^T, packed once
        dxpads = np.empty((parts, padsize), dtype=dt)
        dypacks = np.empty((parts, panels(chunk, nr) * m), dtype=dt)
        drows_t = np.empty((parts, ckk, chunk), dtype=dt)
        dx = np.empty_like(x)
    else:
        wtpack = np.empty(0, dtype=dt)
        dxpads = np.empty((parts, 0), dtype=dt)
        dypacks = np.empty((parts, 0), dtype=dt)
        drows_t = np.empty((parts, 0, 0), dtype=dt)
        dx = np.empty((0, c, h, wd), dtype=dt)
    _backward_images(gemm_isa(), dy, x, wtpack, off, base, sh, sw, ph, pw, chunk, dx, dw_parts,
                     need_dx, bounds, xpads, dxpads, bpacks, apacks, dypacks, drows_t, mr, nr,
                     blk["kc"], scratch_tiles(dt, parts))
    dw = dw_parts[0]
    for t in range(1, parts):
        dw += dw_parts[t]
    return (dx if need_dx else None), dw.reshape(w.shape)


# --------------------------------------------------------------------------- Numba: batch path
# The batch's patch matrix, as in the reference, for when kernels.gemm is not the GEMM in
# use (MINIGRAD_GEMM=blas) and for a backward with a single image: a parallel im2row kernel,
# the three GEMMs on the whole batch, and a parallel row2im.


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


# The batch path runs the same three GEMMs with the small operand on the LEFT: the
# pixel-major result is computed transposed, Y_rows^T = W_mat @ rows^T (M x N*Ho*Wo, the same
# bytes as Y_rows), and dY_rows is kept as dY_rows^T (M x N*Ho*Wo). Measured on the project
# machine (OpenBLAS, Haswell kernels, 2 cores): rows @ W_mat^T, an N = M = 32..64 wide GEMM,
# ran at 5-30% of peak (MNIST conv1: 6.9 ms, against 0.26 ms for W_mat @ rows^T; the wide
# layer 25-48 ms against 20 ms), and (M, N, HoWo) -> (N, M, HoWo) is a copy of whole
# contiguous planes instead of an element-wise NHWC -> NCHW transpose. The GEMMs go through
# kernels.gemm.matmul (NumPy's BLAS under MINIGRAD_GEMM=blas).


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


def forward_batch(x, w, stride, padding):
    n, _, h, wd = x.shape
    _, _, kh, kw = w.shape
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    rows = im2row_numba(x, kh, kw, stride, padding)
    return _gemm_forward_t(w, rows, n, ho, wo)


def backward_batch(dy, x, w, stride, padding):
    kh, kw = w.shape[2:]
    rows = im2row_numba(x, kh, kw, stride, padding)
    dw, drows = _gemm_backward_t(dy, w, rows)
    dx = row2im_numba(drows, x.shape, kh, kw, stride, padding)
    return dx, dw


# --------------------------------------------------------------------------- which path


def _numba_path(n, dtype, backward=False):
    """(path, threads): "fused" (above) when kernels.gemm is the GEMM in use, with the
    threads taking chunks (forward) or images (backward: only with N >= 2 images to share);
    else "batch", the batch's patch matrix and a parallel GEMM (NumPy's BLAS, or one image)."""
    threads = numba.get_num_threads()
    if not uses_numba(dtype) or (backward and n < min(threads, 2)):
        return "batch", 0
    return "fused", threads


def forward_numba(x, w, stride, padding):
    path, parts = _numba_path(x.shape[0], x.dtype)
    if path == "fused":
        return forward_fused(x, w, stride, padding, parts)
    return forward_batch(x, w, stride, padding)


def backward_numba(dy, x, w, stride, padding, need_dx=True):
    path, parts = _numba_path(x.shape[0], x.dtype, backward=True)
    if path == "fused":
        return backward_fused(dy, x, w, stride, padding, need_dx, parts)
    dx, dw = backward_batch(dy, x, w, stride, padding)
    return (dx if need_dx else None), dw
