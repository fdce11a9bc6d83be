"""The tests' one oracle for convolution and max pooling (in the spirit of tinygrad's
helper_test_op): every conv and pool test, CPU and CUDA, asks this module what the answer is.

* the output-size formula, written once: `out_size`, `conv_out_shape`, `pool_out_shape`;
* PyTorch's answer, values and gradients by autograd, always in float64 on the CPU (an
  exact reference to compare float32 and float64 results with): `torch_conv`, `torch_pool`.
  This is the only place in tests/ that calls torch's conv2d and max_pool2d;
* one tolerance table, per dtype: `TOL`, used through `assert_close`;
* the case grids the tests share: `CONV_CASES` (CPU parity tests), `CUDA_CASES` (the
  emulated and the real CUDA tests), `POOL_CASES`, and hypothesis strategies for both;
* `check_conv` / `check_pool`: run an implementation and PyTorch on the same arrays and
  compare y, dx, dw (and the pool's argmax): dtype, shape and values.

tests/ is on sys.path while pytest runs (it holds conftest.py), so a test writes
`import oracle`.
"""
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import assume
from hypothesis import strategies as st

DTYPES = (np.float32, np.float64)


# ------------------------------------------------------------------------- shapes


def pair(v):
    """2 -> (2, 2); (2, 1) -> (2, 1)."""
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v))
    a, b = v
    return (int(a), int(b))


def out_size(h, w, kh, kw, stride, padding=0):
    """Output (height, width) of a window of kh x kw swept over an h x w image padded by
    `padding` on each side, moving `stride` at a time. Windows that would hang over the
    padded edge are not taken, hence the floor division."""
    (sh, sw), (ph, pw) = pair(stride), pair(padding)
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def conv_out_shape(x_shape, w_shape, stride, padding):
    """(N, M, Ho, Wo) of conv2d(x (N, C, H, W), w (M, C, KH, KW))."""
    (n, _, h, w), (m, _, kh, kw) = x_shape, w_shape
    return (n, m) + out_size(h, w, kh, kw, stride, padding)


def pool_out_shape(x_shape, kernel, stride=None):
    """(N, C, Ho, Wo) of max pooling; stride None means stride = kernel, as in PyTorch."""
    n, c, h, w = x_shape
    kh, kw = pair(kernel)
    return (n, c) + out_size(h, w, kh, kw, pair(kernel) if stride is None else stride)


# ------------------------------------------------------------------------- tolerances

# (rtol, atol) per dtype. The reference is exact to float64 rounding; what is left is the
# order in which our kernels add their terms. atol is scaled by the largest |reference|
# value (at least 1): a sum of many terms is judged against its size, so an element that
# cancels to nearly 0 is not asked for a relative precision no float sum has.
TOL = {
    np.dtype(np.float32): (1e-4, 2e-5),
    np.dtype(np.float64): (1e-11, 1e-12),
}


def tol(dtype, want=None):
    """rtol/atol for np.testing.assert_allclose, for results of `dtype` compared to `want`."""
    rtol, atol = TOL[np.dtype(dtype)]
    scale = 1.0 if want is None else max(1.0, float(np.abs(want).max(initial=0.0)))
    return dict(rtol=rtol, atol=atol * scale)


def to_numpy(a):
    """A numpy array from a numpy, CuPy (or CuPy stand-in) array."""
    return a if isinstance(a, np.ndarray) else a.get()


def assert_close(got, want, what, dtype=None):
    """got must have `dtype` (if given) and want's shape, and be within TOL of want."""
    got = to_numpy(got)
    want = np.asarray(want)
    dtype = np.dtype(got.dtype if dtype is None else dtype)
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}, want {dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}"
    np.testing.assert_allclose(got, want, **tol(dtype, want), err_msg=what)


def assert_conv_close(got, want, dtype, what):
    """(y, dx, dw) against (y, dx, dw)."""
    for g, r, name in zip(got, want, ("y", "dx", "dw"), strict=True):
        assert_close(g, r, f"{name} {what}", dtype)


# ------------------------------------------------------------------------- PyTorch


