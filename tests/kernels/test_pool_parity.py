"""Max pooling against PyTorch: values, argmax routing and gradients, overlapping windows."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minigrad import kernels

torch = pytest.importorskip("torch")


def torch_pool(x, dy, kernel, stride):
    xt = torch.tensor(x, requires_grad=True)
    y = torch.nn.functional.max_pool2d(xt, kernel, stride)
    y.backward(torch.tensor(dy))
    return y.detach().numpy(), xt.grad.numpy()


def check(backend, x, kernel, stride, seed=0):
    y, am = kernels.maxpool2d_forward(x, kernel, stride, backend=backend)
    dy = np.random.default_rng(seed).standard_normal(y.shape).astype(x.dtype)
    dx = kernels.maxpool2d_backward(dy, am, x.shape, kernel, stride, backend=backend)
    ty, tdx = torch_pool(x, dy, kernel, stride if stride is not None else kernel)
    assert y.dtype == x.dtype and dx.dtype == x.dtype and am.dtype == np.int64
    np.testing.assert_array_equal(y, ty)  # a max is exact
    tol = 1e-5 if x.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(dx, tdx, rtol=tol, atol=tol)
    # the argmax points at the value it claims
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    picked = np.take_along_axis(flat, am.reshape(n, c, -1), 2).reshape(y.shape)
    np.testing.assert_array_equal(picked, y)


CASES = [  # shape, kernel, stride
    ((2, 3, 8, 8), 2, None),
    ((2, 3, 9, 7), (3, 2), (2, 1)),  # overlapping rows and columns
    ((1, 2, 7, 7), 3, 1),  # heavy overlap
    ((3, 1, 5, 6), (2, 3), (3, 2)),  # gaps between windows
    ((2, 2, 4, 4), 4, None),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_pool_grid(backend, case, dtype):
    shape, kernel, stride = CASES[case]
    x = np.random.default_rng(case).standard_normal(shape).astype(dtype)
    check(backend, x, kernel, stride)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 4), h=st.integers(1, 10), w=st.integers(1, 10),
       kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 4), sw=st.integers(1, 4),
       seed=st.integers(0, 2**31 - 1))
def test_pool_hypothesis(backend, n, c, h, w, kh, kw, sh, sw, seed):
    assume(kh <= h and kw <= w)
    x = np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32)
    check(backend, x, (kh, kw), (sh, sw), seed)


def test_pool_ties_pick_first_like_torch():
    x = np.zeros((1, 1, 4, 4), np.float32)  # every window is all ties
    for backend in ("numpy", "numba"):
        check(backend, x, 2, 1)
