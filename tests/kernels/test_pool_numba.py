"""The Numba max-pool kernels against the NumPy reference, bit for bit, where they are tricky.

_forward_2x2_kernel runs each row of windows rounded up to whole vectors, past the row's end,
and relies on the later rows of the same job to overwrite what it wrote there (kernels/pool.py):
rows of every width 1..25, odd sizes, a single plane, more planes than one job holds. The
backward zeroes each plane, then adds each gradient at its argmax. Both kernels are also
called on outputs full of garbage, to show that they write everything.
"""
import numba
import numpy as np
import pytest
from minigrad.kernels import pool

from minigrad import kernels

DTYPES = (np.float32, np.float64)


def data(shape, dtype, seed=0):
    """Halves (many ties and exact zeros), negatives, NaNs; dy with -0.0, NaN and inf."""
    rng = np.random.default_rng(seed)
    x = (np.round(rng.standard_normal(shape) * 2) / 2).astype(dtype)
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, max(1, flat.size // 40), replace=False)] = np.nan
    return x


def grad(shape, dtype, seed=1):
    dy = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    flat = dy.reshape(-1)
    flat[: min(3, flat.size)] = [-0.0, np.nan, np.inf][: min(3, flat.size)]
    return dy


def assert_same(a, b, what):
    assert a.dtype == b.dtype, what
    np.testing.assert_array_equal(a, b, err_msg=what)  # NaN where NaN
    np.testing.assert_array_equal(np.signbit(a), np.signbit(b), err_msg=f"sign of 0, {what}")


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def check(x, kernel, stride, relu):
    kernel, stride = pair(kernel), pair(stride)
    what = f"x{x.shape} {x.dtype} k{kernel} s{stride} relu={relu}"
    ry, ram = pool.forward_numpy(x, kernel, stride, relu)
    y, am = kernels.maxpool2d_forward(x, kernel, stride, backend="numba", relu=relu)
    assert am.dtype == np.int64
    assert_same(y, ry, f"y, {what}")
    np.testing.assert_array_equal(am, ram, err_msg=f"argmax, {what}")
    dy = grad(y.shape, x.dtype)
    rdx = pool.backward_numpy(dy, ram, x.shape, kernel, stride)
    dx = kernels.maxpool2d_backward(dy, am, x.shape, kernel, stride, backend="numba")
    assert_same(dx, rdx, f"dx, {what}")


# (N, C, H, W): every row width 1..25 (7 and 14: MNIST's), odd H and W, one plane, and
# enough planes for several parallel jobs with a plane count that does not divide evenly
SHAPES_2X2 = ([(2, 3, 4, 2 * wo + odd) for wo in range(1, 26) for odd in (0, 1)]
              + [(1, 1, 2, 2), (1, 1, 3, 3), (1, 1, 17, 2), (3, 2, 17, 3), (1, 1, 9, 16),
                 (7, 5, 15, 14), (64, 3, 28, 28), (5, 47, 14, 14), (2, 300, 4, 4)])


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES_2X2, ids=str)
def test_2x2_matches_reference(shape, dtype, relu):
    check(data(shape, dtype), 2, 2, relu)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("kernel,stride", [
    (3, 3),            # windows side by side
    ((2, 3), (2, 3)),
    (2, 3),            # gaps between windows: never a gradient there
    ((1, 2), (1, 2)),
    (3, 1),            # overlapping windows: an element may collect several gradients
    ((2, 2), (1, 2)),  # overlapping in one direction only
    ((2, 3), (2, 1)),
    (2, 1),
], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_generic_kernels_match_reference(kernel, stride, dtype, relu):
    for shape in [(2, 3, 7, 8), (1, 2, 9, 11), (3, 1, 6, 6)]:
        check(data(shape, dtype), kernel, stride, relu)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 1, 2, 34), (9, 7, 14, 14)], ids=str)
def test_kernels_write_every_element(shape, dtype):
    """Outputs and dx start as garbage (not zeros): every element must be written."""
    x = data(shape, dtype)
    ry, ram = pool.forward_numpy(x, (2, 2), (2, 2), relu=True)
    y = np.full(ry.shape, 12345, dtype)
    am = np.full(ry.shape, 777, np.int64)
    pool._forward_2x2_kernel(x, True, y, am)
    assert_same(y, ry, "y")
    np.testing.assert_array_equal(am, ram)
    dy = grad(ry.shape, dtype)
    rdx = pool.backward_numpy(dy, ram, x.shape, (2, 2), (2, 2))
    dx = np.full(x.shape, np.nan, dtype)
    pool._backward_kernel(dy, ram, dx)
    assert_same(dx, rdx, "dx")


def test_any_thread_count_same_result():
    x = data((6, 11, 14, 14), np.float32)
    dy = grad((6, 11, 7, 7), np.float32)
    before = numba.get_num_threads()
    results = []
    try:
        for n in sorted({1, before}):
            numba.set_num_threads(n)
            y, am = pool.forward_numba(x, (2, 2), (2, 2), relu=True)
            results.append((y, am, pool.backward_numba(dy, am, x.shape, (2, 2), (2, 2))))
    finally:
        numba.set_num_threads(before)
    for got in results[1:]:
        for a, b in zip(got, results[0], strict=True):
            np.testing.assert_array_equal(a, b)