def _torch():
    return pytest.importorskip("torch")


def _t(torch, a, grad=False):
    return torch.tensor(np.ascontiguousarray(a, dtype=np.float64), requires_grad=grad)


def torch_conv(x, w, dy, stride=1, padding=0):
    """y, dx, dw of a bias-free conv2d from PyTorch autograd, float64, on the CPU."""
    torch = _torch()
    xt, wt = _t(torch, x, True), _t(torch, w, True)
    y = torch.nn.functional.conv2d(xt, wt, stride=pair(stride), padding=pair(padding))
    y.backward(_t(torch, dy))
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()


def torch_pool(x, dy, kernel, stride=None):
    """y, argmax, dx of max pooling from PyTorch autograd, float64, on the CPU. argmax holds,
    per output, the flat index h * W + w of the chosen input (the first maximum on ties)."""
    torch = _torch()
    xt = _t(torch, x, True)
    stride = kernel if stride is None else stride
    y, arg = torch.nn.functional.max_pool2d(xt, pair(kernel), pair(stride), return_indices=True)
    y.backward(_t(torch, dy))
    return y.detach().numpy(), arg.numpy(), xt.grad.numpy()


def torch_pool_relu(x, dy, kernel, stride=None):
    """y and dx of relu(max_pool2d(x)) from PyTorch autograd, float64, on the CPU: the
    oracle for the fused pool + ReLU (kernels.maxpool2d_forward(..., relu=True))."""
    torch = _torch()
    xt = _t(torch, x, True)
    stride = kernel if stride is None else stride
    y = torch.relu(torch.nn.functional.max_pool2d(xt, pair(kernel), pair(stride)))
    y.backward(_t(torch, dy))
    return y.detach().numpy(), xt.grad.numpy()


# ------------------------------------------------------------------------- case grids


@dataclass(frozen=True)
class ConvCase:
    """One convolution problem: shapes, stride and padding (pairs)."""

    x_shape: tuple
    w_shape: tuple
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)

    @classmethod
    def of(cls, n, c, h, w, m, kh, kw, stride=1, padding=0):
        return cls((n, c, h, w), (m, c, kh, kw), pair(stride), pair(padding))

    @property
    def y_shape(self):
        return conv_out_shape(self.x_shape, self.w_shape, self.stride, self.padding)

    @property
    def id(self):
        (n, c, h, w), (m, _, kh, kw) = self.x_shape, self.w_shape
        (sh, sw), (ph, pw) = self.stride, self.padding
        return f"x{n}x{c}x{h}x{w}-w{m}x{kh}x{kw}-s{sh}{sw}-p{ph}{pw}"

    def data(self, dtype, seed=0):
        """x, w, dy: standard normal, drawn from a generator seeded by `seed` and the case."""
        rng = np.random.default_rng([seed, *self.x_shape, *self.w_shape, *self.stride,
                                     *self.padding])
        return tuple(rng.standard_normal(s).astype(dtype)
                     for s in (self.x_shape, self.w_shape, self.y_shape))


@dataclass(frozen=True)
class PoolCase:
    """One max-pooling problem; stride None means stride = kernel."""

    x_shape: tuple
    kernel: object
    stride: object = None

    @property
    def kernel_pair(self):
        return pair(self.kernel)

    @property
    def stride_pair(self):
        return pair(self.kernel if self.stride is None else self.stride)

    @property
    def y_shape(self):
        return pool_out_shape(self.x_shape, self.kernel, self.stride)

    @property
    def id(self):
        (kh, kw), (sh, sw) = self.kernel_pair, self.stride_pair
        default = "" if self.stride is not None else "d"
        return "x" + "x".join(map(str, self.x_shape)) + f"-k{kh}{kw}-s{sh}{sw}{default}"

    def data(self, dtype, seed=0):
        """x and dy, standard normal."""
        rng = np.random.default_rng([seed, *self.x_shape, *self.kernel_pair,
                                     *self.stride_pair])
        return tuple(rng.standard_normal(s).astype(dtype) for s in (self.x_shape, self.y_shape))


