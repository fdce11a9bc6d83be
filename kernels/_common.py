"""Small helpers shared by every lowering: shapes, padding, pairs.

Every algorithm module in `kernels/` receives already-validated, C-contiguous arrays of one
float dtype, with `stride` and `padding` as (sh, sw) / (ph, pw) pairs; the dispatcher in
`kernels/__init__.py` does the checking.
"""
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
