"""Winograd F(2x2, 3x3): a 3x3, stride-1 convolution with 16 multiplications per 2x2 outputs.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016). A direct 3x3
convolution spends 9 multiplications on every output pixel, 36 on a 2x2 block. Winograd's
minimal filtering algorithm computes the same 2x2 block from the 4x4 input tile under it with
16 element-wise products, in a transformed ("Winograd") domain:

    Y (2x2) = A^T [ (G g G^T)  *  (B^T d B) ] A          * = element-wise, 4x4
                    filter U      input tile V

    B^T = [[1,  0, -1,  0],      G = [[1,    0,    0  ],      A^T = [[1, 1,  1,  0],
           [0,  1,  1,  0],           [1/2,  1/2,  1/2],             [0, 1, -1, -1]]
           [0, -1,  1,  0],           [1/2, -1/2,  1/2],
           [0,  1,  0, -1]]           [0,    0,    1  ]]

d is a 4x4 tile of the zero-padded input, g a 3x3 filter. Neighbouring tiles overlap by 2
rows/columns (tile t starts at input row 2t - ph), each gives a 2x2 block of the output.

Across channels the products become matrix multiplications: for each of the 16 positions
(xi, nu) of the 4x4 Winograd domain, summing U * V over input channels c is a GEMM:

    x (N, C, H, W)  --B^T d B, every tile-->  V  (16, C, P)     P = N * th * tw tiles
    w (M, C, 3, 3)  --G g G^T, every filter->  U  (16, M, C)
                    16 GEMMs:   Mw[k] = U[k] @ V[k]     (M x C) @ (C x P)  k = 0..15
    Mw (16, M, P)   --A^T m A, every tile---> y  (N, M, Ho, Wo)   (a 2x2 block per tile)

    th = ceil(Ho / 2), tw = ceil(Wo / 2): when Ho or Wo is odd the last row/column of tiles
    computes one output too many, on zero padding, and it is cropped.

GEMM shapes (rows M, cols N, inner K), 16 of each:
    forward      Mw[k] = U[k] @ V[k]             M = Cout   N = P = N*th*tw   K = Cin
    backward dW  dU[k] = dMw[k] @ V[k]^T          M = Cout   N = Cin           K = P
    backward dX  the forward's 16 GEMMs on dy:   M = Cin    N = N*ceil(H/2)*ceil(W/2), K = Cout

Backward.
  dX: the data gradient of a stride-1 convolution is the "full" correlation of dy with the
      kernel flipped in both axes and its channel axes swapped,
          dx = conv(dy, w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3), padding = 2 - p),
      itself a stride-1 3x3 convolution, so it runs through the forward above. When p > 2
      the padding is negative: the (H + 2p - 2)-high dy is cropped by p - 2 on each side.
  dW: in the Winograd domain (the adjoint of the forward, exact like the forward):
          dMw = A dY A^T (every 2x2 block of dy -> 4x4)        dU[k] = dMw[k] @ V[k]^T
          dw  = G^T dU G (every filter, 4x4 -> 3x3)
      V is the forward's input transform, recomputed (not saved: it is 4x the input).
      Lavin & Gray note that this is F(3x3, 2x2): 2x2 blocks of dy as the filter.

Cost: 16 products per 2x2 outputs instead of 36 (2.25x fewer GEMM flops), plus the
transforms: 32 additions per input tile and channel, 24 per output tile and filter.

Accuracy: the transforms are exact in binary floating point for these matrices (+-1 and 1/2),
but the filter transform spreads one weight into several Winograd-domain numbers and the
output transform adds up to 9 products, so the rounding differs from a direct sum of 9*C
products. Measured float32 maximum error, |got - ref| / max|ref| against float64 PyTorch,
on layers of 17 to 64 channels (14x14 and 28x28, padding 1): 2-4e-7 for y, dx and dw; a
float32 GEMM lowering (im2col, Numba) gives 3-8e-7 on the same layers, the direct forward
4-8e-7. The tests hold Winograd to the project's float32 tolerance (tests/oracle.py: rtol
1e-4, atol 2e-5 * max|ref|), to 1e-6 of max|ref| on a 17-channel layer, and to within 4x
of im2col's error; float64 to rtol 1e-11, atol 1e-12 * max|ref|. F(4x4, 3x3) would save
more multiplications (4x fewer than direct) but its matrices hold 1/4 .. 1/24 and +-2, +-4,
+-8, so its float32 error is larger: that is why F(2x2, 3x3) is the variant here.

Workspace (bytes, the most forward holds at once besides y; itemsize = 4 for float32):
    NumPy reference:  itemsize * ( 16*M*C + 16*C*P                          U, V
                                   + max( N*C*(2*th + 2)*(2*tw + 2)  [padding > 0, Ho or Wo
                                                                      odd: the padded input]
                                          16*M*P                      Mw
                                          + N*M*(2*th)*(2*tw) ) )    [Ho or Wo odd]
      the padded input covers the whole tile grid (it is not made when there is no padding
      and the tiles fit exactly) and is freed once V is made, before Mw exists; the output
      of the whole tile grid is cropped into y.
    Numba:            itemsize * (16*M*C + 16*C*P + 16*M*P)
      padding and cropping are index arithmetic in the transform kernels.
    MNIST conv2 (x 64x32x14x14, w 64x32x3x3, P = 64*7*7 = 3136): 4 * 16 * (2048 + 100352
    + 200704) = 19.4 MB, like the im2col reference's patch matrix (16.8 MB): V is 4x the
    input, a 2x2 block of outputs takes 16 numbers of Mw.
  Backward (Numba) allocates V again, dMw (16*M*P), dU (16*M*C), and with need_dx the
  flipped weights (9*M*C) and the forward's buffers for dy.

Numba path: one parallel kernel per transform (prange over (image, channel) planes for the
input transform, over (image, filter) planes for the output and dy transforms, so no two
iterations write the same number; nogil), and the 16 GEMMs through kernels.gemm.matmul
(minigrad's GEMM on AVX-512 machines, NumPy's BLAS elsewhere), one parallel GEMM each: each
GEMM is large (MNIST conv2: 64 x 32 x 3136), so a batched call would gain nothing over 16
well-shaped parallel GEMMs. Not timed on the machine this was written on (see bench/).
The GPU twin, kernels/cuda/winograd.py, runs the same steps as batched CuPy array operations.
"""
import numpy as np

