"""Every convolution algorithm x CPU backend against PyTorch and against the direct oracle.

Values, dx and dw (PyTorch's via autograd, in float64: tests/oracle.py) on the shared grid of
strides, paddings, non-square kernels and both dtypes, then on hypothesis-drawn shapes. An
algorithm whose module does not exist yet FAILS here (it is listed in kernels.ALGORITHMS, so
it is owed). A shape an algorithm cannot compute (kernels.supports: winograd takes 3x3
kernels at stride 1 only) is skipped on the grid; hypothesis gives winograd the drawn
shape with a 3x3 kernel at stride 1 instead.
"""
import numpy as np
import oracle
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from minigrad import kernels

pytest.importorskip("torch")

CPU_BACKENDS = ("numpy", "numba")


def skip_unsupported(algo, w_shape, stride):
    if not kernels.supports(algo, w_shape, stride):
        pytest.skip(f"{algo}: 3x3 stride 1 only")


def check(algo, backend, x, w, dy, stride, padding):
    """algo/backend through the public API: against PyTorch, then against the direct NumPy
    loops (the in-house oracle)."""
    skip_unsupported(algo, w.shape, stride)
    got = oracle.check_conv(
        lambda x, w, s, p: kernels.conv2d_forward(x, w, s, p, algo=algo, backend=backend),
        lambda dy, x, w, s, p: kernels.conv2d_backward(dy, x, w, s, p, algo=algo,
                                                       backend=backend),
        x, w, dy, stride, padding, what=f"{algo}/{backend}")
    oy = kernels.conv2d_forward(x, w, stride, padding, algo="direct", backend="numpy")
    odx, odw = kernels.conv2d_backward(dy, x, w, stride, padding, algo="direct",
                                       backend="numpy")
    want = tuple(a.astype(np.float64) for a in (oy, odx, odw))
    tag = f"{algo}/{backend} x{x.shape} w{w.shape} s{stride} p{padding} {x.dtype}"
    oracle.assert_conv_close(got, want, x.dtype, f"vs direct, {tag}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
@pytest.mark.parametrize("dtype", oracle.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", oracle.CONV_CASES, ids=oracle.ids(oracle.CONV_CASES))
def test_grid(algo, backend, case, dtype):
    check(algo, backend, *case.data(dtype), case.stride, case.padding)


@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
def test_int_and_pair_arguments_agree(algo):
    x, w, _ = oracle.ConvCase.of(2, 2, 6, 6, 3, 3, 3, 2, 1).data(np.float64, seed=7)
    skip_unsupported(algo, w.shape, (2, 2))
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


def test_winograd_int_pair_and_non_contiguous():
    """The two tests above on shapes winograd computes (3x3, stride 1)."""
    x, w, _ = oracle.ConvCase.of(2, 2, 6, 7, 3, 3, 3, 1, 1).data(np.float64, seed=7)
    a = kernels.conv2d_forward(x, w, 1, 1, algo="winograd", backend="numpy")
    b = kernels.conv2d_forward(x, w, (1, 1), (1, 1), algo="winograd", backend="numba")
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    rng = np.random.default_rng(8)
    x = np.asfortranarray(rng.standard_normal((2, 3, 5, 7)))
    w = rng.standard_normal((4, 3, 3, 3))[::-1]                    # negative strides
    dy = rng.standard_normal((2, 4, 5, 3)).transpose(0, 1, 3, 2)   # (2, 4, 3, 5), transposed
    assert not (x.flags.c_contiguous or w.flags.c_contiguous or dy.flags.c_contiguous)
    check("winograd", "numba", x, w, dy, (1, 1), (0, 0))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=oracle.conv_cases(), seed=st.integers(0, 2**31 - 1))
def test_hypothesis_shapes(algo, backend, drawn, seed):
    case, dtype = drawn
    if not kernels.supports(algo, case.w_shape, case.stride):   # winograd: 3x3, stride 1
        (n, c, h, wd), m, (ph, pw) = case.x_shape, case.w_shape[0], case.padding
        assume(h + 2 * ph >= 3 and wd + 2 * pw >= 3)
        case = oracle.ConvCase.of(n, c, h, wd, m, 3, 3, 1, (ph, pw))
    check(algo, backend, *case.data(dtype, seed), case.stride, case.padding)
