"""workspace_bytes is honest: it equals what the forward pass really allocates.

tracemalloc sees every NumPy allocation (the Numba wrappers allocate their buffers with
NumPy before calling the kernels, so those are seen too). Measured workspace = peak traced
memory during the forward - the output - the NumPy reference's zero-padded copy of x
(a convenience of the readable reference that the module headers exclude). A small slack
covers NumPy's own temporaries (views, tiny reshapes).
"""
import importlib
import tracemalloc

import numpy as np
import pytest

import kernels

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
    mod = importlib.import_module("kernels." + algo)
    fn = getattr(mod, "forward_" + backend)
    fn(x, w, stride, padding)  # compile first: Numba's compiler allocates too
    got = measured_workspace(fn, x, w, stride, padding, backend)
    want = kernels.workspace_bytes(algo, x_shape, w_shape, stride, padding, dtype)
    assert want == mod.workspace_bytes(x_shape, w_shape, stride, padding, np.dtype(dtype).itemsize)
    allowed = want + padded_copy_bytes(x, padding, backend) + SLACK
    assert want <= got <= allowed, (
        f"{algo}/{backend}: workspace_bytes says {want}, forward allocated {got} "
        f"(allowed up to {allowed})"
    )


@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
def test_workspace_bytes_sane(algo):
    """Every algorithm: a non-negative int that doubles with the item size."""
    args = ((8, 16, 14, 14), (32, 16, 3, 3), 1, 1)
    b32 = kernels.workspace_bytes(algo, *args, dtype=np.float32)
    b64 = kernels.workspace_bytes(algo, *args, dtype=np.float64)
    assert isinstance(b32, int) and b32 >= 0
    assert b64 == 2 * b32


def test_im2col_workspace_formula():
    # MNIST conv2, float32. NumPy reference: cols (32*9) x (64*14*14) + Y_mat 64 x (64*14*14).
    args = ((64, 32, 14, 14), (64, 32, 3, 3), 1, 1)
    assert kernels.workspace_bytes("im2col", *args, backend="numpy") == 4 * (288 + 64) * 12544
    # Numba: the same two matrices for one chunk of images (225 KB of cols per image)
    from kernels import im2col

    bs = min(64, im2col.CHUNK_BYTES // (4 * 288 * 196))
    assert bs == im2col.chunk_images(*args[:2], (1, 1), (1, 1), 4)
    assert kernels.workspace_bytes("im2col", *args, backend="numba") == 4 * (288 + 64) * bs * 196


@pytest.mark.parametrize("chunk_bytes", [1, 2000, 10**9])  # 1 image, 3 of 5, all at once
def test_im2col_numba_chunks(monkeypatch, chunk_bytes):
    """The chunked Numba im2col: right values, honest workspace, cols kept only when whole."""
    from kernels import im2col

    monkeypatch.setattr(im2col, "CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3, 9, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    stride, padding = (2, 1), (1, 1)
    y = im2col.forward_numba(x, w, stride, padding)
    np.testing.assert_allclose(y, im2col.forward_numpy(x, w, stride, padding),
                               rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    saved = {}
    im2col.forward_numba(x, w, stride, padding, saved=saved)
    whole = im2col.chunk_images(x.shape, w.shape, stride, padding, 4) >= x.shape[0]
    assert ("cols" in saved) == whole
    dx, dw = im2col.backward_numba(dy, x, w, stride, padding, saved=saved)
    dx_ref, dw_ref = im2col.backward_numpy(dy, x, w, stride, padding)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-4)
    got = measured_workspace(im2col.forward_numba, x, w, stride, padding, "numba")
    want = kernels.workspace_bytes("im2col", x.shape, w.shape, stride, padding)
    assert want <= got <= want + SLACK