from ._numba import njit, prange
from .gemm import matmul  # minigrad's GEMM where it is the fast path, else NumPy's BLAS

KERNEL = (3, 3)  # the only kernel this module computes
TILE = 4         # input tile
BLOCK = 2        # output block per tile

_BT = np.array([[1, 0, -1, 0],
                [0, 1, 1, 0],
                [0, -1, 1, 0],
                [0, 1, 0, -1]], dtype=np.float64)
_G = np.array([[1.0, 0.0, 0.0],
               [0.5, 0.5, 0.5],
               [0.5, -0.5, 0.5],
               [0.0, 0.0, 1.0]], dtype=np.float64)
_AT = np.array([[1, 1, 1, 0],
                [0, 1, -1, -1]], dtype=np.float64)
_MATS = {np.dtype(dt): tuple(m.astype(dt) for m in (_BT, _G, _AT))
         for dt in (np.float32, np.float64)}


def matrices(dtype=np.float64):
    """(B^T, G, A^T) of F(2x2, 3x3) in `dtype`."""
    return _MATS[np.dtype(dtype)]


# --------------------------------------------------------------------------- constraints


def supports(w_shape, stride):
    """True when F(2x2, 3x3) applies: a 3x3 kernel and stride 1 (any padding, any H, W)."""
    return tuple(w_shape[2:]) == KERNEL and tuple(stride) == (1, 1)


