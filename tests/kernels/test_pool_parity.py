"""Max pooling against PyTorch: values, argmax routing and gradients, overlapping windows.

tests/oracle.py's check_pool compares y and argmax exactly (ties go to the first maximum, as
in PyTorch), checks that each argmax points at the value it claims, and dx within TOL.
"""
import numpy as np
import oracle
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrad import kernels

pytest.importorskip("torch")

BACKENDS = ("numpy", "numba")


def check(backend, x, dy, kernel, stride):
    oracle.check_pool(
        lambda x, k, s: kernels.maxpool2d_forward(x, k, s, backend=backend),
        lambda dy, am, shape, k, s: kernels.maxpool2d_backward(dy, am, shape, k, s,
                                                               backend=backend),
        x, dy, kernel, stride, what=backend)


@pytest.mark.parametrize("dtype", oracle.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", oracle.POOL_CASES, ids=oracle.ids(oracle.POOL_CASES))
def test_pool_grid(backend, case, dtype):
    check(backend, *case.data(dtype), case.kernel, case.stride)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=30, deadline=None)
@given(case=oracle.pool_cases(), seed=st.integers(0, 2**31 - 1))
def test_pool_hypothesis(backend, case, seed):
    check(backend, *case.data(np.float32, seed), case.kernel, case.stride)


def test_pool_ties_pick_first_like_torch():
    x = np.zeros((1, 1, 4, 4), np.float32)  # every window is all ties
    dy = np.random.default_rng(0).standard_normal((1, 1, 3, 3)).astype(np.float32)
    for backend in BACKENDS:
        check(backend, x, dy, 2, 1)


@pytest.mark.parametrize("dtype", oracle.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", oracle.POOL_CASES + [oracle.REAL_POOL],
                         ids=oracle.ids(oracle.POOL_CASES + [oracle.REAL_POOL]))
def test_pool_relu_fused_matches_torch_relu_of_pool(backend, case, dtype):
    """relu=True is torch.relu(max_pool2d(x)): values, and gradients (none where the window's
    max is <= 0: those outputs carry argmax -1); rounded inputs make many exact zeros."""
    x, dy = case.data(dtype)
    x = np.round(x * 2) / 2  # exact zeros and ties at 0, where ReLU's rule matters
    x[0, 0, 0, 0] = np.nan  # a NaN maximum stays NaN through the ReLU, as in torch
    ty, tdx = oracle.torch_pool_relu(x, dy, case.kernel, case.stride)
    y, am = kernels.maxpool2d_forward(x, case.kernel, case.stride, backend=backend, relu=True)
    np.testing.assert_array_equal(y, ty.astype(dtype), err_msg=backend)
    assert y.dtype == dtype
    np.testing.assert_array_equal(am < 0, ty <= 0)  # clipped exactly where torch's y is 0
    dx = kernels.maxpool2d_backward(dy, am, x.shape, case.kernel, case.stride, backend=backend)
    assert dx.dtype == dtype
    np.testing.assert_allclose(dx, tdx, **oracle.tol(dtype, tdx), err_msg=backend)
    # and it is exactly the plain pool followed by a ReLU, in the same backend
    y0, _ = kernels.maxpool2d_forward(x, case.kernel, case.stride, backend=backend)
    np.testing.assert_array_equal(y, np.where(y0 <= 0, 0, y0))
