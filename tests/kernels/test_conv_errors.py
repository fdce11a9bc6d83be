"""Bad inputs raise ValueError naming the op, the shapes involved and the valid choices."""
import numpy as np
import pytest

from minigrad import kernels

X = np.zeros((2, 3, 8, 8), np.float32)
W = np.zeros((4, 3, 3, 3), np.float32)
DY = np.zeros((2, 4, 6, 6), np.float32)


def raises(fn, *needles):
    with pytest.raises(ValueError) as e:
        fn()
    msg = str(e.value)
    for n in needles:
        assert n in msg, f"{n!r} missing from: {msg}"


FWD = kernels.conv2d_forward
BWD = kernels.conv2d_backward


def test_not_4d():
    raises(lambda: FWD(X[0], W), "conv2d_forward", "(3, 8, 8)", "4-D")
    raises(lambda: FWD(X, W[0]), "conv2d_forward", "(3, 3, 3)", "4-D")
    raises(lambda: BWD(DY[0], X, W), "conv2d_backward", "(4, 6, 6)", "4-D")


def test_channel_mismatch():
    w = np.zeros((4, 2, 3, 3), np.float32)
    raises(lambda: FWD(X, w), "conv2d_forward", "(2, 3, 8, 8)", "(4, 2, 3, 3)", "channel")
    raises(lambda: BWD(DY, X, w), "conv2d_backward", "(4, 2, 3, 3)")


def test_dy_shape():
    raises(lambda: BWD(DY[:, :, :5], X, W), "conv2d_backward", "(2, 4, 5, 6)", "(2, 4, 6, 6)")
    raises(lambda: BWD(DY, X, W, padding=1), "conv2d_backward", "(2, 4, 6, 6)", "(2, 4, 8, 8)")


def test_kernel_larger_than_padded_input():
    w = np.zeros((4, 3, 11, 3), np.float32)
    raises(lambda: FWD(X, w, padding=1), "conv2d_forward", "11x3", "10x10", "(4, 3, 11, 3)")
    FWD(X, w, padding=(2, 0), backend="numpy")  # 12 x 8 padded: fits


@pytest.mark.parametrize("bad", [np.int32, np.float16, np.complex64, bool])
def test_non_float_dtype(bad):
    raises(lambda: FWD(X.astype(bad), W.astype(bad)), "conv2d_forward", "float32",
           "float64", str(np.dtype(bad)))


def test_dtype_mismatch():
    raises(lambda: FWD(X, W.astype(np.float64)), "conv2d_forward", "float32", "float64",
           "(4, 3, 3, 3)")
    raises(lambda: BWD(DY.astype(np.float64), X, W), "conv2d_backward", "float64")


def test_unknown_algo_and_backend():
    raises(lambda: FWD(X, W, algo="fft"), "conv2d_forward", "fft", *kernels.ALGORITHMS)
    raises(lambda: BWD(DY, X, W, backend="jax"), "conv2d_backward", "jax", *kernels.BACKENDS)
    raises(lambda: kernels.workspace_bytes("fft", X.shape, W.shape), "workspace_bytes", "fft",
           *kernels.ALGORITHMS)


@pytest.mark.parametrize("backend", kernels.BACKENDS)
def test_winograd_names_its_constraint(backend):
    """3x3 kernels at stride 1 only: one line naming the op, the constraint and the shapes,
    on every backend (cupy too, before CuPy is needed), and from workspace_bytes."""
    w5 = np.zeros((4, 3, 5, 5), np.float32)
    dy5 = np.zeros((2, 4, 4, 4), np.float32)
    dy2 = np.zeros((2, 4, 3, 3), np.float32)
    for fn, op, shapes in (
            (lambda: FWD(X, w5, algo="winograd", backend=backend), "conv2d_forward",
             ("(4, 3, 5, 5)", "(2, 3, 8, 8)")),
            (lambda: BWD(dy5, X, w5, algo="winograd", backend=backend), "conv2d_backward",
             ("(4, 3, 5, 5)",)),
            (lambda: FWD(X, W, stride=2, algo="winograd", backend=backend), "conv2d_forward",
             ("stride (2, 2)", "(4, 3, 3, 3)")),
            (lambda: BWD(dy2, X, W, stride=(2, 2), algo="winograd", backend=backend),
             "conv2d_backward", ("stride (2, 2)",)),
            (lambda: kernels.workspace_bytes("winograd", X.shape, w5.shape, backend=backend),
             "workspace_bytes", ("(4, 3, 5, 5)",))):
        with pytest.raises(ValueError) as e:
            fn()
        msg = str(e.value)
        assert "\n" not in msg, msg
        for needle in (op, "winograd", "3x3 kernel and stride 1", *shapes):
            assert needle in msg, f"{needle!r} missing from: {msg}"


def test_supports():
    assert kernels.supports("winograd", W.shape) and kernels.supports("winograd", W.shape, 1)
    assert not kernels.supports("winograd", W.shape, 2)
    assert not kernels.supports("winograd", W.shape, (1, 2))
    assert not kernels.supports("winograd", (4, 3, 5, 5))
    assert not kernels.supports("winograd", (4, 3, 3, 1))
    for algo in kernels.ALGORITHMS:
        if algo != "winograd":
            assert kernels.supports(algo, (4, 3, 5, 2), (3, 1)), algo
    raises(lambda: kernels.supports("fft", W.shape), "supports", "fft", *kernels.ALGORITHMS)
    raises(lambda: kernels.supports("winograd", W.shape[1:]), "supports", "4-D")
    raises(lambda: kernels.supports("winograd", W.shape, 0), "supports", "stride")


def test_stride_and_padding_range():
    raises(lambda: FWD(X, W, stride=0), "conv2d_forward", "stride", ">= 1")
    raises(lambda: FWD(X, W, stride=(1, -1)), "conv2d_forward", "stride")
    raises(lambda: FWD(X, W, padding=-1), "conv2d_forward", "padding", ">= 0")
    raises(lambda: FWD(X, W, padding=(1, 2, 3)), "conv2d_forward", "padding")


def test_pool_errors():
    P = kernels.maxpool2d_forward
    raises(lambda: P(X[0], 2), "maxpool2d_forward", "(3, 8, 8)")
    raises(lambda: P(X, 9), "maxpool2d_forward", "(9, 9)", "(2, 3, 8, 8)")
    raises(lambda: P(X, 2, stride=0), "maxpool2d_forward", "stride")
    raises(lambda: P(X.astype(np.int64), 2), "maxpool2d_forward", "int64")
    raises(lambda: P(X, 2, backend="torch"), "maxpool2d_forward", *kernels.BACKENDS)
    y, am = P(X, 2, backend="numpy")
    B = kernels.maxpool2d_backward
    raises(lambda: B(y[:, :, :3], am, X.shape, 2), "maxpool2d_backward", "(2, 3, 3, 4)",
           "(2, 3, 4, 4)")
    raises(lambda: B(y, am.astype(np.float32), X.shape, 2), "maxpool2d_backward", "integer")
