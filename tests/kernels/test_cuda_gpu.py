"""backend="cupy" on a real GPU: every algorithm through kernels.conv2d_forward/backward and
max pooling through kernels.maxpool2d_*, against the numpy backend and PyTorch (tests/oracle.py:
float64 on the CPU, so TF32 and cuDNN's algorithm choice play no part). Skipped cleanly where
CuPy or a GPU is missing; the same kernels, on the same case grids, are checked on the CPU by
test_cuda_emulate.py."""
import numpy as np
import oracle
import pytest
from minigrad.kernels.cuda import CU_FILES, _runtime, cupy_available, launch

from minigrad import kernels

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cupy_available(), reason="needs CuPy and a CUDA GPU"),
]

# the emulated tests' grids, plus a real layer: 2^16+ threads per launch
CASES = oracle.CUDA_CASES + [oracle.REAL_LAYER]
POOL_CASES = oracle.POOL_CASES + [oracle.REAL_POOL]
WINOGRAD_CASES = [oracle.ConvCase.of(2, 3, 7, 6, 4, 3, 3, 1, 1),
                  oracle.ConvCase.of(1, 17, 9, 8, 5, 3, 3, 1, 2),
                  oracle.ConvCase.of(2, 5, 7, 7, 3, 3, 3, 1, 3),
                  oracle.ConvCase.of(3, 2, 4, 4, 2, 3, 3, 1, 0)]
DTYPES = oracle.DTYPES


def on_gpu(fn, n_arrays):
    """fn with its first n_arrays arguments moved to the GPU; its results must be CuPy
    arrays (oracle.check_conv/check_pool bring them back)."""
    import cupy as cp

    def run(*args):
        out = fn(*(cp.asarray(a) for a in args[:n_arrays]), *args[n_arrays:])
        for a in out if isinstance(out, tuple) else (out,):
            assert isinstance(a, cp.ndarray), type(a)
        return out

    return run


@pytest.mark.parametrize("stem", CU_FILES)
def test_nvrtc_compiles_every_kernel(stem):
    """cupy.RawModule (NVRTC) builds each file and finds every instantiation."""
    mod = _runtime.load_module(stem)
    names = [ln.split("void ", 1)[1].split("_##")[0]
             for ln in _runtime.source(stem).splitlines() if 'extern "C" __global__' in ln]
    assert names
    for base in names:
        for dt in DTYPES:
            for wide in (False, True):
                mod.get_function(launch.kernel_name(base, dt, wide))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=oracle.ids(CASES))
@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
def test_conv_cupy_matches_numpy_and_torch(algo, case, dtype):
    if not kernels.supports(algo, case.w_shape, case.stride):
        pytest.skip(f"{algo}: 3x3 stride 1 only")
    check_cupy_conv(algo, case, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=oracle.ids(WINOGRAD_CASES))
def test_winograd_cupy_matches_numpy_and_torch(case, dtype):
    """The CUDA grid has no 3x3 stride-1 case but the real layer: these add odd sizes,
    paddings 0-3 (3 > 2: dx runs on a cropped dy) and more channels than filters."""
    check_cupy_conv("winograd", case, dtype)


def check_cupy_conv(algo, case, dtype):
    x, w, dy = case.data(dtype)
    stride, padding = case.stride, case.padding
    pytest.importorskip("torch")
    got = oracle.check_conv(
        on_gpu(lambda x, w, s, p: kernels.conv2d_forward(x, w, s, p, algo=algo,
                                                         backend="cupy"), 2),
        on_gpu(lambda dy, x, w, s, p: kernels.conv2d_backward(dy, x, w, s, p, algo=algo,
                                                              backend="cupy"), 3),
        x, w, dy, stride, padding, what=f"{algo}/cupy")

    y_np = kernels.conv2d_forward(x, w, stride, padding, algo=algo, backend="numpy")
    dx_np, dw_np = kernels.conv2d_backward(dy, x, w, stride, padding, algo=algo,
                                           backend="numpy")
    oracle.assert_conv_close(got, (y_np, dx_np, dw_np), dtype, f"vs numpy {algo}, {case.id}")


@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
def test_conv_cupy_is_deterministic(algo):
    """Gathers, not atomics: two runs give the same bits."""
    import cupy as cp

    x, w, dy = (cp.asarray(a) for a in oracle.REAL_LAYER.data(np.float32))
    runs = [kernels.conv2d_backward(dy, x, w, 1, 1, algo=algo, backend="cupy")
            for _ in range(2)]
    for a, b in zip(*runs, strict=True):
        assert bool((a == b).all())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pcase", POOL_CASES, ids=oracle.ids(POOL_CASES))
def test_maxpool_cupy_matches_numpy_and_torch(pcase, dtype):
    x, dy = pcase.data(dtype, seed=6)
    kernel, stride = pcase.kernel, pcase.stride
    pytest.importorskip("torch")
    # argmax stays on the GPU between forward and backward, as the engine keeps it
    y, arg, dx = oracle.check_pool(
        on_gpu(lambda x, k, s: kernels.maxpool2d_forward(x, k, s, backend="cupy"), 1),
        on_gpu(lambda dy, am, shape, k, s: kernels.maxpool2d_backward(dy, am, shape, k, s,
                                                                      backend="cupy"), 2),
        x, dy, kernel, stride, what="cupy")

    y_np, arg_np = kernels.maxpool2d_forward(x, kernel, stride, backend="numpy")
    dx_np = kernels.maxpool2d_backward(dy, arg_np, x.shape, kernel, stride, backend="numpy")
    np.testing.assert_array_equal(y, y_np)
    np.testing.assert_array_equal(arg, arg_np)
    oracle.assert_close(dx, dx_np, f"dx vs numpy, {pcase.id}", dtype)


@pytest.mark.slow
def test_im2col_past_2_31_elements_uses_64bit_indices():
    """col has 36 * 8187^2 > 2^31 elements (9.7 GB): the _i64 kernels on real hardware,
    checked against direct convolution, whose arrays are small enough for 32-bit indices."""
    import cupy as cp

    free = cp.cuda.runtime.memGetInfo()[0]
    if free < 16 * 2**30:
        pytest.skip(f"needs 16 GiB free GPU memory, has {free / 2**30:.1f}")
    x = cp.random.default_rng(0).standard_normal((1, 1, 8192, 8192), dtype=cp.float32)
    w = cp.random.default_rng(1).standard_normal((1, 1, 6, 6), dtype=cp.float32)
    cols = 36 * 8187 * 8187
    assert cols > 2**31 and launch.plan("im2col", np.float32, cols, (x.size, cols))[0].endswith(
        "_i64")
    y = kernels.conv2d_forward(x, w, 1, 0, algo="im2col", backend="cupy")
    y_direct = kernels.conv2d_forward(x, w, 1, 0, algo="direct", backend="cupy")
    cp.cuda.Device().synchronize()
    assert float(cp.abs(y - y_direct).max()) < 1e-3
