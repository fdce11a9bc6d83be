"""Max pooling (no padding): forward keeps where each maximum came from; backward routes there.

    x plane (H, W)              y plane (Ho, Wo)          argmax plane (Ho, Wo)
    +--+--+--+--+               +---+---+                 flat index h*W + w of the
    |1 |5 |2 |0 |   2x2 max,    | 5 | 4 |                 (first) maximum inside the
    +--+--+--+--+   stride 2    +---+---+                 (n, c) input plane
    |3 |2 |4 |1 |  ---------->
    +--+--+--+--+

    y[n, c, oh, ow]  = max_{i<KH, j<KW} x[n, c, oh*sh + i, ow*sw + j]
    dx[n, c, argmax] += dy[n, c, oh, ow]        (several outputs may share one argmax when
                                                 windows overlap, i.e. stride < kernel)
No GEMM, no workspace: y and argmax (int64, same shape as y) are the outputs. Ties pick the
first maximum in row-major window order, as PyTorch's CPU kernel does.

NaN propagates, as in PyTorch and NumPy: a window holding a NaN has the maximum NaN, and its
gradient goes to the window's *last* NaN (PyTorch's CPU rule, `val > max || isnan(val)`).
A plain `v > best` test would skip every NaN (a comparison with NaN is false) and hide it.

Backward never races: the Numba kernel runs one (n, c) plane per thread and an output's
gradient only ever lands in its own plane.
"""
import numpy as np

from ._common import out_size
from ._numba import njit, prange, uintp

# --------------------------------------------------------------------------- NumPy reference


def forward_numpy(x, kernel, stride):
    n, c, h, w = x.shape
    (kh, kw), (sh, sw) = kernel, stride
    ho, wo = out_size(h, w, kh, kw, stride, (0, 0))
    # windows[..., t] is tap t = i*KW + j of every window: a strided view per tap
    windows = np.stack(
        [x[:, :, i:i + sh * ho:sh, j:j + sw * wo:sw] for i in range(kh) for j in range(kw)],
        axis=-1,
    )  # (N, C, Ho, Wo, KH*KW)
    tap = windows.argmax(axis=-1)  # first maximum (np.argmax stops at the first NaN)
    nan = np.isnan(windows)
    if nan.any():  # PyTorch routes a NaN window's gradient to its last NaN
        last_nan = kh * kw - 1 - nan[..., ::-1].argmax(axis=-1)
        tap = np.where(nan.any(axis=-1), last_nan, tap)
    y = np.take_along_axis(windows, tap[..., None], axis=-1)[..., 0]
    oh = np.arange(ho)[:, None]
    ow = np.arange(wo)[None, :]
    argmax = (oh * sh + tap // kw) * w + (ow * sw + tap % kw)
    return np.ascontiguousarray(y), argmax.astype(np.int64)


def backward_numpy(dy, argmax, x_shape, kernel, stride):
    n, c, h, w = x_shape
    dx = np.zeros((n * c, h * w), dtype=dy.dtype)
    plane = np.arange(n * c)[:, None]
    # np.add.at accumulates repeated indices (overlapping windows); plain += would not
    np.add.at(dx, (plane, argmax.reshape(n * c, -1)), dy.reshape(n * c, -1))
    return dx.reshape(x_shape)


# --------------------------------------------------------------------------- Numba


@njit(parallel=True, cache=True, nogil=True, fastmath=False)
def _forward_kernel(x, kh, kw, sh, sw, y, argmax):
    # One job per (n, c) plane. Flat views and unsigned offsets, as in im2col's copy loops
    # (see "Indexing" in kernels/_numba.py): 4-D indexing here was 4x slower.
    n_img, c_in, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    xf, yf, af = x.ravel(), y.ravel(), argmax.ravel()
    for job in prange(n_img * c_in):
        src = uintp(job * h * w)  # x[n, c, 0, 0]
        dst = uintp(job * ho * wo)  # y[n, c, 0, 0]
        for oh in range(ho):
            for ow in range(wo):
                corner = oh * sh * w + ow * sw  # window's top-left, within the plane
                best = xf[src + uintp(corner)]
                arg = corner
                for i in range(kh):
                    row = corner + i * w
                    for j in range(kw):
                        v = xf[src + uintp(row + j)]
                        # strict >: keeps the first maximum; v != v: v is NaN, and a
                        # NaN wins (the last one), as in PyTorch
                        if v > best or v != v:
                            best = v
                            arg = row + j
                out = dst + uintp(oh * wo + ow)
                yf[out] = best
                af[out] = arg


@njit(parallel=True, cache=True, nogil=True, fastmath=False)
def _backward_kernel(dy, argmax, dx):
    # dx viewed as (N*C, H*W); one plane per job, so the += below never races
    n_img, c_in, ho, wo = dy.shape
    dyf, af = dy.ravel(), argmax.ravel()
    for job in prange(n_img * c_in):
        base = uintp(job * ho * wo)
        for k in range(ho * wo):
            dx[job, af[base + uintp(k)]] += dyf[base + uintp(k)]


def forward_numba(x, kernel, stride):
    n, c, h, w = x.shape
    ho, wo = out_size(h, w, kernel[0], kernel[1], stride, (0, 0))
    y = np.empty((n, c, ho, wo), dtype=x.dtype)
    argmax = np.empty((n, c, ho, wo), dtype=np.int64)
    _forward_kernel(x, kernel[0], kernel[1], stride[0], stride[1], y, argmax)
    return y, argmax


def backward_numba(dy, argmax, x_shape, kernel, stride):
    n, c, h, w = x_shape
    dx = np.zeros((n * c, h * w), dtype=dy.dtype)
    _backward_kernel(dy, argmax, dx)
    return dx.reshape(x_shape)