def check(op, x_shape, w_shape, stride):
    """ValueError unless supports(w_shape, stride), naming the op, constraint and shapes."""
    if not supports(w_shape, stride):
        raise ValueError(
            f"{op} (algo 'winograd'): Winograd F(2x2, 3x3) needs a 3x3 kernel and stride 1, "
            f"got w {tuple(w_shape)} (kernel {tuple(w_shape[2:])}), stride {tuple(stride)}, "
            f"x {tuple(x_shape)}; use another algorithm (e.g. 'im2col') for this layer")


def geometry(x_shape, padding):
    """(Ho, Wo, th, tw): output size and the tile grid (th x tw tiles per image)."""
    _, _, h, wd = x_shape
    ph, pw = padding
    ho, wo = h + 2 * ph - 2, wd + 2 * pw - 2
    return ho, wo, (ho + 1) // 2, (wo + 1) // 2


def _needs_pad_copy(x_shape, padding):
    ho, wo, _, _ = geometry(x_shape, padding)
    return padding[0] > 0 or padding[1] > 0 or ho % 2 or wo % 2


def workspace_bytes(x_shape, w_shape, stride, padding, itemsize):
    """The NumPy reference's buffers (module header): U, V, Mw, padded input, full output."""
    check("workspace_bytes", x_shape, w_shape, stride)
    n, c, _, _ = x_shape
    m = w_shape[0]
    ho, wo, th, tw = geometry(x_shape, padding)
    p = n * th * tw
    pad = n * c * (2 * th + 2) * (2 * tw + 2) if _needs_pad_copy(x_shape, padding) else 0
    full = n * m * (2 * th) * (2 * tw) if (ho % 2 or wo % 2) else 0
    # the padded input is freed before Mw is allocated: the peak holds one or the other
    return itemsize * (16 * (m * c + c * p) + max(pad, 16 * m * p + full))


def workspace_bytes_numba(x_shape, w_shape, stride, padding, itemsize):
    """The Numba forward's buffers: U, V and Mw only."""
    check("workspace_bytes", x_shape, w_shape, stride)
    n, c, _, _ = x_shape
    m = w_shape[0]
    _, _, th, tw = geometry(x_shape, padding)
    p = n * th * tw
    return itemsize * 16 * (m * c + c * p + m * p)


# --------------------------------------------------------------------------- NumPy reference
# Each transform is one np.einsum over every tile at once, written exactly as the matrix
# sandwich it computes (einsum without `optimize` makes no intermediate arrays).


def filter_transform(w):
    """U[xi, nu, m, c] = (G w[m, c] G^T)[xi, nu]: (M, C, 3, 3) -> (16, M, C)."""
    m, c = w.shape[:2]
    _, g, _ = matrices(w.dtype)
    u = np.empty((16, m, c), dtype=w.dtype)
    np.einsum("xi,yj,mcij->xymc", g, g, w, out=u.reshape(4, 4, m, c))
    return u


def _pad_or_crop(x, padding, th, tw):
    """The input over the whole tile grid: rows -ph .. 2*th + 1 - ph (zeros outside x).

    Returns (array, row0, col0): the tile grid starts at (row0, col0) of the array. A
    negative padding (the data gradient when p > 2) starts the grid inside the image.
    """
    n, c, h, wd = x.shape
    hp, wp = 2 * th + 2, 2 * tw + 2
    ph, pw = padding
    if ph <= 0 and pw <= 0 and h + ph >= hp and wd + pw >= wp:
        return x, -ph, -pw                      # the grid lies inside x: no copy
    xp = np.zeros((n, c, hp, wp), dtype=x.dtype)
    r0, c0 = max(0, -ph), max(0, -pw)           # first row/col of x that the grid reads
    r1, c1 = min(h, hp - ph), min(wd, wp - pw)  # one past the last
    xp[:, :, r0 + ph:r1 + ph, c0 + pw:c1 + pw] = x[:, :, r0:r1, c0:c1]
    return xp, 0, 0


