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