C = ConvCase.of
# The CPU parity grid (every algorithm x backend x dtype): strides 1-3, paddings 0-2,
# non-square and 1x1 kernels, kernels as large as the (padded) input, 1x1 outputs.
CONV_CASES = [
    C(2, 3, 7, 7, 4, 3, 3, 1, 0),
    C(2, 3, 7, 7, 4, 3, 3, 1, 1),                 # the usual 3x3 "same"
    C(2, 3, 8, 7, 4, 3, 3, 1, 1),
    C(2, 3, 8, 7, 5, 3, 3, 2, 0),                 # stride 2, no padding
    C(1, 2, 9, 10, 3, 2, 3, 2, 1),
    C(1, 2, 9, 9, 3, 3, 2, (3, 1), (2, 1)),       # non-square kernel, mixed stride/pad
    C(3, 2, 11, 9, 5, 3, 2, 3, 2),
    C(2, 3, 10, 8, 4, 2, 4, (2, 1), (2, 0)),      # wide kernel, pad only in H
    C(2, 4, 6, 8, 3, 1, 4, (2, 1), (0, 2)),
    C(2, 4, 6, 6, 3, 1, 1),                       # 1x1
    C(2, 3, 5, 6, 2, 1, 1, (2, 3), (1, 2)),       # 1x1 with stride and padding
    C(2, 1, 5, 5, 2, 5, 5, (1, 2), (2, 1)),
    C(1, 3, 4, 4, 2, 4, 4),                       # kernel == input: 1x1 output
    C(2, 2, 5, 5, 3, 5, 5),                       # kernel == input
    C(1, 2, 4, 5, 3, 6, 9, 1, (1, 2)),            # kernel == padded input: 1x1 output
    C(2, 2, 3, 3, 3, 5, 5, (3, 2), 2),            # kernel > input, fits padded
    C(1, 1, 3, 3, 2, 5, 5, 3, 2),                 # kernel larger than input, stride 3
    C(3, 1, 6, 5, 1, 2, 3, (3, 2), (1, 0)),       # one channel, one filter
    C(4, 8, 12, 12, 8, 3, 3, 2, 1),
    C(1, 1, 1, 1, 1, 1, 1),                       # everything 1
    # padding >= kernel at stride 1 with C >= 8 (im2col's and kn2row-aa's "windows" dx
    # GEMM): dy has more rows than ph + H, which overran their dz buffer (heap corruption)
    C(2, 16, 5, 7, 16, 1, 1, 1, 2),               # 1x1 kernel, padding 2
    C(2, 16, 4, 5, 9, 3, 3, 1, 3),                # 3x3 kernel, padding 3
]

# The CUDA grid, shared by test_cuda_emulate.py (kernels run on the CPU, one thread at a
# time) and test_cuda_gpu.py: windows that hang over the padded edge (output sizes rounded
# down), strides 1-3, paddings 0-2, non-square kernels.
CUDA_CASES = [
    C(2, 3, 7, 6, 4, 3, 2),
    C(1, 2, 8, 9, 3, 3, 3, 2, 1),
    C(2, 1, 9, 7, 2, 2, 3, (3, 2), (2, 1)),
    C(1, 3, 5, 5, 2, 1, 1),
    C(2, 2, 6, 10, 3, 4, 2, (2, 3), (0, 2)),
    C(1, 2, 5, 6, 2, 5, 3, (1, 2), (2, 0)),
    C(1, 1, 4, 4, 2, 3, 3, 3, 2),
    C(3, 2, 4, 7, 1, 2, 5, (1, 3), (1, 2)),
]
# A real layer (MNIST conv2 at batch 8): 2^16+ threads per launch, for the GPU only.
REAL_LAYER = C(8, 16, 28, 28, 32, 3, 3, 1, 1)
del C