def input_transform(x, padding, th, tw):
    """V[xi, nu, c, (n, t, u)] = (B^T d B)[xi, nu], d the 4x4 tile at rows 2t - ph.., cols
    2u - pw..: (N, C, H, W) -> (16, C, N*th*tw)."""
    n, c = x.shape[:2]
    bt, _, _ = matrices(x.dtype)
    xp, r0, c0 = _pad_or_crop(x, padding, th, tw)
    s = xp.strides
    tiles = np.lib.stride_tricks.as_strided(       # (N, C, th, tw, 4, 4), a view: no copy
        xp[:, :, r0:, c0:], shape=(n, c, th, tw, TILE, TILE),
        strides=(s[0], s[1], 2 * s[2], 2 * s[3], s[2], s[3]), writeable=False)
    v = np.empty((16, c, n * th * tw), dtype=x.dtype)
    np.einsum("ai,bj,nctuij->abcntu", bt, bt, tiles, out=v.reshape(4, 4, c, n, th, tw))
    return v


def output_transform(mw, y):
    """y[n, m, 2t + a, 2u + b] = (A^T Mw[:, :, m, (n, t, u)] A)[a, b], cropped to y's size."""
    n, m, ho, wo = y.shape
    th, tw = (ho + 1) // 2, (wo + 1) // 2
    _, _, at = matrices(y.dtype)
    full = y if (ho % 2 == 0 and wo % 2 == 0) else np.empty((n, m, 2 * th, 2 * tw), y.dtype)
    np.einsum("ax,by,xymntu->nmtaub", at, at, mw.reshape(4, 4, m, n, th, tw),
              out=full.reshape(n, m, th, BLOCK, tw, BLOCK))
    if full is not y:
        y[...] = full[:, :, :ho, :wo]
    return y


def grad_output_transform(dy, th, tw):
    """dMw[xi, nu, m, (n, t, u)] = (A dY A^T)[xi, nu], dY the 2x2 block of dy under tile
    (t, u) (zero beyond dy's edge): (N, M, Ho, Wo) -> (16, M, N*th*tw)."""
    n, m, ho, wo = dy.shape
    _, _, at = matrices(dy.dtype)
    if ho == 2 * th and wo == 2 * tw:
        full = dy
    else:
        full = np.zeros((n, m, 2 * th, 2 * tw), dtype=dy.dtype)
        full[:, :, :ho, :wo] = dy
    dm = np.empty((16, m, n * th * tw), dtype=dy.dtype)
    np.einsum("ax,by,nmtaub->xymntu", at, at, full.reshape(n, m, th, BLOCK, tw, BLOCK),
              out=dm.reshape(4, 4, m, n, th, tw))
    return dm


def grad_filter_transform(du):
    """dw[m, c] = G^T dU[:, :, m, c] G: (16, M, C) -> (M, C, 3, 3)."""
    _, m, c = du.shape
    _, g, _ = matrices(du.dtype)
    dw = np.empty((m, c) + KERNEL, dtype=du.dtype)
    np.einsum("xi,yj,xymc->mcij", g, g, du.reshape(4, 4, m, c), out=dw)
    return dw


def flipped_kernel(w):
    """w[:, :, ::-1, ::-1] with the channel axes swapped: (M, C, 3, 3) -> (C, M, 3, 3)."""
    return np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))


def _forward_numpy(x, w, padding):
    n = x.shape[0]
    m = w.shape[0]
    ho, wo, th, tw = geometry(x.shape, padding)
    u = filter_transform(w)                                  # (16, M, C)
    v = input_transform(x, padding, th, tw)                  # (16, C, P)
    mw = np.empty((16, m, v.shape[2]), dtype=x.dtype)
    np.matmul(u, v, out=mw)                                  # 16 GEMMs (M x C) @ (C x P)
    return output_transform(mw, np.empty((n, m, ho, wo), dtype=x.dtype))


def forward_numpy(x, w, stride, padding):
    check("conv2d_forward", x.shape, w.shape, stride)
    return _forward_numpy(x, w, padding)


