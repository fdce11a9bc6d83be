"""Small helpers shared by every lowering: shapes, padding, pairs, and the kernel's taps.

Every algorithm module in `kernels/` receives already-validated, C-contiguous arrays of one
float dtype, with `stride` and `padding` as (sh, sw) / (ph, pw) pairs; the dispatcher in
`kernels/__init__.py` does the checking.
"""
from typing import NamedTuple

import numpy as np


def pair(v, name="value"):
    """1 -> (1, 1); (1, 2) -> (1, 2)."""
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v))
    t = tuple(int(a) for a in v)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return t


def out_size(h, w, kh, kw, stride, padding):
    """Output height and width of a convolution/pooling window sweep."""
    (sh, sw), (ph, pw) = stride, padding
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def pad_nchw(x, padding):
    """Zero-pad the two spatial axes of an NCHW array (returns x itself when padding is 0)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    return xp


def valid_range(k, pad, stride, in_size, out_size):
    """Outputs o in [lo, hi) whose input index  i = o*stride + k - pad  lies in [0, in_size).

    This is how the kernels handle zero padding by index arithmetic, without making a padded
    copy of the input: outside [lo, hi) the tap reads a zero. Always 0 <= lo <= hi <=
    out_size, so a kernel may zero-fill range(lo) and range(hi, out_size) of a row.
    (kernels/_numba.py compiles this same function for the Numba kernels.)
    """
    # o*stride >= pad - k       ->  o >= ceil((pad - k) / stride)
    # o*stride <= in_size-1+pad-k ->  o <= floor((in_size - 1 + pad - k) / stride)
    lo = -((k - pad) // stride)  # ceil((pad - k) / stride), exact for negative numerators
    if lo < 0:
        lo = 0
    if lo > out_size:  # the tap reads padding only (a large padding): no output at all
        lo = out_size
    hi = (in_size - 1 + pad - k) // stride + 1
    if hi > out_size:
        hi = out_size
    if hi < lo:
        hi = lo
    return lo, hi


class Tap(NamedTuple):
    """One tap (i, j) of the kernel and the outputs it reaches.

    Through this tap, output pixel (oh, ow) reads input pixel (oh*sh + i - ph, ow*sw + j - pw).
    `oh`, `ow` slice the outputs whose input is inside the image (step 1); `ih`, `iw` slice
    the inputs those outputs read (step = the stride), of the same lengths, so that
    ``y[..., t.oh, t.ow]`` and ``x[..., t.ih, t.iw]`` are the same grid of pixels.
    """

    i: int
    j: int
    oh: slice
    ow: slice
    ih: slice
    iw: slice


def _tap_slices(k, pad, stride, in_size, out_size):
    """(output slice, input slice) of one kernel tap k along one axis, or None if empty."""
    lo, hi = valid_range(k, pad, stride, in_size, out_size)
    if hi == lo:
        return None
    first = lo * stride + k - pad  # the input read by output lo
    return slice(lo, hi), slice(first, first + (hi - lo - 1) * stride + 1, stride)


def taps(x_shape, w_shape, stride, padding):
    """The kernel's taps, row by row (i, then j), as Taps; taps that reach no output at all
    (possible with padding >= kernel size or a large stride) are left out.

    The kn2row family computes, per tap, a partial map over the input grid and shift-adds
    it into y (or gathers dy back the same way); this is the one place that works out
    which slice of y and which strided slice of the input each tap pairs up.
    """
    _, _, h, wd = x_shape
    _, _, kh, kw = w_shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = out_size(h, wd, kh, kw, stride, padding)
    for i in range(kh):
        rows = _tap_slices(i, ph, sh, h, ho)
        if rows is None:
            continue
        for j in range(kw):
            cols = _tap_slices(j, pw, sw, wd, wo)
            if cols is not None:
                yield Tap(i, j, rows[0], cols[0], rows[1], cols[1])
