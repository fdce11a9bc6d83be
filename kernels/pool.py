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

Speed (Numba, 2-core AMD EPYC Zen 4, 2 threads; MNIST CNN, batch 64, both pools 2x2 stride 2
with relu=True; medians of 300 calls inside training steps, previous kernels -> these):
    pool1 (64, 32, 28, 28)  forward 0.50 -> 0.19 ms   backward 0.36 -> 0.35 ms
    pool2 (64, 64, 14, 14)  forward 0.49 -> 0.12 ms   backward 0.16 -> 0.16 ms
  - forward: _forward_2x2_kernel's row loop is vectorised and rounded up to whole vectors,
    running past the row's end into rows that come later and overwrite it (see there). The
    rows are short (14 and 7 windows): before, one of 7 never reached the vector body, and
    the body LLVM did build used gathers and scatters (it could not prove that the flat
    offsets base + 2*ow never wrap; 2-D views indexed [row, unsigned column] give it plain
    loads and shuffles).
  - backward: memory-bound inside a training step (called repeatedly on the same arrays it
    went 0.17 -> 0.14 ms and 0.086 -> 0.071 ms, from the typed zero in _backward_kernel).
    Zeroing dx alone takes half of it; the rest is reading dy and the int64 argmax. Writing
    each window's four dx entries directly instead (one pass, no zeroing, no scatter) was
    no faster: as 8-wide vector rows that run past their end, like the forward's, the
    loop's per-row set-up cost more than the scatter (pool2: 0.13-0.17 ms against 0.085);
    as scalar code, four selects and stores per window (pool2: 0.24 ms).
  - argmax stays int64 flat indices: the dispatcher (kernels/__init__.py) casts it to int64
    before the backward, and tests/oracle.py checks its dtype and values against PyTorch's,
    so a narrower type would cost a conversion and a 0..3 tap code would break the contract.
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

# The 2x2 forward's row loop runs a whole number of LANES windows (one vector of float32 in
# the loop LLVM vectorises here); CHUNK: windows per parallel job, at most (see _jobs).
LANES = 8
CHUNK = 4096


@njit(inline="always")
def _later_wins(v, best):
    # v comes after best in the window's row-major order and replaces it: strictly greater
    # (a tie keeps the first maximum), or NaN (the last NaN wins, as in PyTorch; v != v is
    # the NaN test, since a plain v > best is False for every NaN)
    return (v > best) | (v != v)