def backward_numpy(dy, x, w, stride, padding, need_dx=True):
    check("conv2d_backward", x.shape, w.shape, stride)
    ph, pw = padding
    dx = _forward_numpy(dy, flipped_kernel(w), (2 - ph, 2 - pw)) if need_dx else None
    _, _, th, tw = geometry(x.shape, padding)
    v = input_transform(x, padding, th, tw)                  # (16, C, P)
    dm = grad_output_transform(dy, th, tw)                   # (16, M, P)
    du = np.matmul(dm, v.transpose(0, 2, 1))                 # 16 GEMMs (M x P) @ (P x C)
    return dx, grad_filter_transform(du)


# --------------------------------------------------------------------------- Numba
# The transforms with B, A written out as additions (each matrix is +-1 and 0), one
# (image, channel) or (image, filter) plane per prange iteration.


@njit(parallel=True, cache=True, nogil=True)
def _input_transform_nb(x, ph, pw, th, tw, v):
    """v (16, C, N*th*tw) = B^T d B of every tile; zero padding by index arithmetic."""
    n_img, c, h, wd = x.shape
    tiles = th * tw
    p_all = n_img * tiles
    xf = x.ravel()
    vf = v.ravel()
    for job in prange(n_img * c):
        n = job // c
        ch = job % c
        src = job * h * wd
        d = np.empty(16, dtype=x.dtype)
        s = np.empty(16, dtype=x.dtype)
        for t in range(th):
            r0 = 2 * t - ph
            for u in range(tw):
                c0 = 2 * u - pw
                if r0 >= 0 and r0 + 4 <= h and c0 >= 0 and c0 + 4 <= wd:  # inside x
                    for i in range(4):
                        row = src + (r0 + i) * wd + c0
                        for j in range(4):
                            d[i * 4 + j] = xf[row + j]
                else:                                                   # on the border
                    for i in range(4):
                        r = r0 + i
                        for j in range(4):
                            cc = c0 + j
                            if 0 <= r < h and 0 <= cc < wd:
                                d[i * 4 + j] = xf[src + r * wd + cc]
                            else:
                                d[i * 4 + j] = 0.0
                for j in range(4):              # s = B^T d  (rows: d0-d2, d1+d2, d2-d1, d1-d3)
                    s[j] = d[j] - d[8 + j]
                    s[4 + j] = d[4 + j] + d[8 + j]
                    s[8 + j] = d[8 + j] - d[4 + j]
                    s[12 + j] = d[4 + j] - d[12 + j]
                dst = ch * p_all + n * tiles + t * tw + u
                step = c * p_all
                for i in range(4):              # V = s B  (the same combination of columns)
                    a = s[i * 4]
                    b = s[i * 4 + 1]
                    e = s[i * 4 + 2]
                    f = s[i * 4 + 3]
                    k = i * 4
                    vf[k * step + dst] = a - e
                    vf[(k + 1) * step + dst] = b + e
                    vf[(k + 2) * step + dst] = e - b
                    vf[(k + 3) * step + dst] = b - f


@njit(parallel=True, cache=True, nogil=True)
def _output_transform_nb(mw, y, th, tw):
    """y (N, M, Ho, Wo) = A^T m A of every tile, the last row/column of blocks cropped."""
    n_img, m, ho, wo = y.shape
    tiles = th * tw
    p_all = n_img * tiles
    step = m * p_all
    mf = mw.ravel()
    yf = y.ravel()
    for job in prange(n_img * m):
        n = job // m
        mm = job % m
        q = np.empty(16, dtype=y.dtype)
        s = np.empty(8, dtype=y.dtype)
        for t in range(th):
            for u in range(tw):
                src = mm * p_all + n * tiles + t * tw + u
                for k in range(16):
                    q[k] = mf[k * step + src]
                for j in range(4):              # s = A^T q  (rows: q0+q1+q2, q1-q2-q3)
                    s[j] = q[j] + q[4 + j] + q[8 + j]
                    s[4 + j] = q[4 + j] - q[8 + j] - q[12 + j]
                for a in range(2):              # Y = s A
                    oh = 2 * t + a
                    if oh >= ho:
                        continue
                    row = (job * ho + oh) * wo
                    ow = 2 * u
                    yf[row + ow] = s[a * 4] + s[a * 4 + 1] + s[a * 4 + 2]
                    if ow + 1 < wo:
                        yf[row + ow + 1] = s[a * 4 + 1] - s[a * 4 + 2] - s[a * 4 + 3]


