"""conv2d_forward(saved=...) / conv2d_backward(saved=..., need_dx=False): the engine's options."""
import numpy as np
import pytest

from minigrad import kernels


@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_saved_lowering_and_need_dx(algo, backend):
    if not kernels.supports(algo, (4, 3, 3, 2), (2, 1)):
        pytest.skip(f"{algo}: 3x3 stride 1 only")
    check_saved_and_need_dx(algo, backend, (4, 3, 3, 2), (2, 1), (1, 0))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_winograd_saved_and_need_dx(backend):
    check_saved_and_need_dx("winograd", backend, (4, 3, 3, 3), (1, 1), (1, 0))


def check_saved_and_need_dx(algo, backend, w_shape, stride, padding):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal(w_shape)
    kw = dict(stride=stride, padding=padding, algo=algo, backend=backend)
    y_plain = kernels.conv2d_forward(x, w, **kw)
    saved = {}
    y = kernels.conv2d_forward(x, w, saved=saved, **kw)
    np.testing.assert_array_equal(y, y_plain)
    dy = rng.standard_normal(y.shape)
    dx_ref, dw_ref = kernels.conv2d_backward(dy, x, w, **kw)
    dx, dw = kernels.conv2d_backward(dy, x, w, saved=saved, **kw)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-12, atol=1e-12)
    assert not saved  # the backward took what the forward left
    none, dw2 = kernels.conv2d_backward(dy, x, w, need_dx=False, **kw)
    assert none is None
    np.testing.assert_allclose(dw2, dw_ref, rtol=1e-12, atol=1e-12)


def test_im2col_keeps_its_patch_matrix():
    """The NumPy reference hands cols to the backward; the Numba path lowers each image again
    in its backward (from L2, cheaper than keeping 14 MB), so it leaves `saved` empty."""
    x = np.ones((1, 2, 5, 5), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    saved = {}
    kernels.conv2d_forward(x, w, padding=1, algo="im2col", backend="numpy", saved=saved)
    assert saved["cols"].shape == (2 * 3 * 3, 25)
    saved = {}
    kernels.conv2d_forward(x, w, padding=1, algo="im2col", backend="numba", saved=saved)
    assert not saved
