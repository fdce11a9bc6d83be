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

ReLU fused in (`relu=True`): y = max(0, window max), in one pass instead of two, and
ReLU's backward comes free. ReLU is monotone, so max(0, max(window)) == max(relu(window)):
a CNN's conv -> ReLU -> pool (or conv -> pool -> ReLU) is one fused pool. Where the window's
maximum is <= 0 the output is 0 and ReLU's derivative is 0 (PyTorch's rule at 0 too), so
argmax is -1 there: backward routes nothing. A NaN maximum stays NaN, as torch.relu keeps it.

    plain:  y = x[argmax]                      fused:  y = x[argmax] if x[argmax] > 0 or NaN
            dx[argmax] += dy                            else 0, argmax = -1 (no gradient)

Backward never races: the Numba kernel runs one (n, c) plane per thread and an output's
gradient only ever lands in its own plane.
"""
import numpy as np

from ._common import out_size
from ._numba import njit, prange, uintp

# --------------------------------------------------------------------------- NumPy reference


def forward_numpy(x, kernel, stride, relu=False):
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
    if relu:  # max(0, window max): the window loses its gradient where that is 0
        clipped = y <= 0  # False for NaN, which stays
        y = np.where(clipped, 0, y).astype(x.dtype, copy=False)
        argmax = np.where(clipped, -1, argmax)
    return np.ascontiguousarray(y), argmax.astype(np.int64)


def backward_numpy(dy, argmax, x_shape, kernel, stride):
    n, c, h, w = x_shape
    dx = np.zeros((n * c, h * w), dtype=dy.dtype)
    plane = np.broadcast_to(np.arange(n * c)[:, None], (n * c, argmax[0, 0].size))
    at, g = argmax.reshape(n * c, -1), dy.reshape(n * c, -1)
    keep = at >= 0  # -1: a window the fused ReLU clipped to 0, no gradient
    # np.add.at accumulates repeated indices (overlapping windows); plain += would not
    np.add.at(dx, (plane[keep], at[keep]), g[keep])
    return dx.reshape(x_shape)


# --------------------------------------------------------------------------- Numba


@njit(parallel=True, cache=True, nogil=True, fastmath=False)
def _forward_kernel(x, kh, kw, sh, sw, relu, y, argmax):
    # One job per (n, c) plane. Flat views and unsigned offsets, as in im2col's copy loops
    # (see "Indexing" in kernels/_numba.py): 4-D indexing here was 4x slower.
    # The comparison picks with selects, not a branch: on real data whether a tap beats the
    # window's best so far is a coin toss, and a mispredicted branch per tap made this loop
    # 2.3x slower (MNIST's first pool, 64x32x28x28, 2 threads: 3.5 ms with an `if`, 1.55 ms
    # with selects; the unrolled 2x2 kernel below takes 0.40 ms).
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
                        take = (v > best) | (v != v)
                        best = v if take else best
                        arg = row + j if take else arg
                if relu:  # see the header: 0 and no gradient where the max is <= 0
                    clip = best <= 0
                    best = 0 if clip else best
                    arg = -1 if clip else arg
                out = dst + uintp(oh * wo + ow)
                yf[out] = best
                af[out] = arg


@njit(parallel=True, cache=True, nogil=True, fastmath=False)
def _forward_2x2_kernel(x, relu, y, argmax):
    # The common case, 2x2 windows at stride 2 (every CNN in minigrad.models): the rule of
    # _forward_kernel with the window unrolled into two pairs of neighbours in two rows.
    n_img, c_in, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    xf, yf, af = x.ravel(), y.ravel(), argmax.ravel()
    for job in prange(n_img * c_in):
        for oh in range(ho):
            r0 = uintp(job * h * w + 2 * oh * w)  # x[n, c, 2*oh, 0]
            r1 = r0 + uintp(w)  # x[n, c, 2*oh + 1, 0]
            out = uintp(job * ho * wo + oh * wo)  # y[n, c, oh, 0]
            corner0 = 2 * oh * w
            for ow in range(wo):
                k = uintp(2 * ow)
                best = xf[r0 + k]
                tap = 0
                v = xf[r0 + k + uintp(1)]
                take = (v > best) | (v != v)
                best = v if take else best
                tap = 1 if take else tap
                v = xf[r1 + k]
                take = (v > best) | (v != v)
                best = v if take else best
                tap = w if take else tap
                v = xf[r1 + k + uintp(1)]
                take = (v > best) | (v != v)
                best = v if take else best
                tap = w + 1 if take else tap
                arg = corner0 + 2 * ow + tap
                if relu:
                    clip = best <= 0
                    best = 0 if clip else best
                    arg = -1 if clip else arg
                yf[out + uintp(ow)] = best
                af[out + uintp(ow)] = arg


@njit(parallel=True, cache=True, nogil=True, fastmath=False)
def _backward_kernel(dy, argmax, dx):
    # dx viewed as (N*C, H*W); one plane per job, so the += below never races. Each job
    # zeroes its own plane first: in parallel, and the plane is in cache for the scatter
    # (a separate np.zeros of the whole dx was a single-threaded pass over memory).
    n_img, c_in, ho, wo = dy.shape
    dyf, af = dy.ravel(), argmax.ravel()
    for job in prange(n_img * c_in):
        dx[job, :] = 0
        base = uintp(job * ho * wo)
        for k in range(ho * wo):
            at = af[base + uintp(k)]
            # at < 0: clipped by a fused ReLU; add 0 to element 0 instead (no branch)
            dx[job, at if at >= 0 else 0] += dyf[base + uintp(k)] if at >= 0 else 0


def forward_numba(x, kernel, stride, relu=False):
    n, c, h, w = x.shape
    ho, wo = out_size(h, w, kernel[0], kernel[1], stride, (0, 0))
    y = np.empty((n, c, ho, wo), dtype=x.dtype)
    argmax = np.empty((n, c, ho, wo), dtype=np.int64)
    if tuple(kernel) == (2, 2) and tuple(stride) == (2, 2):
        _forward_2x2_kernel(x, bool(relu), y, argmax)
    else:
        _forward_kernel(x, kernel[0], kernel[1], stride[0], stride[1], bool(relu), y, argmax)
    return y, argmax


def backward_numba(dy, argmax, x_shape, kernel, stride):
    n, c, h, w = x_shape
    dx = np.empty((n * c, h * w), dtype=dy.dtype)  # each job zeroes its plane
    _backward_kernel(dy, argmax, dx)
    return dx.reshape(x_shape)
