"""workspace_bytes is honest: it equals what the forward pass really allocates.

tracemalloc sees every NumPy allocation (the Numba wrappers allocate their buffers with
NumPy before calling the kernels, so those are seen too). Measured workspace = peak traced
memory during the forward - the output - the NumPy reference's zero-padded copy of x
(a convenience of the readable reference that the module headers exclude). A small slack
covers NumPy's own temporaries (views, tiny reshapes).
"""
import importlib
import tracemalloc

import numba
import numpy as np
import oracle
import pytest

from minigrad import kernels

MINE = ("direct", "im2col", "im2row")  # modules that follow the padded-copy convention above
SLACK = 16 * 1024


SHAPES = [  # x shape, w shape, stride, padding
    ((4, 8, 16, 16), (16, 8, 3, 3), (1, 1), (1, 1)),
    ((1, 8, 20, 18), (8, 8, 3, 5), (2, 1), (0, 2)),
    ((3, 4, 17, 17), (6, 4, 5, 5), (3, 3), (2, 2)),
]


def measured_workspace(fn, x, w, stride, padding, backend):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        y = fn(x, w, stride, padding)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak - y.nbytes


def padded_copy_bytes(x, padding, backend):
    if backend != "numpy" or not (padding[0] or padding[1]):
        return 0
    n, c, h, wd = x.shape
    return n * c * (h + 2 * padding[0]) * (wd + 2 * padding[1]) * x.itemsize


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("algo", MINE)
@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_workspace_matches_allocation(algo, backend, shape, dtype):
    x_shape, w_shape, stride, padding = SHAPES[shape]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    mod = importlib.import_module("minigrad.kernels." + algo)
    fn = getattr(mod, "forward_" + backend)
    fn(x, w, stride, padding)  # compile first: Numba's compiler allocates too
    got = measured_workspace(fn, x, w, stride, padding, backend)
    want = kernels.workspace_bytes(algo, x_shape, w_shape, stride, padding, dtype, backend)
    formula = getattr(mod, f"workspace_bytes_{backend}", mod.workspace_bytes)
    assert want == formula(x_shape, w_shape, stride, padding, np.dtype(dtype).itemsize)
    allowed = want + padded_copy_bytes(x, padding, backend) + SLACK
    assert want <= got <= allowed, (
        f"{algo}/{backend}: workspace_bytes says {want}, forward allocated {got} "
        f"(allowed up to {allowed})"
    )


@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
def test_workspace_bytes_sane(algo):
    """Every algorithm: a non-negative int that (same numbers) doubles with the item size."""
    args = ((8, 16, 14, 14), (32, 16, 3, 3), 1, 1)
    for backend in ("numpy", "numba"):
        b32 = kernels.workspace_bytes(algo, *args, dtype=np.float32, backend=backend)
        b64 = kernels.workspace_bytes(algo, *args, dtype=np.float64, backend=backend)
        assert isinstance(b32, int) and b32 >= 0
        # the Numba im2col pads its packed panels to the dtype's register tile (48 or 24
        # columns), so there the count of numbers differs between the two dtypes
        assert b64 == 2 * b32 or (backend == "numba" and b64 >= b32)


