"""Max pooling propagates NaN like PyTorch: the window's maximum is NaN and its gradient goes
to the window's last NaN (PyTorch's CPU rule), on both backends."""
import numpy as np
import pytest

from minigrad import kernels

torch = pytest.importorskip("torch")


def torch_pool(x, dy, kernel, stride):
    xt = torch.tensor(x, requires_grad=True)
    y = torch.nn.functional.max_pool2d(xt, kernel, stride)
    y.backward(torch.tensor(dy))
    return y.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("kernel,stride", [(2, 2), (3, 1), ((2, 3), (1, 2))], ids=str)
# rows of 4 and 7 windows at 2x2: shorter than the 8 the Numba kernel rounds a row up to
@pytest.mark.parametrize("shape", [(2, 3, 7, 8), (3, 4, 14, 15)], ids=str)
def test_nan_propagates_like_torch(backend, dtype, kernel, stride, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, 12, replace=False)] = np.nan
    x[0, 0, 0, 0] = x[0, 0, 0, 1] = np.nan  # two NaNs in one window: the last one wins
    x[1, 2, 3, :] = np.nan  # a whole row: NaN in several overlapping windows
    y, argmax = kernels.maxpool2d_forward(x, kernel, stride, backend=backend)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = kernels.maxpool2d_backward(dy, argmax, x.shape, kernel, stride, backend=backend)
    ty, tdx = torch_pool(x, dy, kernel, stride)
    assert np.isnan(y).any()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ty))  # NaN where torch has NaN
    np.testing.assert_array_equal(y, ty)  # and the same maxima elsewhere
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(dx, tdx, rtol=tol, atol=tol)  # routed to the same elements


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_nan_first_or_last_in_window(backend):
    x = np.array([[[[np.nan, 1.0, 5.0, np.nan],
                    [2.0, 3.0, 0.0, 4.0]]]], dtype=np.float32)
    y, argmax = kernels.maxpool2d_forward(x, 2, None, backend=backend)
    assert np.isnan(y).all()
    np.testing.assert_array_equal(argmax.reshape(-1), [0, 3])
