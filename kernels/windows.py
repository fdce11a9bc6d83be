"""The padded-width "windows" that im2col's stride-1 path and kn2row-aa both compute on.

At stride 1, a convolution's output can be computed over the *padded* width Wp instead of
Wo: output "pixel" p = oh*Wp + ow. Then every row of the patch matrix (im2col) or every
shifted input (kn2row-aa) is one contiguous window of the zero-padded image, which the GEMM's
micro-kernel reads in place, and the KW-1 extra columns of each output row are computed and
dropped (kernels/im2col_fused.py proves that no kept result reads a wrong element). The
steps around those GEMMs are the same for both algorithms (and pad_image for every lowering
that works on one padded image at a time: im2row, kn2row, kn2col too), and live here:

    pad_image   x[n] copied into the interior of a zero-padded image buffer
    crop        y[n] = the Wo kept columns of each Wp-wide output row
    spread_dy   dy[n] laid out on Wp-wide rows with zero margins (the dX GEMM's operand)
    pack_dy_t   dy[n]^T on the padded width, packed as the dW GEMM's B operand
    dz_layout   where spread_dy puts each channel's rows in dz
    transpose_into   dst[n] = src^T: a GEMM that made pixels x channels, back to NCHW
    uses_windows_t, panel_offsets   the "transposed windows" (pixels as the GEMM's rows,
                     kernels.gemm's "cols" operand: kernels/im2col_fused.py tells why)
"""
import functools

import numpy as np

from ._numba import njit, uintp
from .gemm import tile_shape


@njit(cache=True, nogil=True)
def pad_image(x, n, ph, pw, xpad):
    """The interior of xpad (C planes of Hp x Wp, any contiguous shape) = x[n]; its zero
    border (and any tail) is written once, by the caller."""
    _, c_in, h, wd = x.shape
    hp, wp = h + 2 * ph, wd + 2 * pw
    xf = x.ravel()
    xpf = xpad.ravel()
    for c in range(c_in):
        for ih in range(h):
            src = uintp(((n * c_in + c) * h + ih) * wd)
            dst = uintp((c * hp + ih + ph) * wp + pw)
            for iw in range(wd):
                xpf[dst + uintp(iw)] = xf[src + uintp(iw)]


@njit(cache=True, nogil=True)
def crop(src, ld, first, rows, width, dst, n):
    """dst[n] (rows x width, flat) = src's rows of ld numbers, from column `first` on."""
    sf = src.ravel()
    df = dst.ravel()
    base = uintp(n * rows * width)
    for r in range(rows):
        s = uintp(r * ld + first)
        d = base + uintp(r * width)
        for j in range(width):
            df[d + uintp(j)] = sf[s + uintp(j)]


@njit(cache=True, nogil=True)
def spread_dy(dy, n, wp, lead, lz, dz):
    """dz[m*lz + lead + oh*Wp + ow] = dy[n, m, oh, ow]; the rest of dz stays zero."""
    _, m_out, ho, wo = dy.shape
    dyf = dy.ravel()
    for m in range(m_out):
        for oh in range(ho):
            s = uintp(((n * m_out + m) * ho + oh) * wo)
            d = uintp(m * lz + lead + oh * wp)
            for ow in range(wo):
                dz[d + uintp(ow)] = dyf[s + uintp(ow)]


def dz_layout(kh, kw, wp, ph, h, ho, vl):
    """(lead, lz) of dz, the dX GEMM's operand that spread_dy fills: channel m's dy rows
    start at m*lz + lead. lead is the zero margin the windows read before dy; lz leaves room
    for dy's Ho rows (Ho > ph + H when ph >= KH, e.g. a 1x1 kernel with padding 1) and for
    the windows of dx's last row, which read up to ph + H rows, plus one vector of slack."""
    lead = (kh - 1) * wp + kw - 1
    return lead, lead + max(ph + h, ho) * wp + vl


@njit(cache=True, nogil=True)
def pack_dy_t(dy, n, wp, nr, bpack):
    """B = dY_ext^T (Ho*Wp x M) as the GEMM packs it: bpack[q, oh*Wp + ow, j] = dy[n, q*NR + j,
    oh, ow]. Read channel by channel (contiguous reads, stores NR apart): the transpose costs
    a few cycles an element, not a strided gather (half the time on MNIST's conv1). Extra
    columns (ow >= Wo) and rows past M are left as they are: zero."""
    _, m_out, ho, wo = dy.shape
    k = ho * wp
    dyf = dy.ravel()
    for mm in range(m_out):
        q, j = mm // nr, mm % nr
        src = uintp((n * m_out + mm) * ho * wo)
        for oh in range(ho):
            d = uintp((q * k + oh * wp) * nr + j)
            s = src + uintp(oh * wo)
            for ow in range(wo):
                bpack[d + uintp(ow * nr)] = dyf[s + uintp(ow)]


@njit(cache=True, nogil=True)
def transpose_into(src, dst, n):
    """dst[n] (R channels x P pixels, flat) = src (P x R)^T. In blocks of 16 pixels, so the
    16 columns of src a block reads stay in L1 while each channel's 16 results are written
    side by side."""
    p_all, r_all = src.shape
    sf = src.ravel()
    df = dst.ravel()
    base = uintp(n * p_all * r_all)
    for p0 in range(0, p_all, 16):
        p1 = min(p_all, p0 + 16)
        for r in range(r_all):
            d = base + uintp(r * p_all)
            for p in range(p0, p1):
                df[d + uintp(p)] = sf[uintp(p * r_all + r)]


# The transposed result of one image (pixels x channels) must stay in L2 next to the padded
# image, for the transpose back to NCHW to be cheap: MNIST's layers are 50-100 KiB; on the
# wide benchmark layer (64 channels, 56 x 56: 784 KiB) im2col's plain windows measured 1-5%
# faster.
WINDOWS_T_MAX_BYTES = 256 << 10


def uses_windows_t(dtype, wo, pixels, channels):
    """True when the transposed windows suit a product of `pixels` x `channels` outputs of
    rows `wo` wide: the "cols" tile's MR divides wo (its panels cover exactly the kept
    pixels) and the result stays in L2."""
    return (wo % tile_shape(dtype, "cols")[0] == 0
            and pixels * channels * np.dtype(dtype).itemsize <= WINDOWS_T_MAX_BYTES)


@functools.lru_cache(maxsize=64)
def panel_offsets(rows, width, ld, first, mr):
    """offs[p] = r*ld + first + w0 for every panel (r, w0), w0 = 0, MR, .. < width: where
    each panel of MR pixels starts on rows ld apart (read-only, cached per layer shape: a
    training step asks for the same tables each time). MR = 1: every pixel's offset."""
    offs = (np.arange(rows)[:, None] * ld + first + np.arange(0, width, mr)).ravel()
    offs = offs.astype(np.int64)
    offs.flags.writeable = False
    return offs