@njit(parallel=True, cache=True, nogil=True)
def _grad_output_transform_nb(dy, th, tw, dm):
    """dm (16, M, N*th*tw) = A g A^T of every 2x2 block g of dy (zero beyond its edge)."""
    n_img, m, ho, wo = dy.shape
    tiles = th * tw
    p_all = n_img * tiles
    step = m * p_all
    dyf = dy.ravel()
    dmf = dm.ravel()
    for job in prange(n_img * m):
        n = job // m
        mm = job % m
        g = np.empty(4, dtype=dy.dtype)
        r = np.empty(8, dtype=dy.dtype)
        for t in range(th):
            for u in range(tw):
                for a in range(2):
                    for b in range(2):
                        oh = 2 * t + a
                        ow = 2 * u + b
                        if oh < ho and ow < wo:
                            g[a * 2 + b] = dyf[(job * ho + oh) * wo + ow]
                        else:
                            g[a * 2 + b] = 0.0
                for b in range(2):              # r = A g  (rows: g0, g0+g1, g0-g1, -g1)
                    r[b] = g[b]
                    r[2 + b] = g[b] + g[2 + b]
                    r[4 + b] = g[b] - g[2 + b]
                    r[6 + b] = -g[2 + b]
                dst = mm * p_all + n * tiles + t * tw + u
                for i in range(4):              # dM = r A^T  (the same combination of columns)
                    a0 = r[i * 2]
                    a1 = r[i * 2 + 1]
                    k = i * 4
                    dmf[k * step + dst] = a0
                    dmf[(k + 1) * step + dst] = a0 + a1
                    dmf[(k + 2) * step + dst] = a0 - a1
                    dmf[(k + 3) * step + dst] = -a1


def _forward_numba(x, w, padding):
    n, c = x.shape[:2]
    m = w.shape[0]
    ho, wo, th, tw = geometry(x.shape, padding)
    u = filter_transform(w)                                  # (16, M, C): small, NumPy
    v = np.empty((16, c, n * th * tw), dtype=x.dtype)
    _input_transform_nb(x, padding[0], padding[1], th, tw, v)
    mw = np.empty((16, m, n * th * tw), dtype=x.dtype)
    matmul(u, v, out=mw)                                  # 16 GEMMs (M x C) @ (C x P)
    y = np.empty((n, m, ho, wo), dtype=x.dtype)
    _output_transform_nb(mw, y, th, tw)
    return y


def forward_numba(x, w, stride, padding):
    check("conv2d_forward", x.shape, w.shape, stride)
    return _forward_numba(x, w, padding)


def backward_numba(dy, x, w, stride, padding, need_dx=True):
    check("conv2d_backward", x.shape, w.shape, stride)
    n, c = x.shape[:2]
    m = w.shape[0]
    ph, pw = padding
    dx = _forward_numba(dy, flipped_kernel(w), (2 - ph, 2 - pw)) if need_dx else None
    _, _, th, tw = geometry(x.shape, padding)
    v = np.empty((16, c, n * th * tw), dtype=x.dtype)
    _input_transform_nb(x, ph, pw, th, tw, v)
    dm = np.empty((16, m, n * th * tw), dtype=x.dtype)
    _grad_output_transform_nb(dy, th, tw, dm)
    du = np.empty((16, m, c), dtype=x.dtype)
    matmul(dm, v.transpose(0, 2, 1), out=du)              # 16 GEMMs (M x P) @ (P x C)
    return dx, grad_filter_transform(du)