# Max pooling: default stride, overlapping, disjoint, gapped windows, ragged edges, one
# window per image. Shared by test_pool_parity.py and both CUDA files.
POOL_CASES = [
    PoolCase((2, 3, 8, 8), 2),
    PoolCase((2, 3, 9, 7), (3, 2), (2, 1)),       # overlapping rows and columns
    PoolCase((1, 2, 7, 7), 3, 1),                 # heavy overlap
    PoolCase((3, 1, 5, 6), (2, 3), (3, 2)),       # gaps between windows
    PoolCase((2, 2, 4, 4), 4),                    # one window
    PoolCase((2, 3, 6, 6), 2, 2),
    PoolCase((1, 2, 7, 8), 3, 2),                 # overlapping, ragged edge
    PoolCase((2, 1, 9, 7), (3, 2), (1, 3)),
    PoolCase((1, 2, 5, 9), (2, 4), (3, 2)),
    PoolCase((1, 1, 4, 4), 4, 1),
]
REAL_POOL = PoolCase((8, 16, 28, 28), 2, 2)


def ids(cases):
    return [c.id for c in cases]


@st.composite
def conv_cases(draw):
    """(ConvCase, dtype): any shape up to 4x8x12x12 with kernels up to 5x5 that fit the
    padded input, strides 1-3, paddings 0-2."""
    n, c, m = draw(st.integers(1, 4)), draw(st.integers(1, 8)), draw(st.integers(1, 8))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    assume(kh <= h + 2 * padding[0] and kw <= w + 2 * padding[1])
    return ConvCase.of(n, c, h, w, m, kh, kw, stride, padding), draw(st.sampled_from(DTYPES))


@st.composite
def pool_cases(draw):
    """PoolCase: windows up to 4x4 that fit a 1-10 x 1-10 image, strides 1-4."""
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    assume(kh <= h and kw <= w)
    return PoolCase((n, c, h, w), (kh, kw), stride)


# ------------------------------------------------------------------------- the checks


def check_conv(forward, backward, x, w, dy, stride, padding, what=""):
    """Run `forward(x, w, stride, padding) -> y` and `backward(dy, x, w, stride, padding)
    -> (dx, dw)` and compare each with PyTorch: dtype (x's: gradients keep their input's
    dtype), shape and values. Returns y, dx, dw as numpy arrays for further checks."""
    dtype = x.dtype
    got = forward(x, w, stride, padding), *backward(dy, x, w, stride, padding)
    got = tuple(to_numpy(a) for a in got)
    tag = f"{what} x{x.shape} w{w.shape} s{stride} p{padding} {dtype}".strip()
    assert_conv_close(got, torch_conv(x, w, dy, stride, padding), dtype, f"vs torch, {tag}")
    return got


def check_pool(forward, backward, x, dy, kernel, stride, what=""):
    """Run `forward(x, kernel, stride) -> (y, argmax)` and `backward(dy, argmax, x.shape,
    kernel, stride) -> dx` and compare with PyTorch: y and argmax exactly (a max is exact, and
    ties go to the first maximum), argmax as int64, dx (x's dtype) within TOL. Also checks
    that each argmax points at the value it claims. Returns y, argmax, dx as numpy arrays."""
    tag = f"{what} x{x.shape} k{kernel} s{stride} {x.dtype}".strip()
    y, arg = forward(x, kernel, stride)
    dx = backward(dy, arg, x.shape, kernel, stride)
    y, arg, dx = to_numpy(y), to_numpy(arg), to_numpy(dx)
    ty, targ, tdx = torch_pool(x, dy, kernel, stride)
    assert y.dtype == x.dtype, f"y {tag}: dtype {y.dtype}"
    assert arg.dtype == np.int64, f"argmax {tag}: dtype {arg.dtype}"
    np.testing.assert_array_equal(y, ty, err_msg=f"y vs torch, {tag}")
    np.testing.assert_array_equal(arg, targ, err_msg=f"argmax vs torch, {tag}")
    n, c, h, w = x.shape
    picked = np.take_along_axis(x.reshape(n, c, h * w), arg.reshape(n, c, -1), 2)
    np.testing.assert_array_equal(picked.reshape(y.shape), y, err_msg=f"argmax value, {tag}")
    assert_close(dx, tdx, f"dx vs torch, {tag}", x.dtype)
    return y, arg, dx
