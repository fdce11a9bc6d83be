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

GEMM shapes (rows M, cols N, inner K), 16 of each (the Numba path cuts P into chunks of
nb tiles, below: 16 GEMMs per chunk, with nb for P):
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
    Numba (the chunked path below, T threads, nb tiles a chunk):
                      itemsize * ( 16*ceil(M/MR)*MR*C                U, packed once
                                   + T*16*(ks(C*nb) + ks(M*nb))      a chunk's V and Mw
                                   + T*ks(4*(2*tw + 2)) )            four input rows
      ks(n) = n rounded up to whole 64-byte cache lines, plus one line (_kstride: why, there);
      padding and cropping are index arithmetic in the transforms.
    Numba, BLAS path: itemsize * (16*M*C + 16*(ks(C*P) + ks(M*P)) + T*ks(4*(2*tw + 2)))
    MNIST conv2 (x 64x32x14x14, w 64x32x3x3, P = 64*7*7 = 3136): the NumPy reference
    holds 4 * 16 * (2048 + 100352 + 200704) = 19.4 MB, like the im2col reference's patch
    matrix (16.8 MB): V is 4x the input, a 2x2 block of outputs takes 16 numbers of Mw.
    The Numba path on 2 threads, AVX-512 (MR 8, NR 48, nb 96): 4 * (32768 + 2*16*(3088
    + 6160) + 2*80) = 1,315,456 B (1.25 MiB).
    Numba, small-C path (C <= SMALL_C_FORWARD, below; any GEMM mode):
                      itemsize * ( 16*M*C                             U
                                   + T*( ks(24*SEG)                  output block, Mw
                                         + ks(16*SEG*C)              a segment's V
                                         + ks(4*C*(2*max(tw, SEG) + 2)) ) )   input rows
      MNIST conv1 (x 64x1x28x28, w 32x1x3x3) on 2 threads: 4 * (512 + 2*(400 + 272 + 160))
      = 8,704 B, where the chunked path holds 4 * (512 + 2*16*(304 + 9232) + 2*144) =
      1,223,808 B (chunks of 288 tiles: a chunk's Mw, 32 filters, is most of it).
  The Numba backward holds per thread a chunk's V^T and dM (the forward's formula, with C
  and M rounded up to whole NR and MR panels) and a dU sum (16*M*C), and with need_dx the
  flipped weights (9*M*C) and the forward's buffers for dy. On the small-C path (C <=
  SMALL_C_GRAD): per thread a chunk of R tile rows' V (R*ceil(tw/SEG)*16*SEG*C, R chosen
  for SMALL_CHUNK_BYTES) and dy blocks (R*ceil(tw/SEG)*4*SEG), the input rows, and the
  sums per lane (16*SEG*C a chunk's, 16*SEG*M*C in all: 32 KiB on MNIST conv1).

Numba path: chunks of tiles that stay in the core's L2 cache. Made for the whole batch, V and
Mw are 6.4 and 12.8 MB on MNIST conv2: every tile's 16 numbers land C*P apart, far outside
the cache, and each of the 16 GEMMs streams its V[k] and Mw[k] from memory again. Instead,
each thread takes a contiguous range of tiles (whole NR-wide panels: kernels.gemm's register
tile is MR x NR) and works through it nb tiles at a time, nb chosen so that a chunk's V and
Mw fit CHUNK_BYTES (MNIST conv2 float32: 96 tiles, 0.59 MB), all in one parallel launch:

    U = G g G^T of every filter, written as 16 packed A operands (kernels/gemm/pack.py)
    thread t, for its tiles p0 .. p0+nb-1, then the next nb, ...:
        x  --B^T d B-->  V chunk (16 x C x nb), written straight in the packed B layout
        16 x kernels.gemm.macro_kernel:  Mw[k] (M x nb) = U[k] @ V[k]          (L2 -> L2)
        Mw chunk  --A^T m A-->  y's 2x2 blocks of those tiles
    backward dW, the same walk:  x --> V^T chunk (packed B), dy --A g A^T--> dMw chunk
        (dM in the code; packed A); dU_t[k] += dM[k] @ V[k]^T (all 16 in one
        macro_kernel_taps call, as deep as the chunk) into a dU per thread;
        dw = G^T (sum over threads of dU_t) G
    backward dX: the chunked forward on dy (above)

A chunk may start or end inside an image or a row of tiles: the transforms walk it in runs
(the tiles of one row of tiles, not crossing a panel edge), along which every offset moves
by a constant step. What made them fast (MNIST conv2, each measured on this code):
  - the 16 matrices of a chunk buffer lie a cache line off a multiple of 4 KiB apart
    (_kstride): 4 KiB apart, a tile's 16 numbers fall into one L1 cache set (12 ways) and
    evict each other (2-6x);
  - every index is one unsigned number (uintp, see kernels/_numba.py): Numba's check for
    negative indices had the transforms gather and scatter (2x);
  - the output transform runs over all tiles of a filter at once, in place in Mw: its loads
    are then consecutive, so LLVM turns it into vector code (2x); y is written after;
  - four input rows of a row of tiles are combined (B^T d) once, straight from x when all
    four lie inside it, and shared by the tiles (the rest: padding, copied zeros) (1.2x);
  - each thread's scratch has its own cache lines (no false sharing).
MNIST conv2 forward + backward (need_dx), float32, 2 cores, AVX-512, medians of one run:
the former whole-batch kernels 27 ms, this path 7.5 ms, im2col 7.3 ms.
When kernels.gemm.uses_numba is False (MINIGRAD_GEMM=blas, or a CPU without AVX2) the GEMMs
go to NumPy's BLAS: the Numba transforms then fill the whole batch's V, Mw and dM in C order
(one parallel launch each, by ranges of tiles) around 16 np.matmul GEMMs.

Small C: no GEMM, Mw and dM never stored. With one input channel (MNIST conv1: x 64x1x28x28,
w 32x1x3x3, padding 1; its backward needs no dx) the GEMMs above have depth C = 1: the
forward's are outer products that exist only to write Mw, 16 numbers per tile and filter
(4x y: 25.7 MB on conv1), which the output transform reads back; the dW GEMM's B operand
is C = 1 column wide in panels of NR = 48, so 47/48 of its multiply-adds are on padding.
On a 2-core AMD EPYC (Zen 4, AVX-512), float32, medians of 30, conv1 took forward 1.79 ms
and backward (dw only) 3.99 ms on that path, against im2col's 0.62 and 0.96 ms. For C <=
SMALL_C_FORWARD (forward) and C <= SMALL_C_GRAD (dw) the three steps are fused instead, a
segment of SEG = 16 neighbouring tiles of one row of tiles at a time (the vector lanes):

    thread t, for its rows of tiles (image n, row of tiles r):
        the four input rows under them, zero-padded, every channel (once per row of tiles)
        per segment of 16 tiles:  V (16 x C, 16 lanes each) = B^T d B
            per filter f:  m[k] = sum over c of U[k][f, c] * V[k][c]   (16 vectors)
                           Y = A^T m A, 4 vectors, interleaved into a 2 x 32 block of y
    backward dW, per chunk of tile rows (R of them: V of the chunk, 16 KiB), filter by filter:
        per segment:  dM = A g A^T of dy's 2 x 32 block (read in place where it can be)
                      s[k][f, c] += dM[k] * V[k][c], lane by lane (a sum per lane)
        dw = G^T (s summed over lanes, chunks and threads) G

so Mw and dM stay in registers (C > 1: a block in L1), y and dy are touched once, and no
GEMM runs. A row of tiles narrower than SEG (conv1: 14 tiles) leaves lanes idle; a wider
one ends on a segment that overlaps the one before (y's numbers there are written twice; in
dW those lanes' V is 0). Each step is a loop over the 16 lanes that LLVM turns into vector
code; the rules that keep it so head the small-C section of the code. After (same machine
and benchmark, two runs, the machine shared with other work): conv1 forward 0.34 and 0.38
ms, backward (dw) 0.47 and 0.51 ms; im2col in the same runs 0.49 and 0.44, 0.84 and 0.83 ms.
With more channels the products grow C-fold and the GEMM path wins. Forward, float32, 2
threads, ms, small-C / chunked: C = 1: 0.42 / 1.17 (64x28x28 -> 32 filters), 0.38 / 0.41
(64x14x14 -> 64); C = 2: 0.88 / 0.97 and 0.69 / 0.45 (a 14x14 row of tiles fills 7 of the
16 lanes): SMALL_C_FORWARD = 1. Backward (dw), C = 1, 2, 3, 4, 8: 64x28x28 -> 32: 0.50,
0.82, 1.09, 1.45, 2.57 / 2.71, 2.52, 2.61, 2.41, 2.94; 64x14x14 -> 64: 0.32, 0.92, 1.24,
1.40, 2.67 / 1.16, 1.22, 1.28, 1.33, 1.39: SMALL_C_GRAD = 4.

The GPU twin, kernels/cuda/winograd.py, runs the same steps as batched CuPy array operations.
"""
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._numba import njit, prange, uintp
from .gemm import (
    blocking,
    macro_kernel,
    macro_kernel_taps,
    matmul,
    panels,
    scratch_tiles,
    split_bounds,
    uses_numba,
)
from .gemm import isa as gemm_isa

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
# Chunks of tiles (module header): each thread takes a contiguous range of tiles and works
# through it nb_max tiles at a time. Every layout is index arithmetic, so one function per
# transform writes (or reads) whichever GEMM operand the caller needs:
#   _panel_offset        where entry (r, s) of a matrix lies in the GEMM's packed panels
#   _tile_run            the tiles from p on that lie in one row of tiles (and one panel)
#   _input_tiles, _output_tiles, _grad_output_tiles   the transforms of a range of tiles
#   _filter_transform_nb, _grad_filter_transform_nb   the filters' (small)
#   _forward_chunks, _grad_weight_chunks              the chunk loops, one parallel launch
#   _input_transform_nb, ...                          the whole-batch BLAS path's transforms
# (the small-C path, after them, has its own section: _small_forward, _small_grad_weight)
# The hot loops index flat arrays with uintp(...) offsets: kernels/_numba.py says why.

# A chunk's V and Mw (or V^T and dM) should stay in the core's L2 (1 MiB on the project
# machine) next to the packed U; MNIST conv2 float32: 2 panels of 48 tiles, 0.59 MB. (1, 2
# or 3 panels measured the same there; 10 panels, 2.9 MB, made the forward 2x slower.)
CHUNK_BYTES = 640 * 1024


@njit(cache=True, nogil=True)
def _panel_offset(r, s, rows, w):
    """Where entry (r, s) of a matrix with `rows` rows lies when its columns are cut into
    panels of w, each panel stored row by row (rows x w). That is kernels/gemm/pack.py's
    packed B (w = NR), its packed A with rows and columns swapped (s = the row of A, r = the
    depth, w = MR), and plain C order when w is the number of columns."""
    return (s // w) * rows * w + r * w + s % w


@njit(cache=True, nogil=True)
def _tile_run(p, left, col, tiles, tw, w):
    """(n, t, u, count): tile p is tile (t, u) of image n, and `count` tiles from it on
    (at most `left`) lie in the same tile row with columns col.. not crossing a multiple of
    w (a panel edge). Along a run every offset moves by a constant step."""
    n = p // tiles
    t = (p - n * tiles) // tw
    u = p - n * tiles - t * tw
    return n, t, u, min(tw - u, left, w - col % w)


@njit(cache=True, nogil=True)
def _input_tiles(x, ph, pw, th, tw, p0, nb, v, kstride, tile_cols, w, col0, lines):
    """V[k][c, j] = (B^T d B)[k] of tile p0 + j (j < nb), d its 4x4 input in channel c (zero
    outside x), at v[k*kstride + o]:
        tile_cols:  o = _panel_offset(c, col0 + j, C, w)   V[k] (C x tiles), e.g. the
                                                           forward GEMM's packed B (w = NR)
        else:       o = _panel_offset(j, c, nb, w)         V[k]^T (nb x C), the dW GEMM's B
    lines: a 4 x (2*tw + 2) scratch, the four input rows under one row of tiles."""
    _, c_in, h, wd = x.shape
    tiles = th * tw
    width = 2 * tw + 2
    xf = x.ravel()
    vf = v.ravel()
    lf = lines.ravel()
    j = 0
    while j < nb:
        n, t, u0, cnt = _tile_run(p0 + j, nb - j, col0 + j, tiles, tw, w if tile_cols else nb)
        l0, l1 = 2 * u0, 2 * (u0 + cnt) + 2      # line columns the run reads (x column l - pw)
        lo = min(max(l0, pw), l1)                # [lo, hi): the ones inside x
        hi = max(min(l1, wd + pw), lo)
        rows_inside = 0 <= 2 * t - ph and 2 * t - ph + 4 <= h
        for c in range(c_in):
            top = ((n * c_in + c) * h + 2 * t - ph) * wd - pw  # x[n, c, 2t - ph, l - pw]
            # s = B^T d, combining the four rows of d a column at a time (rows d0-d2,
            # d1+d2, d2-d1, d1-d3): four lines of `width` columns, zero in the padding.
            # (Written out twice: a helper function called here costs 10%.)
            if rows_inside:  # most tile rows: straight from x
                for col in range(l0, lo):
                    for i in range(4):
                        lf[uintp(i * width + col)] = 0
                for col in range(lo, hi):
                    d0, d1 = xf[uintp(top + col)], xf[uintp(top + wd + col)]
                    d2, d3 = xf[uintp(top + 2 * wd + col)], xf[uintp(top + 3 * wd + col)]
                    lf[uintp(col)] = d0 - d2
                    lf[uintp(width + col)] = d1 + d2
                    lf[uintp(2 * width + col)] = d2 - d1
                    lf[uintp(3 * width + col)] = d1 - d3
                for col in range(hi, l1):
                    for i in range(4):
                        lf[uintp(i * width + col)] = 0
            else:  # a row outside x: copy the rows zero-padded first, then combine in place
                for i in range(4):
                    li = i * width
                    if 0 <= 2 * t - ph + i < h:
                        row = top + i * wd
                        for col in range(l0, lo):
                            lf[uintp(li + col)] = 0
                        for col in range(lo, hi):
                            lf[uintp(li + col)] = xf[uintp(row + col)]
                        for col in range(hi, l1):
                            lf[uintp(li + col)] = 0
                    else:
                        for col in range(l0, l1):
                            lf[uintp(li + col)] = 0
                for col in range(l0, l1):
                    d0, d1 = lf[uintp(col)], lf[uintp(width + col)]
                    d2, d3 = lf[uintp(2 * width + col)], lf[uintp(3 * width + col)]
                    lf[uintp(col)] = d0 - d2
                    lf[uintp(width + col)] = d1 + d2
                    lf[uintp(2 * width + col)] = d2 - d1
                    lf[uintp(3 * width + col)] = d1 - d3
            # V = s B per tile (the same combination of columns): 16 numbers, kstride apart
            if tile_cols:
                o, step = _panel_offset(c, col0 + j, c_in, w), 1
            else:
                o, step = _panel_offset(j, c, nb, w), w
            for e in range(cnt):
                col = 2 * (u0 + e)
                for i in range(4):
                    li = i * width + col
                    a, b = lf[uintp(li)], lf[uintp(li + 1)]
                    f, g = lf[uintp(li + 2)], lf[uintp(li + 3)]
                    k = o + e * step + 4 * i * kstride
                    vf[uintp(k)] = a - f
                    vf[uintp(k + kstride)] = b + f
                    vf[uintp(k + 2 * kstride)] = f - b
                    vf[uintp(k + 3 * kstride)] = b - g
        j += cnt


@njit(cache=True, nogil=True)
def _output_tiles(mw, kstride, ld, col0, p0, nb, th, tw, y):
    """y's 2x2 blocks of the tiles p0 + j (j < nb), Y = A^T m A with m[k] of filter f at
    mw[k*kstride + f*ld + col0 + j] (Mw[k] in C order, row length ld); a block's row or
    column past y's edge is cropped. Overwrites Mw[0..3] with the blocks."""
    _, m_out, ho, wo = y.shape
    tiles = th * tw
    mf = mw.ravel()
    yf = y.ravel()
    # Y = A^T m A for every tile at once (consecutive tiles are consecutive numbers of each
    # Mw[k], so this loop runs on vectors of tiles), Y[a, b] written over Mw[2a + b]: the
    # 16 numbers of a tile are read before its 4 are written
    for f in range(m_out):
        for j in range(nb):
            q = f * ld + col0 + j
            # s = A^T m, a column of m at a time (rows m0+m1+m2, m1-m2-m3), then Y = s A
            m0, m1 = mf[uintp(q)], mf[uintp(q + 4 * kstride)]
            m2, m3 = mf[uintp(q + 8 * kstride)], mf[uintp(q + 12 * kstride)]
            s00, s10 = m0 + m1 + m2, m1 - m2 - m3
            m0, m1 = mf[uintp(q + kstride)], mf[uintp(q + 5 * kstride)]
            m2, m3 = mf[uintp(q + 9 * kstride)], mf[uintp(q + 13 * kstride)]
            s01, s11 = m0 + m1 + m2, m1 - m2 - m3
            m0, m1 = mf[uintp(q + 2 * kstride)], mf[uintp(q + 6 * kstride)]
            m2, m3 = mf[uintp(q + 10 * kstride)], mf[uintp(q + 14 * kstride)]
            s02, s12 = m0 + m1 + m2, m1 - m2 - m3
            m0, m1 = mf[uintp(q + 3 * kstride)], mf[uintp(q + 7 * kstride)]
            m2, m3 = mf[uintp(q + 11 * kstride)], mf[uintp(q + 15 * kstride)]
            s03, s13 = m0 + m1 + m2, m1 - m2 - m3
            mf[uintp(q)] = s00 + s01 + s02
            mf[uintp(q + kstride)] = s01 - s02 - s03
            mf[uintp(q + 2 * kstride)] = s10 + s11 + s12
            mf[uintp(q + 3 * kstride)] = s11 - s12 - s13
    # the blocks into y, a run of tiles (part of a row of tiles) at a time
    j = 0
    while j < nb:
        n, t, u0, cnt = _tile_run(p0 + j, nb - j, 0, tiles, tw, nb)
        two_rows = 2 * t + 1 < ho
        for f in range(m_out):
            row = ((n * m_out + f) * ho + 2 * t) * wo   # y[n, f, 2t, 0]
            for e in range(cnt):
                q = f * ld + col0 + j + e
                ow = 2 * (u0 + e)
                two_cols = ow + 1 < wo
                yf[uintp(row + ow)] = mf[uintp(q)]
                if two_cols:
                    yf[uintp(row + ow + 1)] = mf[uintp(q + kstride)]
                if two_rows:
                    yf[uintp(row + wo + ow)] = mf[uintp(q + 2 * kstride)]
                    if two_cols:
                        yf[uintp(row + wo + ow + 1)] = mf[uintp(q + 3 * kstride)]
        j += cnt


@njit(cache=True, nogil=True)
def _grad_output_tiles(dy, th, tw, p0, nb, dm, kstride, tile_cols, w, col0):
    """dM[k][f, j] = (A g A^T)[k] of tile p0 + j (j < nb), g the 2x2 block of dy[n, f] under
    it (zero past dy's edge), at dm[k*kstride + o], o as in _input_tiles with filters for
    channels (tile_cols False, w = MR: dM[k] as the dW GEMM's packed A)."""
    _, m_out, ho, wo = dy.shape
    tiles = th * tw
    dyf = dy.ravel()
    df = dm.ravel()
    zero = dy.dtype.type(0)  # (a plain 0.0 would make the sums float64)
    j = 0
    while j < nb:
        n, t, u0, cnt = _tile_run(p0 + j, nb - j, col0 + j, tiles, tw, w if tile_cols else nb)
        two_rows = 2 * t + 1 < ho
        for f in range(m_out):
            row = ((n * m_out + f) * ho + 2 * t) * wo
            if tile_cols:
                o, step = _panel_offset(f, col0 + j, m_out, w), 1
            else:
                o, step = _panel_offset(j, f, nb, w), w
            for e in range(cnt):
                ow = 2 * (u0 + e)
                two_cols = ow + 1 < wo
                src = row + ow
                g00 = dyf[uintp(src)]
                g01 = dyf[uintp(src + 1)] if two_cols else zero
                g10 = dyf[uintp(src + wo)] if two_rows else zero
                g11 = dyf[uintp(src + wo + 1)] if two_rows and two_cols else zero
                # r = A g (rows g0, g0+g1, g0-g1, -g1), then dM = r A^T, the same on columns
                for i in range(4):
                    if i == 0:
                        a, b = g00, g01
                    elif i == 1:
                        a, b = g00 + g10, g01 + g11
                    elif i == 2:
                        a, b = g00 - g10, g01 - g11
                    else:
                        a, b = -g10, -g11
                    k = o + e * step + 4 * i * kstride
                    df[uintp(k)] = a
                    df[uintp(k + kstride)] = a + b
                    df[uintp(k + 2 * kstride)] = a - b
                    df[uintp(k + 3 * kstride)] = -b
        j += cnt


@njit(cache=True, nogil=True)
def _filter_transform_nb(w, mr, u):
    """U[k][m, c] = (G w[m, c] G^T)[k] at u[k, _panel_offset(c, m, C, mr)]: the forward
    GEMM's packed A (mr = MR), or U[k] in C order (mr = 1)."""
    m_out, c_in = w.shape[:2]
    half = w.dtype.type(0.5)
    t = np.empty((4, 3), dtype=w.dtype)
    for m in range(m_out):
        for c in range(c_in):
            for j in range(3):  # t = G g, a column of g at a time (rows g0, (g0+g1+g2)/2,
                g0, g1, g2 = w[m, c, 0, j], w[m, c, 1, j], w[m, c, 2, j]  # (g0-g1+g2)/2, g2)
                t[0, j] = g0
                t[1, j] = half * (g0 + g1 + g2)
                t[2, j] = half * (g0 - g1 + g2)
                t[3, j] = g2
            o = _panel_offset(c, m, c_in, mr)
            for i in range(4):  # U = t G^T, the same combination of the columns of t
                a, b, e = t[i, 0], t[i, 1], t[i, 2]
                u[4 * i, o] = a
                u[4 * i + 1, o] = half * (a + b + e)
                u[4 * i + 2, o] = half * (a - b + e)
                u[4 * i + 3, o] = e


@njit(cache=True, nogil=True)
def _grad_filter_transform_nb(du_parts, dw):
    """dw[m, c] = G^T dU G, dU[k][m, c] the sum of du_parts[:, k, m, c] (one part per
    thread)."""
    m_out, c_in = dw.shape[:2]
    half = dw.dtype.type(0.5)
    d = np.empty(16, dtype=dw.dtype)
    r = np.empty(12, dtype=dw.dtype)
    for m in range(m_out):
        for c in range(c_in):
            for k in range(16):
                d[k] = du_parts[0, k, m, c]
                for t in range(1, du_parts.shape[0]):
                    d[k] += du_parts[t, k, m, c]
            # r = G^T dU (rows d0 + (d1+d2)/2, (d1-d2)/2, (d1+d2)/2 + d3), then dw = r G
            for j in range(4):
                r[j] = d[j] + half * (d[4 + j] + d[8 + j])
                r[4 + j] = half * (d[4 + j] - d[8 + j])
                r[8 + j] = half * (d[4 + j] + d[8 + j]) + d[12 + j]
            for i in range(3):
                a, b, e, f = r[4 * i], r[4 * i + 1], r[4 * i + 2], r[4 * i + 3]
                dw[m, c, i, 0] = a + half * (b + e)
                dw[m, c, i, 1] = half * (b - e)
                dw[m, c, i, 2] = half * (b + e) + f


@njit(parallel=True, cache=True, nogil=True)
def _forward_chunks(isa, x, upack, ph, pw, th, tw, y, bounds, nb_max, vpacks, mws, lines,
                    mr, nr, kc, tiles):
    """Thread t, for its tiles bounds[t]:bounds[t+1], nb_max at a time: V (packed B panels)
    -> 16 GEMMs Mw[k] = U[k] @ V[k] (kernels.gemm's loops 1-2) -> y's blocks."""
    c_in = x.shape[1]
    m_out = y.shape[1]
    for t in prange(bounds.shape[0] - 1):
        for p0 in range(bounds[t], bounds[t + 1], nb_max):
            nb = min(nb_max, bounds[t + 1] - p0)
            _input_tiles(x, ph, pw, th, tw, p0, nb, vpacks[t], vpacks.shape[2], True, nr, 0,
                         lines[t])
            for k in range(16):
                mw = mws[t, k, :m_out * nb_max].reshape(m_out, nb_max)
                macro_kernel(isa, c_in, upack[k], vpacks[t, k], mw, 0, m_out, 0, nb,
                             False, mr, nr, kc, tiles[t])
            _output_tiles(mws[t], mws.shape[2], nb_max, 0, p0, nb, th, tw, y)


@njit(parallel=True, cache=True, nogil=True)
def _grad_weight_chunks(isa, dy, x, ph, pw, th, tw, bounds, nb_max, vpacks, dmpacks, du_parts,
                        offs, lines, mr, nr, kc, tiles):
    """Thread t, for its tiles, nb_max at a time: V^T (packed B) and dM (packed A) ->
    du_parts[t][k] += dM[k] @ V[k]^T, 16 GEMMs as deep as the chunk in one call, as the
    "taps" of kernels.gemm's macro_kernel_taps (offs[0], offs[1], offs[2]: where dM[k],
    V^T[k] and dU[k] start). Unlike macro_kernel, it adds a C narrower than NR (C = 32
    channels: 2 of the 3 vectors of a tile) straight from its registers, not through a
    scratch tile; it always adds, so du_parts starts at zero."""
    c_in = x.shape[1]
    m_out = dy.shape[1]
    vstride, mstride = vpacks.shape[1] // 16, dmpacks.shape[1] // 16
    for t in prange(bounds.shape[0] - 1):
        for p0 in range(bounds[t], bounds[t + 1], nb_max):
            nb = min(nb_max, bounds[t + 1] - p0)
            _input_tiles(x, ph, pw, th, tw, p0, nb, vpacks[t], vstride, False, nr, 0,
                         lines[t])
            _grad_output_tiles(dy, th, tw, p0, nb, dmpacks[t], mstride, False, mr, 0)
            macro_kernel_taps(isa, nb, dmpacks[t], offs[0], vpacks[t], offs[1], du_parts[t],
                              offs[2], m_out, c_in, mr, nr, kc, tiles[t])


# The BLAS path (kernels.gemm.uses_numba is False: MINIGRAD_GEMM=blas, or no AVX2 here):
# the whole batch's V, Mw and dM in C order, 16 np.matmul GEMMs between parallel transforms.


@njit(parallel=True, cache=True, nogil=True)
def _input_transform_nb(x, ph, pw, th, tw, v, bounds, lines):
    """V[k] (C x P) of every tile at v[k, :C*P], part t writing tiles bounds[t]:bounds[t+1]."""
    p_all = bounds[-1]
    for t in prange(bounds.shape[0] - 1):
        _input_tiles(x, ph, pw, th, tw, bounds[t], bounds[t + 1] - bounds[t], v,
                     v.shape[1], True, p_all, bounds[t], lines[t])


@njit(parallel=True, cache=True, nogil=True)
def _output_transform_nb(mw, y, th, tw, bounds):
    """y from Mw[k] (M x P) at mw[k, :M*P], part t taking tiles bounds[t]:bounds[t+1]."""
    p_all = bounds[-1]
    for t in prange(bounds.shape[0] - 1):
        _output_tiles(mw, mw.shape[1], p_all, bounds[t], bounds[t],
                      bounds[t + 1] - bounds[t], th, tw, y)


@njit(parallel=True, cache=True, nogil=True)
def _grad_output_transform_nb(dy, th, tw, dm, bounds):
    """dM[k] (M x P) of every tile at dm[k, :M*P], part t writing tiles bounds[t]:bounds[t+1]."""
    p_all = bounds[-1]
    for t in prange(bounds.shape[0] - 1):
        _grad_output_tiles(dy, th, tw, bounds[t], bounds[t + 1] - bounds[t], dm,
                           dm.shape[1], True, p_all, bounds[t])


# --------------------------------------------------------------------------- Numba, small C
# A layer with a handful of input channels (a first layer: C = 1 on MNIST) fuses the three
# steps per segment of SEG tiles, so that neither Mw nor dM is ever stored (module header).
# Every loop below is over the SEG tiles of a segment, a compile-time constant: LLVM turns
# each into vector code, one statement a vector (AVX-512, float32: one register). Three
# rules keep it so, each found by a loop that stayed scalar:
#   - all its accesses index with uintp(...) of the whole offset (kernels/_numba.py);
#   - the arrays it reads and writes are either one array at offsets a constant apart,
#     far enough that LLVM proves them disjoint (_OB and _MB below: with _MB right after
#     _OB's 4*SEG numbers it could not), or different arrays (the per-thread buffers blks,
#     vbs, rws, sums, totals): then LLVM checks at run time that they do not overlap.
#     Offsets a run-time distance apart in one array need a check per pair of accesses,
#     too many ("too many memory checks");
#   - no copy between two arrays in a SEG loop: fully unrolled first, it stays 16 scalar
#     moves (LLVM cannot prove the arrays apart); _copy16 moves 16 numbers as one vector.

SEG = 16      # tiles per segment: one AVX-512 float32 vector (two for float64)
_OB = 0       # in blks: the output (or dy) block, 2 rows x 2*SEG columns
_MB = 8 * SEG  # in blks: Mw (or dM) of one filter, 16 x SEG; a gap after _OB (rules above)
_BLK = _MB + 16 * SEG
# input channels up to which the small-C path runs (module header: measured crossovers)
SMALL_C_FORWARD = 1
SMALL_C_GRAD = 4
# the backward's chunk of tile rows: their V (float32, MNIST conv1: 16 tile rows, 16 KiB)
SMALL_CHUNK_BYTES = 16 * 1024


@intrinsic
def _copy16(typingctx, dst, do, src, so):
    """dst[do:do+16] = src[so:so+16]: one (unaligned) vector load and store."""
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array)
            and dst.dtype == src.dtype and dst.dtype in (types.float32, types.float64)
            and isinstance(do, types.Integer) and isinstance(so, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ty = signature.args[0].dtype
        vty = ir.VectorType(context.get_value_type(ty), 16)
        align = ty.bitwidth // 8

        def at(i):  # &array[offset] for the (array, offset) pair from argument i
            data = context.make_array(signature.args[i])(context, builder, args[i]).data
            off = context.cast(builder, args[i + 1], signature.args[i + 1], types.intp)
            return builder.bitcast(builder.gep(data, [off]), vty.as_pointer())

        builder.store(builder.load(at(2), align=align), at(0), align=align)
        return context.get_dummy_value()

    return types.void(dst, do, src, so), codegen


@njit(cache=True, nogil=True, inline="always")
def _copy_run(src, so, dst, do, length):
    """dst[do:do+length] = src[so:so+length]: 16 numbers at a time, the last 16 overlapping
    the ones before (the same numbers again); one at a time if length < 16."""
    if length >= SEG:
        b = 0
        while b < length - SEG:
            _copy16(dst, do + b, src, so + b)
            b += SEG
        _copy16(dst, do + length - SEG, src, so + length - SEG)
    else:
        for b in range(length):
            dst[uintp(do + b)] = src[uintp(so + b)]


def _row_width(tw):
    """Columns of the input rows under a row of tiles, as the segments read them."""
    return 2 * max(tw, SEG) + 2


@njit(cache=True, nogil=True, inline="always")
def _input_rows(x, n, t, ph, pw, wp, rw):
    """rw[(c*4 + i)*wp + j] = x[n, c, 2t - ph + i, j - pw]: the four input rows under tile
    row t of image n, every channel, zero outside x. The columns outside x are zero from the
    start (rw is made with zeros); only a row outside x is written there (zeros)."""
    _, c_in, h, wd = x.shape
    xf = x.ravel()
    j0 = max(0, pw)
    j1 = min(wp, wd + pw)
    zero = x.dtype.type(0)
    for c in range(c_in):
        for i in range(4):
            row = 2 * t - ph + i
            o = (c * 4 + i) * wp
            if 0 <= row < h:
                _copy_run(xf, ((n * c_in + c) * h + row) * wd + j0 - pw, rw, o + j0, j1 - j0)
            else:
                for j in range(wp):
                    rw[uintp(o + j)] = zero


@njit(cache=True, nogil=True, inline="always")
def _segment_input(c_in, rw, wp, u0, vw):
    """vw[(c*16 + k)*SEG + l] = (B^T d B)[k] of tile u0 + l (l < SEG), channel c, from the
    rows _input_rows left in rw."""
    for c in range(c_in):
        q = c * 4 * wp + 2 * u0
        v = c * 16 * SEG
        for l in range(SEG):
            r0 = uintp(q + 2 * l)
            r1 = uintp(q + wp + 2 * l)
            r2 = uintp(q + 2 * wp + 2 * l)
            r3 = uintp(q + 3 * wp + 2 * l)
            # B^T d, a column of d at a time (rows d0 - d2, d1 + d2, d2 - d1, d1 - d3)
            a0 = rw[r0] - rw[r2]
            a1 = rw[uintp(r0 + 1)] - rw[uintp(r2 + 1)]
            a2 = rw[uintp(r0 + 2)] - rw[uintp(r2 + 2)]
            a3 = rw[uintp(r0 + 3)] - rw[uintp(r2 + 3)]
            b0 = rw[r1] + rw[r2]
            b1 = rw[uintp(r1 + 1)] + rw[uintp(r2 + 1)]
            b2 = rw[uintp(r1 + 2)] + rw[uintp(r2 + 2)]
            b3 = rw[uintp(r1 + 3)] + rw[uintp(r2 + 3)]
            e0 = rw[r2] - rw[r1]
            e1 = rw[uintp(r2 + 1)] - rw[uintp(r1 + 1)]
            e2 = rw[uintp(r2 + 2)] - rw[uintp(r1 + 2)]
            e3 = rw[uintp(r2 + 3)] - rw[uintp(r1 + 3)]
            g0 = rw[r1] - rw[r3]
            g1 = rw[uintp(r1 + 1)] - rw[uintp(r3 + 1)]
            g2 = rw[uintp(r1 + 2)] - rw[uintp(r3 + 2)]
            g3 = rw[uintp(r1 + 3)] - rw[uintp(r3 + 3)]
            # then B on the right, the same combination of columns
            o = uintp(v + l)
            vw[o] = a0 - a2
            vw[uintp(o + SEG)] = a1 + a2
            vw[uintp(o + 2 * SEG)] = a2 - a1
            vw[uintp(o + 3 * SEG)] = a1 - a3
            vw[uintp(o + 4 * SEG)] = b0 - b2
            vw[uintp(o + 5 * SEG)] = b1 + b2
            vw[uintp(o + 6 * SEG)] = b2 - b1
            vw[uintp(o + 7 * SEG)] = b1 - b3
            vw[uintp(o + 8 * SEG)] = e0 - e2
            vw[uintp(o + 9 * SEG)] = e1 + e2
            vw[uintp(o + 10 * SEG)] = e2 - e1
            vw[uintp(o + 11 * SEG)] = e1 - e3
            vw[uintp(o + 12 * SEG)] = g0 - g2
            vw[uintp(o + 13 * SEG)] = g1 + g2
            vw[uintp(o + 14 * SEG)] = g2 - g1
            vw[uintp(o + 15 * SEG)] = g1 - g3


@njit(cache=True, nogil=True, inline="always")
def _segment_output(uf, ub, mc, vw, bw):
    """The output block (at bw[_OB..]) of one filter: Y = A^T (U * V) A of channel 0, U[k]
    at uf[k*mc + ub], V at vw[0..]."""
    ub, mc = uintp(ub), uintp(mc)
    w0, w1, w2, w3 = uf[ub], uf[ub + mc], uf[ub + 2 * mc], uf[ub + 3 * mc]
    w4, w5, w6, w7 = uf[ub + 4 * mc], uf[ub + 5 * mc], uf[ub + 6 * mc], uf[ub + 7 * mc]
    w8, w9, w10, w11 = uf[ub + 8 * mc], uf[ub + 9 * mc], uf[ub + 10 * mc], uf[ub + 11 * mc]
    w12, w13 = uf[ub + 12 * mc], uf[ub + 13 * mc]
    w14, w15 = uf[ub + 14 * mc], uf[ub + 15 * mc]
    for l in range(SEG):
        o = uintp(l)
        m0 = w0 * vw[uintp(o)]
        m1 = w1 * vw[uintp(o + 1 * SEG)]
        m2 = w2 * vw[uintp(o + 2 * SEG)]
        m3 = w3 * vw[uintp(o + 3 * SEG)]
        m4 = w4 * vw[uintp(o + 4 * SEG)]
        m5 = w5 * vw[uintp(o + 5 * SEG)]
        m6 = w6 * vw[uintp(o + 6 * SEG)]
        m7 = w7 * vw[uintp(o + 7 * SEG)]
        m8 = w8 * vw[uintp(o + 8 * SEG)]
        m9 = w9 * vw[uintp(o + 9 * SEG)]
        m10 = w10 * vw[uintp(o + 10 * SEG)]
        m11 = w11 * vw[uintp(o + 11 * SEG)]
        m12 = w12 * vw[uintp(o + 12 * SEG)]
        m13 = w13 * vw[uintp(o + 13 * SEG)]
        m14 = w14 * vw[uintp(o + 14 * SEG)]
        m15 = w15 * vw[uintp(o + 15 * SEG)]
        # Y = A^T m A (as in _output_tiles), the block's two rows interleaved: tile l's
        # 2x2 block at columns 2l, 2l + 1
        s00, s10 = m0 + m4 + m8, m4 - m8 - m12
        s01, s11 = m1 + m5 + m9, m5 - m9 - m13
        s02, s12 = m2 + m6 + m10, m6 - m10 - m14
        s03, s13 = m3 + m7 + m11, m7 - m11 - m15
        bw[uintp(_OB + 2 * l)] = s00 + s01 + s02
        bw[uintp(_OB + 2 * l + 1)] = s01 - s02 - s03
        bw[uintp(_OB + 2 * SEG + 2 * l)] = s10 + s11 + s12
        bw[uintp(_OB + 2 * SEG + 2 * l + 1)] = s11 - s12 - s13


@njit(cache=True, nogil=True, inline="always")
def _segment_output_mw(uf, ub, mc, vw, bw):
    """The output block: Y = A^T (U * V + Mw) A, channel 0 plus the other channels' products
    (Mw, at bw[_MB..], from _segment_products)."""
    ub, mc = uintp(ub), uintp(mc)
    w0, w1, w2, w3 = uf[ub], uf[ub + mc], uf[ub + 2 * mc], uf[ub + 3 * mc]
    w4, w5, w6, w7 = uf[ub + 4 * mc], uf[ub + 5 * mc], uf[ub + 6 * mc], uf[ub + 7 * mc]
    w8, w9, w10, w11 = uf[ub + 8 * mc], uf[ub + 9 * mc], uf[ub + 10 * mc], uf[ub + 11 * mc]
    w12, w13 = uf[ub + 12 * mc], uf[ub + 13 * mc]
    w14, w15 = uf[ub + 14 * mc], uf[ub + 15 * mc]
    for l in range(SEG):
        o = uintp(l)
        mo = uintp(_MB + l)
        m0 = w0 * vw[uintp(o)] + bw[uintp(mo)]
        m1 = w1 * vw[uintp(o + 1 * SEG)] + bw[uintp(mo + 1 * SEG)]
        m2 = w2 * vw[uintp(o + 2 * SEG)] + bw[uintp(mo + 2 * SEG)]
        m3 = w3 * vw[uintp(o + 3 * SEG)] + bw[uintp(mo + 3 * SEG)]
        m4 = w4 * vw[uintp(o + 4 * SEG)] + bw[uintp(mo + 4 * SEG)]
        m5 = w5 * vw[uintp(o + 5 * SEG)] + bw[uintp(mo + 5 * SEG)]
        m6 = w6 * vw[uintp(o + 6 * SEG)] + bw[uintp(mo + 6 * SEG)]
        m7 = w7 * vw[uintp(o + 7 * SEG)] + bw[uintp(mo + 7 * SEG)]
        m8 = w8 * vw[uintp(o + 8 * SEG)] + bw[uintp(mo + 8 * SEG)]
        m9 = w9 * vw[uintp(o + 9 * SEG)] + bw[uintp(mo + 9 * SEG)]
        m10 = w10 * vw[uintp(o + 10 * SEG)] + bw[uintp(mo + 10 * SEG)]
        m11 = w11 * vw[uintp(o + 11 * SEG)] + bw[uintp(mo + 11 * SEG)]
        m12 = w12 * vw[uintp(o + 12 * SEG)] + bw[uintp(mo + 12 * SEG)]
        m13 = w13 * vw[uintp(o + 13 * SEG)] + bw[uintp(mo + 13 * SEG)]
        m14 = w14 * vw[uintp(o + 14 * SEG)] + bw[uintp(mo + 14 * SEG)]
        m15 = w15 * vw[uintp(o + 15 * SEG)] + bw[uintp(mo + 15 * SEG)]
        # Y = A^T m A (as in _output_tiles), the block's two rows interleaved: tile l's
        # 2x2 block at columns 2l, 2l + 1
        s00, s10 = m0 + m4 + m8, m4 - m8 - m12
        s01, s11 = m1 + m5 + m9, m5 - m9 - m13
        s02, s12 = m2 + m6 + m10, m6 - m10 - m14
        s03, s13 = m3 + m7 + m11, m7 - m11 - m15
        bw[uintp(_OB + 2 * l)] = s00 + s01 + s02
        bw[uintp(_OB + 2 * l + 1)] = s01 - s02 - s03
        bw[uintp(_OB + 2 * SEG + 2 * l)] = s10 + s11 + s12
        bw[uintp(_OB + 2 * SEG + 2 * l + 1)] = s11 - s12 - s13


@njit(cache=True, nogil=True, inline="always")
def _segment_products(uf, ub, mc, vw, vo, bw, add):
    """Mw (bw[_MB..]) = U * V, or += when `add`, of one channel (V at vw[vo..])."""
    ub, mc = uintp(ub), uintp(mc)
    w0, w1, w2, w3 = uf[ub], uf[ub + mc], uf[ub + 2 * mc], uf[ub + 3 * mc]
    w4, w5, w6, w7 = uf[ub + 4 * mc], uf[ub + 5 * mc], uf[ub + 6 * mc], uf[ub + 7 * mc]
    w8, w9, w10, w11 = uf[ub + 8 * mc], uf[ub + 9 * mc], uf[ub + 10 * mc], uf[ub + 11 * mc]
    w12, w13 = uf[ub + 12 * mc], uf[ub + 13 * mc]
    w14, w15 = uf[ub + 14 * mc], uf[ub + 15 * mc]
    if add:
        for l in range(SEG):
            o = uintp(vo + l)
            mo = uintp(_MB + l)
            bw[uintp(mo)] += w0 * vw[uintp(o)]
            bw[uintp(mo + 1 * SEG)] += w1 * vw[uintp(o + 1 * SEG)]
            bw[uintp(mo + 2 * SEG)] += w2 * vw[uintp(o + 2 * SEG)]
            bw[uintp(mo + 3 * SEG)] += w3 * vw[uintp(o + 3 * SEG)]
            bw[uintp(mo + 4 * SEG)] += w4 * vw[uintp(o + 4 * SEG)]
            bw[uintp(mo + 5 * SEG)] += w5 * vw[uintp(o + 5 * SEG)]
            bw[uintp(mo + 6 * SEG)] += w6 * vw[uintp(o + 6 * SEG)]
            bw[uintp(mo + 7 * SEG)] += w7 * vw[uintp(o + 7 * SEG)]
            bw[uintp(mo + 8 * SEG)] += w8 * vw[uintp(o + 8 * SEG)]
            bw[uintp(mo + 9 * SEG)] += w9 * vw[uintp(o + 9 * SEG)]
            bw[uintp(mo + 10 * SEG)] += w10 * vw[uintp(o + 10 * SEG)]
            bw[uintp(mo + 11 * SEG)] += w11 * vw[uintp(o + 11 * SEG)]
            bw[uintp(mo + 12 * SEG)] += w12 * vw[uintp(o + 12 * SEG)]
            bw[uintp(mo + 13 * SEG)] += w13 * vw[uintp(o + 13 * SEG)]
            bw[uintp(mo + 14 * SEG)] += w14 * vw[uintp(o + 14 * SEG)]
            bw[uintp(mo + 15 * SEG)] += w15 * vw[uintp(o + 15 * SEG)]
    else:
        for l in range(SEG):
            o = uintp(vo + l)
            mo = uintp(_MB + l)
            bw[uintp(mo)] = w0 * vw[uintp(o)]
            bw[uintp(mo + 1 * SEG)] = w1 * vw[uintp(o + 1 * SEG)]
            bw[uintp(mo + 2 * SEG)] = w2 * vw[uintp(o + 2 * SEG)]
            bw[uintp(mo + 3 * SEG)] = w3 * vw[uintp(o + 3 * SEG)]
            bw[uintp(mo + 4 * SEG)] = w4 * vw[uintp(o + 4 * SEG)]
            bw[uintp(mo + 5 * SEG)] = w5 * vw[uintp(o + 5 * SEG)]
            bw[uintp(mo + 6 * SEG)] = w6 * vw[uintp(o + 6 * SEG)]
            bw[uintp(mo + 7 * SEG)] = w7 * vw[uintp(o + 7 * SEG)]
            bw[uintp(mo + 8 * SEG)] = w8 * vw[uintp(o + 8 * SEG)]
            bw[uintp(mo + 9 * SEG)] = w9 * vw[uintp(o + 9 * SEG)]
            bw[uintp(mo + 10 * SEG)] = w10 * vw[uintp(o + 10 * SEG)]
            bw[uintp(mo + 11 * SEG)] = w11 * vw[uintp(o + 11 * SEG)]
            bw[uintp(mo + 12 * SEG)] = w12 * vw[uintp(o + 12 * SEG)]
            bw[uintp(mo + 13 * SEG)] = w13 * vw[uintp(o + 13 * SEG)]
            bw[uintp(mo + 14 * SEG)] = w14 * vw[uintp(o + 14 * SEG)]
            bw[uintp(mo + 15 * SEG)] = w15 * vw[uintp(o + 15 * SEG)]


@njit(cache=True, nogil=True, inline="always")
def _dm_block(g, o, rs):
    """dM = A g A^T, the 16 numbers of one 4x4 tile, from the 2x2 block of dy at g[o], g[o+1]
    and, rs further, g[o+rs], g[o+rs+1] (as _grad_output_tiles)."""
    g00, g01 = g[o], g[uintp(o + 1)]
    g10, g11 = g[uintp(o + rs)], g[uintp(o + rs + 1)]
    # r = A g (rows g0, g0 + g1, g0 - g1, -g1), then dM = r A^T
    a0, b0 = g00, g01
    a1, b1 = g00 + g10, g01 + g11
    a2, b2 = g00 - g10, g01 - g11
    a3, b3 = -g10, -g11
    return (a0, a0 + b0, a0 - b0, -b0, a1, a1 + b1, a1 - b1, -b1,
            a2, a2 + b2, a2 - b2, -b2, a3, a3 + b3, a3 - b3, -b3)


@njit(cache=True, nogil=True, inline="always")
def _segment_grad(g, go, rs, vw, vo, aw, ao):
    """aw[ao + k*SEG + l] += dM[k] * V[k] of channel 0 (V at vw[vo..]), dM = A g A^T of the
    2 x 2*SEG block of dy at g[go..] (its rows rs apart)."""
    for l in range(SEG):
        o = uintp(go + 2 * l)
        (d0, d1, d2, d3, d4, d5, d6, d7, d8, d9, d10, d11, d12, d13, d14,
         d15) = _dm_block(g, o, rs)
        o = uintp(ao + l)
        v = uintp(vo + l)
        aw[uintp(o)] += d0 * vw[uintp(v)]
        aw[uintp(o + 1 * SEG)] += d1 * vw[uintp(v + 1 * SEG)]
        aw[uintp(o + 2 * SEG)] += d2 * vw[uintp(v + 2 * SEG)]
        aw[uintp(o + 3 * SEG)] += d3 * vw[uintp(v + 3 * SEG)]
        aw[uintp(o + 4 * SEG)] += d4 * vw[uintp(v + 4 * SEG)]
        aw[uintp(o + 5 * SEG)] += d5 * vw[uintp(v + 5 * SEG)]
        aw[uintp(o + 6 * SEG)] += d6 * vw[uintp(v + 6 * SEG)]
        aw[uintp(o + 7 * SEG)] += d7 * vw[uintp(v + 7 * SEG)]
        aw[uintp(o + 8 * SEG)] += d8 * vw[uintp(v + 8 * SEG)]
        aw[uintp(o + 9 * SEG)] += d9 * vw[uintp(v + 9 * SEG)]
        aw[uintp(o + 10 * SEG)] += d10 * vw[uintp(v + 10 * SEG)]
        aw[uintp(o + 11 * SEG)] += d11 * vw[uintp(v + 11 * SEG)]
        aw[uintp(o + 12 * SEG)] += d12 * vw[uintp(v + 12 * SEG)]
        aw[uintp(o + 13 * SEG)] += d13 * vw[uintp(v + 13 * SEG)]
        aw[uintp(o + 14 * SEG)] += d14 * vw[uintp(v + 14 * SEG)]
        aw[uintp(o + 15 * SEG)] += d15 * vw[uintp(v + 15 * SEG)]


@njit(cache=True, nogil=True, inline="always")
def _segment_grad_output(g, go, rs, bw):
    """dM (at bw[_MB..]) of the block of dy at g[go..] (rows rs apart)."""
    for l in range(SEG):
        o = uintp(go + 2 * l)
        (d0, d1, d2, d3, d4, d5, d6, d7, d8, d9, d10, d11, d12, d13, d14,
         d15) = _dm_block(g, o, rs)
        o = uintp(_MB + l)
        bw[uintp(o)] = d0
        bw[uintp(o + 1 * SEG)] = d1
        bw[uintp(o + 2 * SEG)] = d2
        bw[uintp(o + 3 * SEG)] = d3
        bw[uintp(o + 4 * SEG)] = d4
        bw[uintp(o + 5 * SEG)] = d5
        bw[uintp(o + 6 * SEG)] = d6
        bw[uintp(o + 7 * SEG)] = d7
        bw[uintp(o + 8 * SEG)] = d8
        bw[uintp(o + 9 * SEG)] = d9
        bw[uintp(o + 10 * SEG)] = d10
        bw[uintp(o + 11 * SEG)] = d11
        bw[uintp(o + 12 * SEG)] = d12
        bw[uintp(o + 13 * SEG)] = d13
        bw[uintp(o + 14 * SEG)] = d14
        bw[uintp(o + 15 * SEG)] = d15


@njit(cache=True, nogil=True, inline="always")
def _segment_grad_products(bw, vw, vo, aw, ao):
    """aw[ao + k*SEG + l] += dM[k] * V[k] of one channel (dM at bw[_MB..], V at vw[vo..])."""
    for l in range(SEG):
        o = uintp(ao + l)
        v = uintp(vo + l)
        mo = uintp(_MB + l)
        aw[uintp(o)] += bw[uintp(mo)] * vw[uintp(v)]
        aw[uintp(o + 1 * SEG)] += bw[uintp(mo + 1 * SEG)] * vw[uintp(v + 1 * SEG)]
        aw[uintp(o + 2 * SEG)] += bw[uintp(mo + 2 * SEG)] * vw[uintp(v + 2 * SEG)]
        aw[uintp(o + 3 * SEG)] += bw[uintp(mo + 3 * SEG)] * vw[uintp(v + 3 * SEG)]
        aw[uintp(o + 4 * SEG)] += bw[uintp(mo + 4 * SEG)] * vw[uintp(v + 4 * SEG)]
        aw[uintp(o + 5 * SEG)] += bw[uintp(mo + 5 * SEG)] * vw[uintp(v + 5 * SEG)]
        aw[uintp(o + 6 * SEG)] += bw[uintp(mo + 6 * SEG)] * vw[uintp(v + 6 * SEG)]
        aw[uintp(o + 7 * SEG)] += bw[uintp(mo + 7 * SEG)] * vw[uintp(v + 7 * SEG)]
        aw[uintp(o + 8 * SEG)] += bw[uintp(mo + 8 * SEG)] * vw[uintp(v + 8 * SEG)]
        aw[uintp(o + 9 * SEG)] += bw[uintp(mo + 9 * SEG)] * vw[uintp(v + 9 * SEG)]
        aw[uintp(o + 10 * SEG)] += bw[uintp(mo + 10 * SEG)] * vw[uintp(v + 10 * SEG)]
        aw[uintp(o + 11 * SEG)] += bw[uintp(mo + 11 * SEG)] * vw[uintp(v + 11 * SEG)]
        aw[uintp(o + 12 * SEG)] += bw[uintp(mo + 12 * SEG)] * vw[uintp(v + 12 * SEG)]
        aw[uintp(o + 13 * SEG)] += bw[uintp(mo + 13 * SEG)] * vw[uintp(v + 13 * SEG)]
        aw[uintp(o + 14 * SEG)] += bw[uintp(mo + 14 * SEG)] * vw[uintp(v + 14 * SEG)]
        aw[uintp(o + 15 * SEG)] += bw[uintp(mo + 15 * SEG)] * vw[uintp(v + 15 * SEG)]


@njit(parallel=True, cache=True, nogil=True)
def _small_forward(x, u, ph, pw, th, tw, y, bounds, blks, vbs, rws):
    """Thread t, for its tile rows bounds[t]:bounds[t+1] (row r: tile row r % th of image
    r // th), a segment of SEG tiles at a time: V (all channels, vbs[t]) -> per filter the
    16 products summed over channels and Y = A^T m A (blks[t]) -> y. U[k][m, c] at
    u[k, m*C + c]. A row of tiles narrower than SEG leaves lanes unused; one wider ends on a
    segment that overlaps the one before (its first tiles are computed and written twice)."""
    c_in = x.shape[1]
    m_out, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    mc = m_out * c_in
    wp = 2 * max(tw, SEG) + 2  # _row_width
    yf = y.ravel()
    uf = u.ravel()
    nseg = (tw + SEG - 1) // SEG
    for p in prange(bounds.shape[0] - 1):
        bw = blks[p]
        vw = vbs[p]
        rw = rws[p]
        for r in range(bounds[p], bounds[p + 1]):
            n = r // th
            t = r - n * th
            _input_rows(x, n, t, ph, pw, wp, rw)
            rows = min(2, ho - 2 * t)    # the block's rows and columns inside y
            for s in range(nseg):
                u0 = min(s * SEG, max(tw - SEG, 0))
                _segment_input(c_in, rw, wp, u0, vw)
                cols = min(2 * SEG, wo - 2 * u0)
                for f in range(m_out):
                    if c_in == 1:
                        _segment_output(uf, f, mc, vw, bw)
                    else:
                        for c in range(1, c_in):
                            _segment_products(uf, f * c_in + c, mc, vw, c * 16 * SEG, bw,
                                              c > 1)
                        _segment_output_mw(uf, f * c_in, mc, vw, bw)
                    for a in range(rows):
                        _copy_run(bw, _OB + a * 2 * SEG, yf,
                                  ((n * m_out + f) * ho + 2 * t + a) * wo + 2 * u0, cols)


@njit(parallel=True, cache=True, nogil=True)
def _small_grad_weight(dy, x, ph, pw, th, tw, bounds, rchunk, blks, dybs, vbs, rws, metas,
                       sums, totals, du_parts):
    """du_parts[t, k, f, c] = sum over thread t's tiles of dM[k][f] * V[k][c], thread t
    taking tile rows bounds[t]:bounds[t+1], rchunk at a time: V of the chunk's segments
    (vbs[t]), then filter by filter the chunk's dM times V, added lane by lane into sums[t]
    and that into the filter's totals[t] (a two-level sum, for float32's rounding), which
    are summed over lanes at the end. Lanes that a segment must not count (past the row of
    tiles, or counted by the segment before) have V = 0. dy's block is read in place when
    its two rows and the columns of its tiles lie inside dy (the columns past the row then
    read the next row's numbers, multiplied by V = 0), else copied into a zeroed block
    (dybs[t]); metas[t] holds where each block starts in dy and which way it is read."""
    c_in = x.shape[1]
    m_out, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    wp = 2 * max(tw, SEG) + 2  # _row_width
    dyf = dy.ravel()
    nseg = (tw + SEG - 1) // SEG
    vsize = c_in * 16 * SEG
    plane = ho * wo
    zero = dy.dtype.type(0)
    for p in prange(bounds.shape[0] - 1):
        bw = blks[p]
        db = dybs[p]
        vw = vbs[p]
        rw = rws[p]
        sw = sums[p]
        aw = totals[p]
        meta = metas[p]
        r0 = bounds[p]
        while r0 < bounds[p + 1]:
            r1 = min(r0 + rchunk, bounds[p + 1])
            nb = (r1 - r0) * nseg
            for r in range(r0, r1):   # V of the chunk's segments, and where their dy is
                n = r // th
                t = r - n * th
                _input_rows(x, n, t, ph, pw, wp, rw)
                rows = min(2, ho - 2 * t)
                for s in range(nseg):
                    u0 = min(s * SEG, max(tw - SEG, 0))
                    j = (r - r0) * nseg + s
                    vo = j * vsize
                    _segment_input(c_in, rw, wp, u0, vw[vo:])
                    lo = s * SEG - u0          # lanes counted by the segment before
                    hi = min(SEG, tw - u0)     # lanes past the row of tiles
                    for c in range(c_in):
                        for k in range(16):
                            o = vo + (c * 16 + k) * SEG
                            for l in range(lo):
                                vw[uintp(o + l)] = zero
                            for l in range(hi, SEG):
                                vw[uintp(o + l)] = zero
                    src = (n * m_out * ho + 2 * t) * wo + 2 * u0   # dy[n, 0, 2t, 2u0]
                    end = src + (m_out - 1) * plane + wo + 2 * SEG   # past the last block
                    in_place = rows == 2 and 2 * (u0 + hi) <= wo and end <= dyf.shape[0]
                    if not in_place:
                        for i in range(4 * SEG):
                            db[uintp(j * 4 * SEG + i)] = zero
                    meta[3 * j] = src
                    meta[3 * j + 1] = 0 if in_place else rows
                    meta[3 * j + 2] = min(2 * SEG, wo - 2 * u0)
            for f in range(m_out):
                for i in range(vsize):
                    sw[uintp(i)] = zero
                for j in range(nb):
                    src = meta[3 * j] + f * plane
                    rows = meta[3 * j + 1]
                    if rows == 0:   # in place
                        g, go, rs = dyf, src, wo
                    else:
                        go = j * 4 * SEG
                        _copy_run(dyf, src, db, go, meta[3 * j + 2])
                        if rows == 2:
                            _copy_run(dyf, src + wo, db, go + 2 * SEG, meta[3 * j + 2])
                        g, rs = db, 2 * SEG
                    vo = j * vsize
                    if c_in == 1:
                        _segment_grad(g, go, rs, vw, vo, sw, 0)
                    else:
                        _segment_grad_output(g, go, rs, bw)
                        for c in range(c_in):
                            _segment_grad_products(bw, vw, vo + c * 16 * SEG, sw,
                                                   c * 16 * SEG)
                ao = f * vsize
                for i in range(vsize):
                    aw[uintp(ao + i)] += sw[uintp(i)]
            r0 = r1
        for f in range(m_out):
            for c in range(c_in):
                for k in range(16):
                    o = ((f * c_in + c) * 16 + k) * SEG
                    total = zero
                    for l in range(SEG):
                        total += aw[uintp(o + l)]
                    du_parts[p, k, f, c] = total


# --------------------------------------------------------------------------- Numba drivers


def _kstride(size, dtype):
    """Numbers between two of the 16 matrices of a chunk buffer: `size` rounded up to whole
    64-byte cache lines, plus one line. A transform touches all 16 at once, and were they a
    multiple of 4 KiB apart, all 16 lines would fall into one set of the L1 cache (12 ways
    on the project machine) and evict each other: MNIST conv2's 24 KiB apart made the
    transforms 2-6x slower. (The spare line also keeps two threads' scratch rows off one
    cache line: `lines`.)"""
    line = 64 // np.dtype(dtype).itemsize
    return panels(size, line) + line


def _plan(n_tiles, c, m, dtype):
    """(parts, bounds, nb_max): one part of the tiles per thread (whole NR panels, each part
    non-empty), worked through nb_max tiles (whole panels) at a time."""
    nr = blocking(dtype)["nr"]
    parts = max(1, min(numba.get_num_threads(), -(-n_tiles // nr)))
    bounds = split_bounds(n_tiles, parts, nr)
    panel_bytes = 16 * (c + m) * nr * np.dtype(dtype).itemsize  # V + Mw of NR tiles
    nb_max = nr * max(1, CHUNK_BYTES // panel_bytes)
    return parts, bounds, min(nb_max, panels(int(np.diff(bounds).max()), nr))


def _rows_plan(rows):
    """(parts, bounds): the small-C path's split of the tile rows, one part per thread."""
    parts = max(1, min(numba.get_num_threads(), rows))
    return parts, split_bounds(rows, parts, 1)


def workspace_bytes_numba(x_shape, w_shape, stride, padding, itemsize):
    """The Numba forward's buffers (module header): the packed U, per thread a chunk's V
    and Mw and four input rows; on the BLAS path U, the whole batch's V and Mw, the rows;
    on the small-C path U and per thread an output block, a segment's V and input rows."""
    check("workspace_bytes", x_shape, w_shape, stride)
    n, c, _, _ = x_shape
    m = w_shape[0]
    _, _, th, tw = geometry(x_shape, padding)
    p = n * th * tw
    dtype = np.float32 if itemsize == 4 else np.float64
    if c <= SMALL_C_FORWARD:  # U; per thread the blocks, a segment's V, the input rows
        parts = _rows_plan(n * th)[0]
        return itemsize * (16 * m * c + parts * (
            _kstride(_BLK, dtype) + _kstride(16 * SEG * c, dtype)
            + _kstride(4 * c * _row_width(tw), dtype)))
    parts, _, nb_max = _plan(p, c, m, dtype)
    lines = parts * _kstride(4 * (2 * tw + 2), dtype)
    if not uses_numba(dtype):  # U, V and Mw of the whole batch
        return itemsize * (16 * (m * c + _kstride(c * p, dtype) + _kstride(m * p, dtype))
                           + lines)
    upack = 16 * panels(m, blocking(dtype)["mr"]) * c
    chunk = 16 * (_kstride(c * nb_max, dtype) + _kstride(m * nb_max, dtype))  # V, Mw
    return itemsize * (upack + parts * chunk + lines)


def _forward_small(x, w, padding):
    """The small-C path (module header): no GEMM, Mw never stored."""
    n, c = x.shape[:2]
    m = w.shape[0]
    ho, wo, th, tw = geometry(x.shape, padding)
    dt = x.dtype
    parts, bounds = _rows_plan(n * th)
    u = np.empty((16, m * c), dtype=dt)                      # U[k][m, c] at u[k, m*C + c]
    _filter_transform_nb(w, 1, u)
    blks = np.empty((parts, _kstride(_BLK, dt)), dtype=dt)   # (_kstride: no false sharing)
    vbs = np.empty((parts, _kstride(16 * SEG * c, dt)), dtype=dt)
    rws = np.zeros((parts, _kstride(4 * c * _row_width(tw), dt)), dtype=dt)
    y = np.empty((n, m, ho, wo), dtype=dt)
    _small_forward(x, u, padding[0], padding[1], th, tw, y, bounds, blks, vbs, rws)
    return y


def _forward_numba(x, w, padding):
    n, c = x.shape[:2]
    if c <= SMALL_C_FORWARD:
        return _forward_small(x, w, padding)
    m = w.shape[0]
    ph, pw = padding
    ho, wo, th, tw = geometry(x.shape, padding)
    p = n * th * tw
    dt = x.dtype
    parts, bounds, nb_max = _plan(p, c, m, dt)
    lines = np.empty((parts, _kstride(4 * (2 * tw + 2), dt)), dtype=dt)  # (no false sharing)
    y = np.empty((n, m, ho, wo), dtype=dt)
    if not uses_numba(dt):                                   # whole batch, NumPy's BLAS
        u = np.empty((16, m, c), dtype=dt)
        _filter_transform_nb(w, 1, u.reshape(16, m * c))
        v = np.empty((16, _kstride(c * p, dt)), dtype=dt)
        _input_transform_nb(x, ph, pw, th, tw, v, bounds, lines)
        mw = np.empty((16, _kstride(m * p, dt)), dtype=dt)
        matmul(u, v[:, :c * p].reshape(16, c, p),            # 16 GEMMs (M x C) @ (C x P)
               out=mw[:, :m * p].reshape(16, m, p))
        _output_transform_nb(mw, y, th, tw, bounds)
        return y
    blk = blocking(dt)
    mr, nr = blk["mr"], blk["nr"]
    upack = np.zeros((16, panels(m, mr) * c), dtype=dt)      # U[k] as packed A
    _filter_transform_nb(w, mr, upack)
    vpacks = np.zeros((parts, 16, _kstride(c * nb_max, dt)), dtype=dt)  # V, packed B
    mws = np.empty((parts, 16, _kstride(m * nb_max, dt)), dtype=dt)      # Mw (M x nb_max)
    _forward_chunks(gemm_isa(), x, upack, ph, pw, th, tw, y, bounds, nb_max, vpacks, mws,
                    lines, mr, nr, blk["kc"], scratch_tiles(dt, parts))
    return y


def forward_numba(x, w, stride, padding):
    check("conv2d_forward", x.shape, w.shape, stride)
    return _forward_numba(x, w, padding)


def _grad_weight_small(dy, x, padding, dw):
    """The small-C path's dw (module header): dM never stored."""
    n, c = x.shape[:2]
    m = dy.shape[1]
    _, _, th, tw = geometry(x.shape, padding)
    dt = x.dtype
    parts, bounds = _rows_plan(n * th)
    nseg = -(-tw // SEG)
    vseg = 16 * SEG * c                                      # one segment's V
    rchunk = max(1, SMALL_CHUNK_BYTES // (nseg * vseg * dt.itemsize))
    rchunk = min(rchunk, int(np.diff(bounds).max()))
    blks = np.empty((parts, _kstride(_BLK, dt)), dtype=dt)
    dybs = np.empty((parts, _kstride(rchunk * nseg * 4 * SEG, dt)), dtype=dt)
    vbs = np.empty((parts, _kstride(rchunk * nseg * vseg, dt)), dtype=dt)
    rws = np.zeros((parts, _kstride(4 * c * _row_width(tw), dt)), dtype=dt)
    metas = np.empty((parts, 3 * rchunk * nseg + 8), dtype=np.int64)
    sums = np.empty((parts, _kstride(vseg, dt)), dtype=dt)
    totals = np.zeros((parts, _kstride(m * vseg, dt)), dtype=dt)
    du_parts = np.empty((parts, 16, m, c), dtype=dt)
    _small_grad_weight(dy, x, padding[0], padding[1], th, tw, bounds, rchunk, blks, dybs,
                       vbs, rws, metas, sums, totals, du_parts)
    _grad_filter_transform_nb(du_parts, dw)


def _grad_weight_numba(dy, x, padding, dw):
    """dw = G^T dU G, dU[k] the sum over all tiles of dM[k] @ V[k]^T."""
    n, c = x.shape[:2]
    if c <= SMALL_C_GRAD:
        _grad_weight_small(dy, x, padding, dw)
        return
    m = dy.shape[1]
    ph, pw = padding
    _, _, th, tw = geometry(x.shape, padding)
    p = n * th * tw
    dt = x.dtype
    parts, bounds, nb_max = _plan(p, c, m, dt)
    lines = np.empty((parts, _kstride(4 * (2 * tw + 2), dt)), dtype=dt)  # (no false sharing)
    if not uses_numba(dt):                                   # whole batch, NumPy's BLAS
        v = np.empty((16, _kstride(c * p, dt)), dtype=dt)
        _input_transform_nb(x, ph, pw, th, tw, v, bounds, lines)
        dm = np.empty((16, _kstride(m * p, dt)), dtype=dt)
        _grad_output_transform_nb(dy, th, tw, dm, bounds)
        du = matmul(dm[:, :m * p].reshape(16, m, p),         # 16 GEMMs (M x P) @ (P x C)
                    v[:, :c * p].reshape(16, c, p).transpose(0, 2, 1))
        _grad_filter_transform_nb(du[None], dw)
        return
    blk = blocking(dt)
    mr, nr = blk["mr"], blk["nr"]
    # zeros: the panels' lanes past C (or M) are never written, and feed only results
    # that are dropped
    vstride = _kstride(panels(c, nr) * nb_max, dt)
    mstride = _kstride(panels(m, mr) * nb_max, dt)
    vpacks = np.zeros((parts, 16 * vstride), dtype=dt)      # V^T[k] as packed B, k*vstride on
    dmpacks = np.zeros((parts, 16 * mstride), dtype=dt)     # dM[k] as packed A, k*mstride on
    du_parts = np.zeros((parts, 16 * m, c), dtype=dt)       # dU[k]: rows k*M.. (M x C)
    offs = np.arange(16) * np.array([[mstride], [vstride], [m * c]])
    _grad_weight_chunks(gemm_isa(), dy, x, ph, pw, th, tw, bounds, nb_max, vpacks, dmpacks,
                        du_parts, offs, lines, mr, nr, blk["kc"], scratch_tiles(dt, parts))
    _grad_filter_transform_nb(du_parts.reshape(parts, 16, m, c), dw)


def backward_numba(dy, x, w, stride, padding, need_dx=True):
    check("conv2d_backward", x.shape, w.shape, stride)
    ph, pw = padding
    dx = _forward_numba(dy, flipped_kernel(w), (2 - ph, 2 - pw)) if need_dx else None
    dw = np.empty_like(w)
    _grad_weight_numba(dy, x, padding, dw)
    return dx, dw
