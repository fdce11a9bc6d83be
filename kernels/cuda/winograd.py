"""Winograd F(2x2, 3x3) on the GPU: CuPy array operations and batched cuBLAS GEMMs.

The same algorithm as kernels/winograd.py (read its header first), written with whole-array
CuPy operations instead of raw kernels: every transform is a batched 4x4 (or 4x3, 2x4)
matrix product over all tiles at once, and the 16 GEMMs are one batched cupy.matmul.

    tiles  d   (N, C, th, tw, 4, 4)    16 strided slices of the zero-padded input, copied
    V = B^T d B                        -> (16, C, P)      P = N*th*tw
    U = G g G^T                        -> (16, M, C)
    Mw[k] = U[k] @ V[k]                   one batched GEMM  (16 x  M x C  @  C x P)
    y = A^T Mw A, cropped              -> (N, M, Ho, Wo)

Backward: dx = forward(dy, flipped and transposed w, padding 2 - p) (a negative padding
crops dy); dW in the Winograd domain, dU[k] = (A dY A^T)[k] @ V[k]^T, dw = G^T dU G.

Workspace (forward, bytes: the buffers this file allocates besides y):
    itemsize * ( N*C*(2*th + 2)*(2*tw + 2)      padded input
               + 16*C*P * 2                      tiles, V
               + 16*M*C + 16*M*P                 U, Mw
               + 16 + 12 + 8 )                   B^T, G, A^T copied to the device
plus the results of the batched 4x4 products (B^T d B, G g G^T, A^T Mw A: up to 2 * 16*C*P
at once during the input transform), which come and go in CuPy's memory pool.
Only CuPy names that NumPy shares are used, so the tests run this file with NumPy standing
in for CuPy (tests/kernels/test_winograd.py) and with the emulator's stand-in, which also
counts the workspace (tests/kernels/test_cuda_emulate.py); no GPU needed for the index math.
"""
from .. import winograd as _cpu
from . import _runtime as rt


def workspace_bytes(x_shape, w_shape, stride, padding, itemsize):
    _cpu.check("workspace_bytes", x_shape, w_shape, stride)
    n, c = x_shape[:2]
    m = w_shape[0]
    _, _, th, tw = _cpu.geometry(x_shape, padding)
    p = n * th * tw
    return itemsize * (n * c * (2 * th + 2) * (2 * tw + 2) + 32 * c * p + 16 * m * c
                       + 16 * m * p + 16 + 12 + 8)


def _mats(cp, dtype):
    return tuple(cp.asarray(a) for a in _cpu.matrices(dtype))


def _tiles(cp, x, padding, th, tw):
    """(N, C, th, tw, 4, 4): the 4x4 input tile under every 2x2 output block."""
    n, c, h, wd = x.shape
    ph, pw = padding
    if ph < 0 or pw < 0:  # a negative padding (the data gradient when p > 2): crop
        x = x[:, :, max(0, -ph):h - max(0, -ph), max(0, -pw):wd - max(0, -pw)]
        h, wd, ph, pw = x.shape[2], x.shape[3], max(ph, 0), max(pw, 0)
    hp, wp = 2 * th + 2, 2 * tw + 2
    xp = cp.zeros((n, c, hp, wp), dtype=x.dtype)
    rows, cols = min(h, hp - ph), min(wd, wp - pw)
    xp[:, :, ph:ph + rows, pw:pw + cols] = x[:, :, :rows, :cols]
    tiles = cp.empty((n, c, th, tw, 4, 4), dtype=x.dtype)
    for i in range(4):                  # tile (t, u) row i, column j = xp[2t + i, 2u + j]
        for j in range(4):
            tiles[..., i, j] = xp[:, :, i:i + 2 * th:2, j:j + 2 * tw:2]
    return tiles


def _input_transform(cp, x, padding, th, tw, bt):
    n, c = x.shape[:2]
    v = bt @ _tiles(cp, x, padding, th, tw) @ bt.T            # (N, C, th, tw, 4, 4)
    return cp.ascontiguousarray(v.transpose(4, 5, 1, 0, 2, 3)).reshape(16, c, n * th * tw)


def _forward(cp, x, w, padding):
    n = x.shape[0]
    m, c = w.shape[:2]
    ho, wo, th, tw = _cpu.geometry(x.shape, padding)
    bt, g, at = _mats(cp, x.dtype)
    u = g @ w @ g.T                                           # (M, C, 4, 4)
    u = cp.ascontiguousarray(u.transpose(2, 3, 0, 1)).reshape(16, m, c)
    mw = cp.matmul(u, _input_transform(cp, x, padding, th, tw, bt))   # (16, M, P)
    mw = mw.reshape(4, 4, m, n, th, tw).transpose(3, 2, 4, 5, 0, 1)  # (N, M, th, tw, 4, 4)
    blocks = at @ mw @ at.T                                   # (N, M, th, tw, 2, 2)
    y = cp.empty((n, m, ho, wo), dtype=x.dtype)
    for a in range(2):                  # y[2t + a, 2u + b] = block (t, u)[a, b], cropped
        for b in range(2):
            y[:, :, a::2, b::2] = blocks[:, :, :(ho - a + 1) // 2, :(wo - b + 1) // 2, a, b]
    return y


def forward(x, w, stride, padding):
    cp = rt.get_cupy()                  # first: without CuPy, say so whatever the shape
    _cpu.check("conv2d_forward", x.shape, w.shape, stride)
    return _forward(cp, x, w, padding)


def backward(dy, x, w, stride, padding, need_dx=True):
    cp = rt.get_cupy()
    _cpu.check("conv2d_backward", x.shape, w.shape, stride)
    n, c = x.shape[:2]
    m = w.shape[0]
    ph, pw = padding
    dx = None
    if need_dx:
        wf = cp.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        dx = _forward(cp, cp.ascontiguousarray(dy), wf, (2 - ph, 2 - pw))
    ho, wo, th, tw = _cpu.geometry(x.shape, padding)
    bt, g, at = _mats(cp, x.dtype)
    full = cp.zeros((n, m, 2 * th, 2 * tw), dtype=dy.dtype)
    full[:, :, :ho, :wo] = dy
    blocks = full.reshape(n, m, th, 2, tw, 2).transpose(1, 0, 2, 4, 3, 5)  # (M,N,th,tw,2,2)
    dm = at.T @ blocks @ at                                   # A dY A^T: (M, N, th, tw, 4, 4)
    dm = cp.ascontiguousarray(dm.transpose(4, 5, 0, 1, 2, 3)).reshape(16, m, n * th * tw)
    v = _input_transform(cp, x, padding, th, tw, bt)          # (16, C, P)
    du = cp.matmul(dm, v.transpose(0, 2, 1))                  # (16, M, C)
    du = du.reshape(4, 4, m, c).transpose(2, 3, 0, 1)         # (M, C, 4, 4)
    dw = cp.ascontiguousarray(g.T @ du @ g)                   # (M, C, 3, 3)
    return dx, dw
