"""Every convolution algorithm x CPU backend against the direct oracle and against PyTorch.

Values, dx and dw (PyTorch's via autograd, in float64) on a fixed grid of strides, paddings,
non-square kernels and both dtypes, then on hypothesis-drawn shapes. An algorithm whose
module does not exist yet FAILS here (it is listed in kernels.ALGORITHMS, so it is owed).
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from minigrad import kernels

torch = pytest.importorskip("torch")
F = torch.nn.functional

CPU_BACKENDS = ("numpy", "numba")
TOL = {np.float32: 2e-4, np.float64: 1e-10}


def torch_conv(x, w, dy, stride, padding):
    """y, dx, dw from PyTorch autograd, computed in float64."""
    xt = torch.tensor(np.ascontiguousarray(x), dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(np.ascontiguousarray(w), dtype=torch.float64, requires_grad=True)
    y = F.conv2d(xt, wt, stride=stride, padding=padding)
    y.backward(torch.tensor(np.ascontiguousarray(dy), dtype=torch.float64))
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()


def assert_close(got, want, dtype, what):
    assert got.dtype == np.dtype(dtype), f"{what}: dtype {got.dtype}, want {np.dtype(dtype)}"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}"
    tol = TOL[dtype]
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=what)


def make_case(rng, n, c, h, w, m, kh, kw, stride, padding, dtype):
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((m, c, kh, kw)).astype(dtype)
    ho = (h + 2 * padding[0] - kh) // stride[0] + 1
    wo = (w + 2 * padding[1] - kw) // stride[1] + 1
    dy = rng.standard_normal((n, m, ho, wo)).astype(dtype)
    return x, wt, dy


def check(algo, backend, x, w, dy, stride, padding):
    dtype = x.dtype.type
    y = kernels.conv2d_forward(x, w, stride, padding, algo=algo, backend=backend)
    dx, dw = kernels.conv2d_backward(dy, x, w, stride, padding, algo=algo, backend=backend)
    ty, tdx, tdw = torch_conv(x, w, dy, stride, padding)
    tag = f"{algo}/{backend} x{x.shape} w{w.shape} s{stride} p{padding} {x.dtype}"
    assert_close(y, ty, dtype, f"y vs torch, {tag}")
    assert_close(dx, tdx, dtype, f"dx vs torch, {tag}")
    assert_close(dw, tdw, dtype, f"dw vs torch, {tag}")
    # the direct NumPy loops are the in-house oracle
    oy = kernels.conv2d_forward(x, w, stride, padding, algo="direct", backend="numpy")
    odx, odw = kernels.conv2d_backward(dy, x, w, stride, padding, algo="direct",
                                       backend="numpy")
    assert_close(y, oy.astype(np.float64), dtype, f"y vs direct, {tag}")
    assert_close(dx, odx.astype(np.float64), dtype, f"dx vs direct, {tag}")
    assert_close(dw, odw.astype(np.float64), dtype, f"dw vs direct, {tag}")


# (N, C, H, W, M, KH, KW, stride, padding, dtype)
GRID = [
    (2, 3, 7, 7, 4, 3, 3, (1, 1), (0, 0), np.float32),
    (2, 3, 8, 7, 4, 3, 3, (1, 1), (1, 1), np.float64),
    (1, 2, 9, 10, 3, 2, 3, (2, 2), (1, 1), np.float32),
    (3, 2, 11, 9, 5, 3, 2, (3, 3), (2, 2), np.float64),
    (2, 4, 6, 8, 3, 1, 4, (2, 1), (0, 2), np.float32),
    (2, 1, 5, 5, 2, 5, 5, (1, 2), (2, 1), np.float64),
    (1, 3, 4, 4, 2, 4, 4, (1, 1), (0, 0), np.float32),  # kernel == input: 1x1 output
    (2, 2, 3, 3, 3, 5, 5, (3, 2), (2, 2), np.float64),  # kernel > input, fits padded
    (4, 8, 12, 12, 8, 3, 3, (2, 2), (1, 1), np.float32),
    (1, 1, 1, 1, 1, 1, 1, (1, 1), (0, 0), np.float32),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
@pytest.mark.parametrize("case", range(len(GRID)))
def test_grid(algo, backend, case):
    n, c, h, w, m, kh, kw, stride, padding, dtype = GRID[case]
    rng = np.random.default_rng(case)
    x, wt, dy = make_case(rng, n, c, h, w, m, kh, kw, stride, padding, dtype)
    check(algo, backend, x, wt, dy, stride, padding)


@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
def test_int_and_pair_arguments_agree(algo):
    rng = np.random.default_rng(7)
    x, w, _ = make_case(rng, 2, 2, 6, 6, 3, 3, 3, (2, 2), (1, 1), np.float64)
    a = kernels.conv2d_forward(x, w, 2, 1, algo=algo, backend="numpy")
    b = kernels.conv2d_forward(x, w, (2, 2), (1, 1), algo=algo, backend="numba")
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
def test_non_contiguous_inputs(algo):
    rng = np.random.default_rng(8)
    x = np.asfortranarray(rng.standard_normal((2, 3, 5, 7)))
    w = rng.standard_normal((4, 3, 3, 2))[::-1]  # negative strides
    dy = rng.standard_normal((2, 4, 6, 3)).transpose(0, 1, 3, 2)  # (2, 4, 3, 6), transposed
    assert not (x.flags.c_contiguous or w.flags.c_contiguous or dy.flags.c_contiguous)
    check(algo, "numba", x, w, dy, (1, 1), (0, 0))


@st.composite
def conv_shapes(draw):
    n = draw(st.integers(1, 4))
    c = draw(st.integers(1, 8))
    m = draw(st.integers(1, 8))
    h = draw(st.integers(1, 12))
    w = draw(st.integers(1, 12))
    kh = draw(st.integers(1, 5))
    kw = draw(st.integers(1, 5))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    assume(kh <= h + 2 * padding[0] and kw <= w + 2 * padding[1])
    return n, c, h, w, m, kh, kw, stride, padding, dtype


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=conv_shapes(), seed=st.integers(0, 2**31 - 1))
def test_hypothesis_shapes(algo, backend, shape, seed):
    n, c, h, w, m, kh, kw, stride, padding, dtype = shape
    x, wt, dy = make_case(np.random.default_rng(seed), *shape)
    check(algo, backend, x, wt, dy, stride, padding)
