"""kernels.channel: the per-channel bias add and its gradient, against NumPy."""
import numpy as np
import pytest
from minigrad.kernels import channel


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 7, 2), (64, 32, 28, 28), (2, 4)])
def test_bias_add_and_grad(shape, dtype):
    rng = np.random.default_rng(0)
    y = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    want = y + b.reshape((1, -1) + (1,) * (len(shape) - 2))
    got = channel.bias_add(y, b)
    assert got is y
    np.testing.assert_allclose(y, want, rtol=1e-6)
    db = channel.bias_grad(want)
    assert db.dtype == dtype and db.shape == (shape[1],)
    ref = want.astype(np.float64).sum(axis=tuple(i for i in range(len(shape)) if i != 1))
    np.testing.assert_allclose(db, ref, rtol=1e-5, atol=1e-4)


def test_bias_add_strided_output():
    y = np.zeros((4, 3, 5, 6), np.float32)[:, :, ::2]
    channel.bias_add(y, np.array([1, 2, 3], np.float32))
    np.testing.assert_array_equal(y[:, 2], 3)


def test_bias_errors():
    with pytest.raises(ValueError, match=r"bias_add: bias of shape \(4,\).*\(2, 3, 5, 5\)"):
        channel.bias_add(np.zeros((2, 3, 5, 5), np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"bias_grad: dy must be \(N, M, ...\)"):
        channel.bias_grad(np.zeros(5, np.float32))