def test_im2col_workspace_formula(monkeypatch):
    # MNIST conv2, float32. NumPy reference: cols (32*9) x (64*14*14) + Y_mat 64 x (64*14*14).
    args = ((64, 32, 14, 14), (64, 32, 3, 3), 1, 1)
    assert kernels.workspace_bytes("im2col", *args, backend="numpy") == 4 * (288 + 64) * 12544
    from minigrad.kernels import gemm, im2col

    monkeypatch.setattr(gemm, "MODE", "numba")
    threads = numba.get_num_threads()
    # Numba, stride 1, transposed windows (the "cols" tile's MR, 14 or 7, divides Wo = 14):
    # per thread a padded image (32 x 16 x 16, plus KW + VL numbers that a window's last
    # vector may read) and the output transposed (14*14 x 64); plus the packed weights
    # (288 x 64: 64 is whole panels of NR). No patch matrix at all, no padding column.
    vl = gemm.blocking(np.float32)["vl"]
    mr, nr = gemm.tile_shape(np.float32, "cols")
    assert 14 % mr == 0 and 64 % nr == 0
    per_thread = 32 * 16 * 16 + 3 + vl + 14 * 14 * 64
    assert kernels.workspace_bytes("im2col", *args, backend="numba") == (
        4 * (threads * per_thread + 64 * 288))
    # the plain windows (an output width the tile does not divide): the output over the
    # padded width, 64 x 13*15, and the weights packed in panels of MR rows
    args13 = ((64, 32, 13, 13), (64, 32, 3, 3), 1, 1)
    if 13 % mr:
        per_thread = 32 * 15 * 15 + 3 + vl + 64 * 13 * 15
        wpack = -(-64 // gemm.blocking(np.float32)["mr"]) * gemm.blocking(np.float32)["mr"]
        assert kernels.workspace_bytes("im2col", *args13, backend="numba") == (
            4 * (threads * per_thread + wpack * 288))
    assert im2col.workspace_bytes_numba(*args[:2], (1, 1), (1, 1), 4) < (
        kernels.workspace_bytes("im2col", *args, backend="numpy") / 10)
    # Lowered into packed panels ("packed"): the padded image and its patch matrix in
    # NR-column panels (AVX-512: 48 columns, 288 x 240: 196 columns in 5 panels) per thread,
    # plus the weights in MR-row panels.
    monkeypatch.setattr(im2col, "_uses_windows", lambda *a: False)
    blk = gemm.blocking(np.float32)
    per_thread = 32 * 16 * 16 + 288 * gemm.panels(196, blk["nr"])
    assert kernels.workspace_bytes("im2col", *args, backend="numba") == (
        4 * (threads * per_thread + gemm.panels(64, blk["mr"]) * 288))
    monkeypatch.setattr(gemm, "MODE", "blas")  # image by image in Python: one plain cols
    assert kernels.workspace_bytes("im2col", *args, backend="numba") == 4 * 288 * 196


IM2COL_CASES = [  # x shape, w shape, stride, padding
    ((5, 3, 9, 8), (4, 3, 3, 2), (2, 1), (1, 1)),
    ((4, 2, 7, 7), (50, 2, 1, 4), (1, 3), (0, 2)),    # M over one MR x NR tile, 1 x 4 taps
    ((3, 17, 6, 11), (9, 17, 3, 3), (1, 1), (1, 1)),  # C*K*K = 153: several NR panels
    ((2, 1, 30, 30), (5, 1, 5, 5), (3, 2), (2, 0)),   # Ho*Wo = 10 x 13: an edge NR panel
    ((4, 9, 12, 10), (20, 9, 3, 4), (1, 1), (2, 1)),  # stride 1, non-square, uneven padding
    ((2, 3, 10, 13), (70, 3, 5, 3), (1, 1), (0, 2)),  # stride 1, dx of 3 channels (< MR)
    ((3, 10, 5, 6), (4, 10, 1, 1), (1, 1), (0, 0)),   # 1 x 1: windows with no extra column
    # transposed windows (the "cols" tile's MR, 14 or 7, divides Wo): M = 40 and C = 17 are
    # not whole NR panels (edge tiles on the lanes); a 3 x 5 kernel on 28-wide rows
    ((2, 17, 14, 14), (40, 17, 3, 3), (1, 1), (1, 1)),
    ((3, 8, 12, 28), (16, 8, 3, 5), (1, 1), (1, 2)),
]


def _im2col_path_params():
    for case in IM2COL_CASES:
        for path in ("windows", "windows_t", "packed", "one-by-one", "blas"):
            if path.startswith("windows") and case[2] != (1, 1):
                continue  # windows are a stride-1 path
            if path == "windows_t" and case[0][3] not in (14, 28):
                continue  # (its MR must divide Wo = W here)
            yield pytest.param(path, case, id=f"{path}-{case[0]}-{case[1]}-s{case[2]}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("path,case", list(_im2col_path_params()))
def test_im2col_numba_paths(monkeypatch, path, dtype, case):
    """The Numba im2col's paths against the NumPy reference: threads taking whole images
    (the patch matrix read in place, or lowered into packed panels; our GEMM), images one by
    one with a parallel GEMM each, and NumPy's BLAS; with honest workspace on each."""
    from minigrad.kernels import gemm, im2col, im2col_fused

    xs, ws, stride, padding = case
    monkeypatch.setattr(gemm, "MODE", "blas" if path == "blas" else "numba")
    if path == "windows":  # the plain windows, also where the transposed ones would apply
        monkeypatch.setattr(im2col_fused, "uses_windows_t", lambda *a: False)
    elif path == "windows_t":
        assert im2col_fused.uses_windows_t(dtype, xs[3], xs[2] * xs[3], ws[0])
        assert im2col_fused.uses_windows_t(dtype, xs[3], xs[2] * xs[3], xs[1])
        path = "windows"  # _numba_path's name for both
    if path in ("packed", "one-by-one"):
        monkeypatch.setattr(im2col, "_uses_windows", lambda *a: False)
    if path == "one-by-one":
        monkeypatch.setattr(im2col, "PER_THREAD_IMAGE_BYTES", 0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    ho, wo = oracle.conv_out_shape(xs, ws, stride, padding)[2:]
    want_path = "one-by-one" if path == "blas" else path
    assert im2col._numba_path(xs, ws, stride, padding, ho, wo, dtype)[0] == want_path
    y = im2col.forward_numba(x, w, stride, padding)
    oracle.assert_close(y, im2col.forward_numpy(x, w, stride, padding), f"y, {path}", dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw = im2col.backward_numba(dy, x, w, stride, padding)
    dx_ref, dw_ref = im2col.backward_numpy(dy, x, w, stride, padding)
    oracle.assert_close(dx, dx_ref, f"dx, {path}", dtype)
    oracle.assert_close(dw, dw_ref, f"dw, {path}", dtype)
    none, dw2 = im2col.backward_numba(dy, x, w, stride, padding, need_dx=False)
    assert none is None
    oracle.assert_close(dw2, dw_ref, f"dw (need_dx=False), {path}", dtype)
    got = measured_workspace(im2col.forward_numba, x, w, stride, padding, "numba")
    want = kernels.workspace_bytes("im2col", x.shape, w.shape, stride, padding, dtype)
    assert want <= got <= want + SLACK


def test_im2col_windows_backward_path(monkeypatch):
    """A stride-1 backward takes the windows path, except for dx of fewer channels than MR
    (there it lowers into packed panels); the forward always takes it at stride 1."""
    from minigrad.kernels import gemm, im2col

    monkeypatch.setattr(gemm, "MODE", "numba")
    mr = gemm.BLOCKING[np.dtype(np.float32)]["mr"]
    for c, dx_path in ((1, "packed"), (mr - 1, "packed"), (mr, "windows"), (32, "windows")):
        xs, ws = (4, c, 14, 14), (16, c, 3, 3)
        args = (xs, ws, (1, 1), (1, 1), 14, 14, np.float32)
        assert im2col._numba_path(*args)[0] == "windows"
        assert im2col._numba_path(*args, need_dx=False)[0] == "windows"
        assert im2col._numba_path(*args, need_dx=True)[0] == dx_path
    # too many extra columns: a 5-wide kernel over an 8-wide padded row wastes 4 of every 8
    assert im2col._numba_path((4, 8, 8, 8), (8, 8, 5, 5), (1, 1), (0, 0), 4, 4,
                              np.float32)[0] == "packed"
