"""workspace_bytes(..., backend=...) against what each CPU backend's forward really allocates."""
import tracemalloc

import numpy as np
import pytest

from minigrad import kernels

SHAPES = [((64, 32, 14, 14), (64, 32, 3, 3), 1, 1),   # MNIST conv2
          ((8, 2, 9, 7), (5, 2, 3, 2), 2, 1),         # small C (the fused paths)
          ((4, 1, 12, 10), (6, 1, 3, 3), 1, 1),       # small C, stride 1 (a first layer)
          ((3, 6, 11, 10), (4, 6, 5, 3), (1, 2), (2, 0))]


def _peak_forward_bytes(fn, x, w, stride, padding):
    fn(x, w, stride, padding)  # warm-up (Numba compilation allocates too)
    tracemalloc.start()
    try:
        y = fn(x, w, stride, padding)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - y.nbytes


@pytest.mark.parametrize("algo", ["kn2row", "kn2row-aa", "kn2col"])
@pytest.mark.parametrize("xs,ws,stride,padding", SHAPES)
def test_numba_workspace_matches_allocation(algo, xs, ws, stride, padding):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    s, p = kernels.pair(stride), kernels.pair(padding)
    module = kernels._module(algo, "numba")
    measured = _peak_forward_bytes(module.forward_numba, x, w, s, p)
    claimed = kernels.workspace_bytes(algo, xs, ws, stride, padding, backend="numba")
    assert claimed <= measured <= claimed + 16 * 1024, (claimed, measured)


def test_kn2row_aa_stays_low_memory_on_mnist_conv2():
    """kn2row-aa needs at most a quarter of im2col's workspace (its patch matrix: the NumPy
    reference's; the Numba im2col reads the patch matrix in place at stride 1 and holds
    only a padded image and an output per thread, a figure that moves with the thread
    count and the GEMM in use)."""
    args = ((64, 32, 14, 14), (64, 32, 3, 3), 1, 1)
    im2col = kernels.workspace_bytes("im2col", *args, backend="numpy")
    for backend in ("numpy", "numba"):
        aa = kernels.workspace_bytes("kn2row-aa", *args, backend=backend)
        assert aa <= im2col / 4, backend
