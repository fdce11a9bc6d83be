"""Launch configuration and the CuPy-absent path of kernels/cuda: pure CPU, no GPU needed."""
import sys

import numpy as np
import pytest
from minigrad.kernels.cuda import _runtime, launch


@pytest.mark.parametrize("n, block, want", [
    (1, 256, (1, 256)),
    (255, 256, (1, 256)),
    (256, 256, (1, 256)),
    (257, 256, (2, 256)),
    (10_000, 128, (79, 128)),
    (0, 256, (0, 256)),
])
def test_grid_block_covers_n(n, block, want):
    grid, blk = launch.grid_block(n, block)
    assert (grid, blk) == want
    assert n == 0 or (grid - 1) * blk < n <= grid * blk     # no idle block, nothing missed


def test_grid_block_caps_the_grid():
    grid, block = launch.grid_block(10**12)
    assert (grid, block) == (launch.MAX_GRID, launch.DEFAULT_BLOCK)
    assert launch.grid_block(10**6, 32, max_grid=7) == (7, 32)


@pytest.mark.parametrize("kwargs", [dict(n_threads=-1), dict(n_threads=5, block=0),
                                    dict(n_threads=5, block=2048),
                                    dict(n_threads=5, max_grid=0)])
def test_grid_block_rejects_bad_input(kwargs):
    with pytest.raises(ValueError):
        launch.grid_block(**kwargs)


def test_needs_int64_boundary():
    lim = 2**31 - 1
    assert not launch.needs_int64(1000, 5000)
    assert not launch.needs_int64(lim)                       # the largest int still fits
    assert launch.needs_int64(lim + 1)
    # a grid-stride loop steps i += grid*block once past the end: that must fit too
    assert not launch.needs_int64(lim - 256, grid=1, block=256)
    assert launch.needs_int64(lim - 255, grid=1, block=256)
    assert launch.needs_int64(10, limit=9)
    assert not launch.needs_int64()


def test_needs_int64_follows_module_limit(monkeypatch):
    monkeypatch.setattr(launch, "INT32_LIMIT", 100)
    assert launch.needs_int64(101)
    assert launch.plan("im2col", np.float32, 50, (90,), block=32)[0] == "im2col_f32_i64"


def test_kernel_names():
    assert launch.kernel_name("im2col", np.float32, False) == "im2col_f32_i32"
    assert launch.kernel_name("col2im", np.dtype("float64"), True) == "col2im_f64_i64"
    assert launch.dtype_suffix("float32") == "f32"
    for bad in (np.float16, np.int32, np.complex64):
        with pytest.raises(TypeError):
            launch.dtype_suffix(bad)


def test_plan():
    assert launch.plan("im2col", np.float64, 1000, (40, 1000)) == ("im2col_f64_i32", 4, 256)
    name, grid, block = launch.plan("col2im", np.float32, 3 * 2**30, (3 * 2**30, 5))
    assert (name, grid, block) == ("col2im_f32_i64", launch.MAX_GRID, 256)
    assert launch.plan("maxpool_forward", np.float32, 0)[1] == 0


def test_pack_args_types_scalars_for_long_long_parameters():
    a = np.zeros(3, np.float32)
    packed = launch.pack_args((a, 3, np.int32(4), np.int64(5)))
    assert packed[0] is a
    assert all(type(v) is np.int64 for v in packed[1:])
    assert [int(v) for v in packed[1:]] == [3, 4, 5]
    for bad in (True, 1.5, np.float32(2)):
        with pytest.raises(TypeError):
            launch.pack_args((bad,))


def test_conv_geometry_order_matches_the_cuda_parameter_list():
    g = _runtime.conv_geometry((2, 3, 7, 6), (4, 3, 3, 2), (2, 1), 1)
    #            N  C  H  W  M  KH KW sh sw ph pw Ho Wo
    assert g == (2, 3, 7, 6, 4, 3, 2, 2, 1, 1, 1, 4, 7)
    src = _runtime.source("im2col")
    assert "long long N, long long C, long long H, long long W, long long M," in src


def test_clear_error_without_cupy(monkeypatch):
    """No CuPy (simulated even where it is installed): a RuntimeError that says why."""
    import minigrad.kernels.cuda as kc

    monkeypatch.setattr(_runtime, "_cupy", None)
    monkeypatch.setitem(sys.modules, "cupy", None)           # makes `import cupy` fail
    assert not kc.cupy_available()
    x = np.zeros((1, 1, 3, 3), np.float32)
    w = np.zeros((1, 1, 2, 2), np.float32)
    for mod in kc.CONV_MODULES:
        with pytest.raises(RuntimeError, match="cupy backend needs CuPy and a CUDA GPU"):
            getattr(kc, mod).forward(x, w, (1, 1), (0, 0))
    with pytest.raises(RuntimeError, match="cupy backend needs CuPy and a CUDA GPU"):
        kc.pool.forward(x, 2, 2)


def test_importing_the_package_does_not_import_cupy():
    import subprocess
    code = ("import sys, kernels.cuda, kernels.cuda.emulate; "
            "assert 'cupy' not in sys.modules, 'cupy imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True)