@njit(inline="always")
def _jobs(planes, per_plane):
    # planes per parallel job: at most CHUNK windows, and at least 8 jobs where there are
    # that many planes (both threads busy to the end)
    per = max(1, min(CHUNK // per_plane, (planes + 7) // 8))
    return per, (planes + per - 1) // per


@njit(parallel=True, cache=True, nogil=True, fastmath=False)
def _forward_kernel(x, kh, kw, sh, sw, relu, y, argmax):
    # Any window and stride. One job per (n, c) plane. Flat views and unsigned offsets, as in
    # im2col's copy loops (see "Indexing" in kernels/_numba.py): 4-D indexing here was 4x
    # slower. The comparison picks with selects, not a branch: on real data whether a tap
    # beats the window's best so far is a coin toss, and a mispredicted branch per tap made
    # this loop 2.3x slower (MNIST's first pool, 64x32x28x28, 2 threads: 3.5 ms with an
    # `if`, 1.55 ms with selects; _forward_2x2_kernel below takes 0.15 ms).
    n_img, c_in, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    zero = x.dtype.type(0)
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
                        take = _later_wins(v, best)
                        best = v if take else best
                        arg = row + j if take else arg
                if relu:  # see the header: 0 and no gradient where the max is <= 0
                    clip = best <= 0
                    best = zero if clip else best
                    arg = -1 if clip else arg
                out = dst + uintp(oh * wo + ow)
                yf[out] = best
                af[out] = arg


@njit(parallel=True, cache=True, nogil=True, fastmath=False)
def _forward_2x2_kernel(x, relu, y, argmax):
    # The common case, 2x2 windows at stride 2 (every CNN in minigrad.models), the rule of
    # _forward_kernel with the window unrolled: the pairs (0, 1) and (2, 3) first, then the
    # winner of each (`_later_wins` holds for any two runs of taps in order).
    #
    # Vectorised rows that run past their end. LLVM vectorises the loop over ow (8 windows a
    # step here; the stride-2 loads become shuffles), but MNIST's rows hold 14 and 7 windows:
    # a loop of 7 never reaches the vector body, one of 14 leaves 6 to the scalar tail. So
    # each row runs wv = wo rounded up to LANES windows. Windows wo..wv-1 of row q are the
    # first windows of the rows after it (garbage there, computed from whatever x holds);
    # those rows come later in the same job and overwrite them. A row may spill only where
    # its writes stay inside this job's outputs and its reads inside x; the rest (a job's
    # last row or so) runs exactly wo. Correct whatever width LLVM picks; fast when the
    # rounded row is a whole number of its vectors.
    # MNIST's pools, 2 threads, called repeatedly: 0.47 -> 0.15 ms and 0.44 -> 0.10 ms.
    n_img, c_in, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    planes = n_img * c_in
    zero = x.dtype.type(0)
    wv = (wo + LANES - 1) // LANES * LANES
    per, jobs = _jobs(planes, ho * wo)
    # one row of windows per row of y2: its top row is row r of x2, its bottom row r + 1
    x2 = x.reshape(planes * h, w)
    y2 = y.reshape(planes * ho, wo)
    a2 = argmax.reshape(planes * ho, wo)
    x_end = planes * h * w
    for job in prange(jobs):
        p0 = job * per
        p1 = min(p0 + per, planes)
        y_end = p1 * ho * wo  # this job's outputs are y2's flat [p0*ho*wo, y_end)
        for p in range(p0, p1):
            for oh in range(ho):
                q = p * ho + oh
                r = p * h + 2 * oh
                corner0 = 2 * oh * w  # flat index of the row's first window, in the plane
                spill = (q * wo + wv <= y_end) & ((r + 1) * w + 2 * wv <= x_end)
                for ow in range(wv if spill else wo):
                    u = uintp(ow)
                    a = x2[r, u + u]
                    b = x2[r, u + u + uintp(1)]
                    c = x2[r + 1, u + u]
                    d = x2[r + 1, u + u + uintp(1)]
                    t = _later_wins(b, a)
                    top = b if t else a
                    top_tap = 1 if t else 0
                    t = _later_wins(d, c)
                    bottom = d if t else c
                    bottom_tap = w + 1 if t else w
                    t = _later_wins(bottom, top)
                    best = bottom if t else top
                    arg = corner0 + 2 * ow + (bottom_tap if t else top_tap)
                    if relu:
                        clip = best <= 0
                        best = zero if clip else best
                        arg = -1 if clip else arg
                    y2[q, u] = best
                    a2[q, u] = arg


@njit(parallel=True, cache=True, nogil=True, fastmath=False)
def _backward_kernel(dy, argmax, dx):
    # One plane per job, so the += never races. Each job zeroes its own plane first: in
    # parallel, and the plane is in cache for the scatter (a separate np.zeros of the whole
    # dx was a single-threaded pass over memory). A window a fused ReLU clipped (argmax -1)
    # adds 0 to the plane's element 0 (no branch). Flat views and unsigned offsets, and a
    # zero of dx's dtype: a plain 0 made the value float64, and this loop 1.2-1.7x slower.
    n_img, c_in, ho, wo = dy.shape
    h, w = dx.shape[2], dx.shape[3]
    zero = dx.dtype.type(0)
    dyf, af, dxf = dy.ravel(), argmax.ravel(), dx.ravel()
    for job in prange(n_img * c_in):
        base = uintp(job * h * w)  # dx[n, c, 0, 0]
        for i in range(h * w):
            dxf[base + uintp(i)] = zero
        src = uintp(job * ho * wo)  # dy[n, c, 0, 0]
        for k in range(ho * wo):
            at = af[src + uintp(k)]
            keep = at >= 0
            dxf[base + uintp(at if keep else 0)] += dyf[src + uintp(k)] if keep else zero


def forward_numba(x, kernel, stride, relu=False):
    n, c, h, w = x.shape
    ho, wo = out_size(h, w, kernel[0], kernel[1], stride, (0, 0))
    x = np.ascontiguousarray(x)
    y = np.empty((n, c, ho, wo), dtype=x.dtype)
    argmax = np.empty((n, c, ho, wo), dtype=np.int64)
    if tuple(kernel) == (2, 2) and tuple(stride) == (2, 2):
        _forward_2x2_kernel(x, bool(relu), y, argmax)
    else:
        _forward_kernel(x, kernel[0], kernel[1], stride[0], stride[1], bool(relu), y, argmax)
    return y, argmax


def backward_numba(dy, argmax, x_shape, kernel, stride):
    dx = np.empty(x_shape, dtype=dy.dtype)  # each job zeroes its plane
    _backward_kernel(np.ascontiguousarray(dy), np.ascontiguousarray(argmax, dtype=np.int64), dx)
    return dx
