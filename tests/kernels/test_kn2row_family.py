"""kn2row, kn2row-aa and kn2col against PyTorch: values, dx and dw, both backends, both dtypes.

Each module's forward_<backend>/backward_<backend> is called directly (not through the
dispatcher) and checked by tests/oracle.py against PyTorch's conv2d with autograd. Shapes
come from the shared grid (strides 1-3, paddings 0-2, non-square and 1x1 kernels, kernel as
large as the padded input) and from hypothesis. The workspace formulas are checked against
what tracemalloc sees the NumPy path allocate.
"""
import importlib
import tracemalloc

import numpy as np
import oracle
import pytest
from hypothesis import given, settings
from minigrad.kernels import gemm as G

pytest.importorskip("torch")

MODULES = ("kn2row", "kn2row_aa", "kn2col")
BACKENDS = ("numpy", "numba")


def _mod(name):
    return importlib.import_module(f"minigrad.kernels.{name}")


def _check(name, backend, case, dtype, seed=0):
    mod = _mod(name)
    oracle.check_conv(getattr(mod, f"forward_{backend}"), getattr(mod, f"backward_{backend}"),
                      *case.data(dtype, seed), case.stride, case.padding,
                      what=f"{name}/{backend}")


@pytest.mark.parametrize("dtype", oracle.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("case", oracle.CONV_CASES, ids=oracle.ids(oracle.CONV_CASES))
def test_grid_matches_torch(name, backend, dtype, case):
    _check(name, backend, case, dtype)


@pytest.mark.parametrize("name", MODULES)
@settings(max_examples=30, deadline=None)
@given(drawn=oracle.conv_cases())
def test_hypothesis_matches_torch(name, drawn):
    case, dtype = drawn
    for backend in BACKENDS:
        _check(name, backend, case, dtype)


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


@pytest.mark.parametrize("dtype", oracle.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("x_shape,w_shape,stride,padding", WS_CASES)
def test_workspace_bytes_match_tracemalloc(name, dtype, x_shape, w_shape, stride, padding):
    mod = _mod(name)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    y_shape = oracle.conv_out_shape(x_shape, w_shape, stride, padding)
    dy = rng.standard_normal(y_shape).astype(dtype)
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


# --------------------------------------------------------------------------- fused stride 1
@pytest.mark.parametrize("isa", G.supported())
@pytest.mark.parametrize("name", ["kn2row", "kn2col"])
@pytest.mark.parametrize("xs,ws,padding", [
    ((4, 9, 12, 10), (20, 9, 3, 3), (1, 1)),    # C >= MR: the taps' tiles shift-added
    ((3, 2, 11, 9), (5, 2, 3, 2), (2, 0)),      # C < MR: taps folded into the depth
    ((2, 12, 5, 6), (9, 12, 1, 3), (2, 2)),     # padding past the kernel: wide margins
])
def test_fused_stride1_path_every_isa(monkeypatch, isa, name, xs, ws, padding):
    """The stride-1 fused path (shift-add in the GEMM's write-out, dP read in place) on every
    micro-kernel this CPU runs, float32 and float64, against PyTorch."""
    kn2row = _mod("kn2row")
    monkeypatch.setattr(G, "MODE", "numba")
    old = G.set_isa(isa)
    try:
        mod = _mod(name)
        for dtype in oracle.DTYPES:
            assert kn2row.fused_parts(xs, ws, (1, 1), padding, dtype)
            rng = np.random.default_rng(7)
            x = rng.standard_normal(xs).astype(dtype)
            w = rng.standard_normal(ws).astype(dtype)
            y = mod.forward_numba(x, w, (1, 1), padding)
            dy = rng.standard_normal(y.shape).astype(dtype)
            dx, dw = mod.backward_numba(dy, x, w, (1, 1), padding)
            y_ref, dx_ref, dw_ref = oracle.torch_conv(x, w, dy, (1, 1), padding)
            oracle.assert_close(y, y_ref, f"y, {name}/{isa}", dtype)
            oracle.assert_close(dx, dx_ref, f"dx, {name}/{isa}", dtype)
            oracle.assert_close(dw, dw_ref, f"dw, {name}/{isa}", dtype)
    finally:
        G.set_isa(old)


@pytest.mark.parametrize("isa", G.supported())
@pytest.mark.parametrize("xs,ws,padding,turned", [
    ((4, 9, 12, 10), (20, 9, 3, 3), (1, 1), False),   # Wo = 10: the plain windows
    ((3, 17, 9, 14), (40, 17, 3, 3), (1, 1), True),   # Wo = 14: taps' products turned round,
    ((2, 6, 7, 28), (12, 6, 3, 5), (2, 2), True),     # M and C not whole NR' panels
])
def test_kn2row_aa_windows_every_isa(monkeypatch, isa, xs, ws, padding, turned):
    """kn2row-aa's stride-1 windows (each tap's GEMM reads the padded image in place, the
    shift-add is its write-out), plain or turned round (pixels as the GEMM's rows: the "cols"
    operand, and dW's depth over the kept pixels), on every micro-kernel, against PyTorch;
    its workspace formula against what the forward allocates."""
    aa = _mod("kn2row_aa")
    windows = _mod("windows")
    monkeypatch.setattr(G, "MODE", "numba")
    old = G.set_isa(isa)
    try:
        for dtype in oracle.DTYPES:
            ho, wo = oracle.conv_out_shape(xs, ws, (1, 1), padding)[2:]
            assert aa._uses_windows(xs, ws, (1, 1), padding, dtype)
            assert windows.uses_windows_t(dtype, wo, ho * wo, ws[0]) == turned
            rng = np.random.default_rng(3)
            x = rng.standard_normal(xs).astype(dtype)
            w = rng.standard_normal(ws).astype(dtype)
            aa.forward_numba(x, w, (1, 1), padding)  # compile first: the compiler allocates
            y, peak = _peak_extra(aa.forward_numba, x, w, (1, 1), padding)
            want = aa.workspace_bytes_numba(xs, ws, (1, 1), padding, np.dtype(dtype).itemsize)
            assert 0 <= peak - y.nbytes - want <= SLACK, (peak - y.nbytes, want)
            dy = rng.standard_normal(y.shape).astype(dtype)
            dx, dw = aa.backward_numba(dy, x, w, (1, 1), padding)
            y_ref, dx_ref, dw_ref = oracle.torch_conv(x, w, dy, (1, 1), padding)
            oracle.assert_close(y, y_ref, f"y, kn2row-aa/{isa}", dtype)
            oracle.assert_close(dx, dx_ref, f"dx, kn2row-aa/{isa}", dtype)
            oracle.assert_close(dw, dw_ref, f"dw, kn2row-aa/{isa}", dtype)
    finally:
        G.set_isa(old)


# --------------------------------------------------------------------------- need_dx, small C
# Shapes that reach each Numba path: (stride-1 fused or windows), the per-image GEMMs
# (stride 2), the chunked BLAS path (fewer images than threads), and kn2row-aa's two small-C
# loops (C <= SMALL_C: stride 1 over Wp-wide runs, other strides row by row).
PATH_CASES = [
    ((4, 9, 12, 10), (20, 9, 3, 3), (1, 1), (1, 1)),
    ((4, 9, 12, 10), (20, 9, 3, 3), (2, 2), (1, 1)),
    ((1, 9, 8, 7), (6, 9, 3, 3), (1, 1), (0, 0)),
    ((3, 1, 12, 11), (8, 1, 3, 3), (1, 1), (1, 1)),
    ((3, 3, 9, 10), (5, 3, 3, 2), (2, 1), (1, 0)),
    ((2, 2, 6, 5), (4, 2, 1, 3), (1, 1), (2, 2)),
]


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("xs,ws,stride,padding", PATH_CASES)
def test_need_dx_false_skips_dx_and_keeps_dw(name, xs, ws, stride, padding):
    """backward_numba(..., need_dx=False) (a first layer: the data needs no gradient) returns
    dx None and the very dw the full backward returns, on every Numba path; the full one
    matches PyTorch."""
    mod = _mod(name)
    for dtype in oracle.DTYPES:
        rng = np.random.default_rng(5)
        x = rng.standard_normal(xs).astype(dtype)
        w = rng.standard_normal(ws).astype(dtype)
        y = mod.forward_numba(x, w, stride, padding)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx, dw = mod.backward_numba(dy, x, w, stride, padding)
        none, dw_only = mod.backward_numba(dy, x, w, stride, padding, need_dx=False)
        assert none is None
        assert dw_only.dtype == dw.dtype == dtype
        np.testing.assert_array_equal(dw_only, dw)
        y_ref, dx_ref, dw_ref = oracle.torch_conv(x, w, dy, stride, padding)
        oracle.assert_close(y, y_ref, f"y, {name}", dtype)
        oracle.assert_close(dx, dx_ref, f"dx, {name}", dtype)
        oracle.assert_close(dw, dw_ref, f"dw, {name}", dtype)


@pytest.mark.parametrize("c", [1, 2, 4])
@pytest.mark.parametrize("stride,padding", [((1, 1), (1, 1)), ((1, 1), (0, 2)),
                                            ((2, 2), (1, 1)), ((1, 3), (2, 0))])
def test_kn2row_aa_small_c_against_torch(c, stride, padding):
    """kn2row-aa with C <= SMALL_C (each tap's K = C product fused into the shift-add; at
    stride 1 over runs of Ho*Wp, else row by row), odd sizes, one image and several."""
    aa = _mod("kn2row_aa")
    assert c <= _mod("kn2row").SMALL_C
    for n in (1, 5):
        for dtype in oracle.DTYPES:
            rng = np.random.default_rng(c + n)
            x = rng.standard_normal((n, c, 13, 11)).astype(dtype)
            w = rng.standard_normal((7, c, 3, 3)).astype(dtype)
            y = aa.forward_numba(x, w, stride, padding)
            dy = rng.standard_normal(y.shape).astype(dtype)
            dx, dw = aa.backward_numba(dy, x, w, stride, padding)
            y_ref, dx_ref, dw_ref = oracle.torch_conv(x, w, dy, stride, padding)
            oracle.assert_close(y, y_ref, "y, kn2row-aa small C", dtype)
            oracle.assert_close(dx, dx_ref, "dx, kn2row-aa small C", dtype)
            oracle.assert_close(dw, dw_ref, "dw, kn2row-aa small C", dtype)
