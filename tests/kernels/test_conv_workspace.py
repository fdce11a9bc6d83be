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
    # MNIST conv2: cols (32*9) x (64*14*14) + Y_mat 64 x (64*14*14), float32
    n = kernels.workspace_bytes("im2col", (64, 32, 14, 14), (64, 32, 3, 3), 1, 1)
    assert n == 4 * (288 * 12544 + 64 * 12544)
