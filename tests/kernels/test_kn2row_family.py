"""kn2row, kn2row-aa and kn2col against PyTorch: values, dx and dw, both backends, both dtypes.

The oracle is torch.nn.functional.conv2d with autograd. Shapes come from a hand-picked grid
(strides 1-3, paddings 0-2, non-square and 1x1 kernels, kernel as large as the padded input)
and from hypothesis. The workspace formulas are checked against what tracemalloc sees the
NumPy path allocate.
"""
import importlib
import tracemalloc

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

MODULES = ("kn2row", "kn2row_aa", "kn2col")
BACKENDS = ("numpy", "numba")
DTYPES = (np.float32, np.float64)


def _mod(name):
    return importlib.import_module(f"minigrad.kernels.{name}")


def _torch_conv(x, w, dy, stride, padding):
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=padding)
    y.backward(torch.tensor(dy, dtype=torch.float64))
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()


def _out_shape(x_shape, w_shape, stride, padding):
    (n, _, h, wd), (m, _, kh, kw) = x_shape, w_shape
    return (n, m, (h + 2 * padding[0] - kh) // stride[0] + 1,
            (wd + 2 * padding[1] - kw) // stride[1] + 1)


def _check(name, backend, dtype, x_shape, w_shape, stride, padding, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    dy = rng.standard_normal(_out_shape(x_shape, w_shape, stride, padding)).astype(dtype)
    y_ref, dx_ref, dw_ref = _torch_conv(x, w, dy, stride, padding)

    mod = _mod(name)
    y = getattr(mod, f"forward_{backend}")(x, w, stride, padding)
    dx, dw = getattr(mod, f"backward_{backend}")(dy, x, w, stride, padding)

    # float64 must match the exact sums to rounding; float32 to its epsilon times the
    # number of terms summed (C*KH*KW for y and dx, N*Ho*Wo for dw).
    tol = 1e-10 if dtype == np.float64 else 2e-4
    for got, ref, what in ((y, y_ref, "y"), (dx, dx_ref, "dx"), (dw, dw_ref, "dw")):
        assert got.dtype == dtype, what
        assert got.shape == ref.shape, what
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * scale,
                                   err_msg=f"{name}/{backend} {what}")


# (x shape, w shape, stride, padding)
GRID = [
    ((2, 3, 7, 7), (4, 3, 3, 3), (1, 1), (1, 1)),      # the usual 3x3 "same"
    ((2, 3, 8, 7), (5, 3, 3, 3), (2, 2), (0, 0)),      # stride 2, no padding
    ((1, 2, 9, 9), (3, 2, 3, 2), (3, 1), (2, 1)),      # non-square kernel, mixed stride/pad
    ((2, 3, 10, 8), (4, 3, 2, 4), (2, 1), (2, 0)),     # wide kernel, pad only in H
    ((2, 4, 6, 6), (3, 4, 1, 1), (1, 1), (0, 0)),      # 1x1
    ((2, 3, 5, 6), (2, 3, 1, 1), (2, 3), (1, 2)),      # 1x1 with stride and padding
    ((1, 2, 4, 5), (3, 2, 6, 9), (1, 1), (1, 2)),      # kernel == padded input -> 1x1 out
    ((2, 2, 5, 5), (3, 2, 5, 5), (1, 1), (0, 0)),      # kernel == input
    ((1, 1, 3, 3), (2, 1, 5, 5), (3, 3), (2, 2)),      # kernel larger than input, stride 3
    ((3, 1, 6, 5), (1, 1, 2, 3), (3, 2), (1, 0)),      # one channel, one filter
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("x_shape,w_shape,stride,padding", GRID,
                         ids=[f"x{a}-w{b}-s{c}-p{d}" for a, b, c, d in GRID])
def test_grid_matches_torch(name, backend, dtype, x_shape, w_shape, stride, padding):
    _check(name, backend, dtype, x_shape, w_shape, stride, padding)


@st.composite
def conv_cases(draw):
    n = draw(st.integers(1, 4))
    c = draw(st.integers(1, 8))
    m = draw(st.integers(1, 8))
    h, wd = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    assume(kh <= h + 2 * padding[0] and kw <= wd + 2 * padding[1])
    dtype = draw(st.sampled_from(DTYPES))
    return (n, c, h, wd), (m, c, kh, kw), stride, padding, dtype


@pytest.mark.parametrize("name", MODULES)
@settings(max_examples=30, deadline=None)
@given(case=conv_cases())
def test_hypothesis_matches_torch(name, case):
    x_shape, w_shape, stride, padding, dtype = case
    for backend in BACKENDS:
        _check(name, backend, dtype, x_shape, w_shape, stride, padding)


# --------------------------------------------------------------------------- workspace
# tracemalloc sees every NumPy data buffer. Two things besides the lowering buffers show up
# and are kept out of the comparison: NumPy's ufunc iterator scratch (up to 3 x bufsize
# elements for a strided "+=", shrunk here with np.setbufsize(16)) and a few hundred bytes
# of Python objects (views, ints, tuples), covered by SLACK.
SLACK = 4096

WS_CASES = [
    ((4, 8, 14, 14), (16, 8, 3, 3), (1, 1), (1, 1)),
    ((2, 6, 12, 10), (5, 6, 3, 2), (2, 1), (0, 2)),
    ((3, 4, 9, 11), (7, 4, 1, 1), (1, 2), (0, 0)),
]


def _peak_extra(fn, *args):
    """(result, peak bytes traced during fn beyond what was allocated before it)."""
    old = np.setbufsize(16)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = fn(*args)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
        np.setbufsize(old)
    return out, peak


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("x_shape,w_shape,stride,padding", WS_CASES)
def test_workspace_bytes_match_tracemalloc(name, dtype, x_shape, w_shape, stride, padding):
    mod = _mod(name)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    dy = rng.standard_normal(_out_shape(x_shape, w_shape, stride, padding)).astype(dtype)
    item = np.dtype(dtype).itemsize

    y, peak = _peak_extra(mod.forward_numpy, x, w, stride, padding)
    want = mod.workspace_bytes(x_shape, w_shape, stride, padding, item)
    assert 0 <= peak - y.nbytes - want <= SLACK, (peak - y.nbytes, want)

    (dx, dw), peak = _peak_extra(mod.backward_numpy, dy, x, w, stride, padding)
    want = mod.backward_workspace_bytes(x_shape, w_shape, stride, padding, item)
    assert 0 <= peak - dx.nbytes - dw.nbytes - want <= SLACK, (peak - dx.nbytes - dw.nbytes,
                                                               want)


def test_kn2row_aa_workspace_is_small_on_mnist_conv2():
    """kn2row-aa's one partial (+ one tap's weights) vs im2col's per-image C*K*K x Ho*Wo."""
    x_shape, w_shape, s, p = (64, 32, 14, 14), (64, 32, 3, 3), (1, 1), (1, 1)
    aa = _mod("kn2row_aa").workspace_bytes(x_shape, w_shape, s, p, 4)
    kn2row = _mod("kn2row").workspace_bytes(x_shape, w_shape, s, p, 4)
    im2col_per_image = 4 * 32 * 3 * 3 * 14 * 14
    assert aa == 4 * 64 * (14 * 14 + 32)
    assert aa < 0.26 * im2col_per_image
    assert aa < kn2row / 8
