"""Direct convolution: the seven nested loops, no lowering, no GEMM. The oracle.

    for n in N:                                   # images
      for m in M:                                 # filters (output channels)
        for oh in Ho:  for ow in Wo:              # output pixels
          for c in C:  for kh in KH:  for kw in KW:   # one window: C*KH*KW taps
            y[n, m, oh, ow] += w[m, c, kh, kw] * x[n, c, oh*sh + kh - ph, ow*sw + kw - pw]

        x[n]  (C, H, W)             w[m] (C, KH, KW)
        +-----------+               +---+
        | +---+     |   . * sum ->  |   |   ->  y[n, m, oh, ow]
        | |win|     |               +---+
        | +---+     |   the window slides by (sh, sw) over the zero-padded image
        +-----------+

No GEMM: (M, N, K) does not apply; it is N*M*Ho*Wo dot products of length C*KH*KW, i.e.
2*N*M*Ho*Wo*C*KH*KW flops, the same count every lowering performs.

Backward (the same loops, the product rule applied to each term):
    dw[m, c, kh, kw]                      += dy[n, m, oh, ow] * x[n, c, ih, iw]
    dx[n, c, ih, iw]                      += dy[n, m, oh, ow] * w[m, c, kh, kw]
    with ih = oh*sh + kh - ph, iw = ow*sw + kw - pw (terms outside the image are padding).

Workspace: 0 bytes (the Numba forward keeps one (Wo x M) accumulator row per thread).
The Numba kernels handle padding by index arithmetic (only in-image
taps are visited); the NumPy reference, written for clarity, makes a zero-padded copy of x
(and a padded dx in backward), N*C*(H+2ph)*(W+2pw)*itemsize bytes when padding > 0, which
workspace_bytes does not count (it is a convenience of the reference, not of the method).

NumPy reference: Python loops over images and output pixels; the window (C, KH, KW) times
all M filters is one `tensordot`. Numba: all seven loops, `prange` over (image, output row)
pairs; the filter loop m is innermost so each m is its own accumulator (vectorises without
fastmath, and never reorders a floating-point sum).
"""
import numpy as np

from ._common import out_size, pad_nchw
from ._numba import njit, prange, valid_range


def workspace_bytes(x_shape, w_shape, stride, padding, itemsize):
    return 0


# --------------------------------------------------------------------------- NumPy reference


def forward_numpy(x, w, stride, padding):
    n_img, _, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw) = stride
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    xp = pad_nchw(x, padding)
    y = np.empty((n_img, m, ho, wo), dtype=x.dtype)
    for n in range(n_img):
        for oh in range(ho):
            for ow in range(wo):
                window = xp[n, :, oh * sh:oh * sh + kh, ow * sw:ow * sw + kw]  # (C, KH, KW)
                y[n, :, oh, ow] = np.tensordot(w, window, axes=3)  # (M,): every filter
    return y


def backward_numpy(dy, x, w, stride, padding):
    n_img, _, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = dy.shape[2:]
    xp = pad_nchw(x, padding)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for n in range(n_img):
        for oh in range(ho):
            for ow in range(wo):
                g = dy[n, :, oh, ow]  # (M,)
                rows, cols = slice(oh * sh, oh * sh + kh), slice(ow * sw, ow * sw + kw)
                dw += np.multiply.outer(g, xp[n, :, rows, cols])  # (M, C, KH, KW)
                dxp[n, :, rows, cols] += np.tensordot(g, w, axes=1)  # (C, KH, KW)
    dx = np.ascontiguousarray(dxp[:, :, ph:ph + h, pw:pw + wd])
    return dx, dw


# --------------------------------------------------------------------------- Numba


@njit(parallel=True, cache=True, fastmath=False, nogil=True)
def _forward_kernel(x, w, sh, sw, ph, pw, ho, wo, y):
    n_img, c_in, h, wd = x.shape
    m, _, kh, kw = w.shape
    for job in prange(n_img * ho):  # each job writes its own output row y[n, :, oh, :]
        n = job // ho
        oh = job % ho
        acc = np.zeros((wo, m), dtype=y.dtype)  # y[n, :, oh, :] transposed: m innermost
        wv = np.empty(m, dtype=w.dtype)  # w[:, c, i, j], gathered once per tap
        for c in range(c_in):
            for i in range(kh):
                ih = oh * sh + i - ph
                if ih < 0 or ih >= h:
                    continue  # a row of zero padding
                for j in range(kw):
                    for f in range(m):
                        wv[f] = w[f, c, i, j]
                    lo, hi = valid_range(j, pw, sw, wd, wo)
                    for ow in range(lo, hi):
                        xv = x[n, c, ih, ow * sw + j - pw]
                        for f in range(m):
                            acc[ow, f] += wv[f] * xv
        for f in range(m):
            for ow in range(wo):
                y[n, f, oh, ow] = acc[ow, f]


def forward_numba(x, w, stride, padding):
    n_img, _, h, wd = x.shape
    m, _, kh, kw = w.shape
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    y = np.empty((n_img, m, ho, wo), dtype=x.dtype)
    _forward_kernel(x, w, stride[0], stride[1], padding[0], padding[1], ho, wo, y)
    return y


@njit(parallel=True, cache=True, fastmath=False, nogil=True)
def _backward_w_kernel(dy, x, sh, sw, ph, pw, dw):
    # dw[m, c, i, j] = sum_{n, oh, ow} dy[n, m, oh, ow] * x[n, c, ih, iw]; job = (m, c)
    n_img, m, ho, wo = dy.shape
    _, c_in, h, wd = x.shape
    kh, kw = dw.shape[2], dw.shape[3]
    for job in prange(m * c_in):
        f = job // c_in
        c = job % c_in
        for i in range(kh):
            for j in range(kw):
                lo, hi = valid_range(j, pw, sw, wd, wo)
                s = 0.0
                for n in range(n_img):
                    for oh in range(ho):
                        ih = oh * sh + i - ph
                        if ih < 0 or ih >= h:
                            continue
                        for ow in range(lo, hi):
                            s += dy[n, f, oh, ow] * x[n, c, ih, ow * sw + j - pw]
                dw[f, c, i, j] = s


@njit(parallel=True, cache=True, fastmath=False, nogil=True)
def _backward_x_kernel(dy, w, sh, sw, ph, pw, dx):
    # Gather: each input pixel dx[n, c, ih, iw] sums the outputs whose window covers it;
    # job = (n, c) plane, so no two jobs write the same pixel.
    n_img, m, ho, wo = dy.shape
    _, c_in, h, wd = dx.shape
    kh, kw = w.shape[2], w.shape[3]
    for job in prange(n_img * c_in):
        n = job // c_in
        c = job % c_in
        for ih in range(h):
            for iw in range(wd):
                s = 0.0
                for i in range(kh):
                    t = ih + ph - i  # = oh * sh
                    if t < 0 or t % sh != 0 or t // sh >= ho:
                        continue
                    oh = t // sh
                    for j in range(kw):
                        u = iw + pw - j  # = ow * sw
                        if u < 0 or u % sw != 0 or u // sw >= wo:
                            continue
                        ow = u // sw
                        for f in range(m):
                            s += dy[n, f, oh, ow] * w[f, c, i, j]
                dx[n, c, ih, iw] = s


def backward_numba(dy, x, w, stride, padding):
    dx = np.empty_like(x)
    dw = np.empty_like(w)
    (sh, sw), (ph, pw) = stride, padding
    _backward_w_kernel(dy, x, sh, sw, ph, pw, dw)
    _backward_x_kernel(dy, w, sh, sw, ph, pw, dx)
    return dx, dw
