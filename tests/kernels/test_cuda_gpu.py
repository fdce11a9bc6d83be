"""backend="cupy" on a real GPU: every algorithm through kernels.conv2d_forward/backward and
max pooling through kernels.maxpool2d_*, against the numpy backend and PyTorch (on the GPU
when torch has CUDA). Skipped cleanly where CuPy or a GPU is missing; the same kernels are
checked on the CPU by test_cuda_emulate.py."""
import numpy as np
import pytest
from minigrad.kernels._common import out_size
from minigrad.kernels.cuda import CU_FILES, _runtime, cupy_available, launch

from minigrad import kernels

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cupy_available(), reason="needs CuPy and a CUDA GPU"),
]

# same grid as test_cuda_emulate.CASES: (N, C, H, W, M, KH, KW, stride, padding)
CASES = [
    (2, 3, 7, 6, 4, 3, 2, (1, 1), (0, 0)),
    (1, 2, 8, 9, 3, 3, 3, (2, 2), (1, 1)),
    (2, 1, 9, 7, 2, 2, 3, (3, 2), (2, 1)),
    (1, 3, 5, 5, 2, 1, 1, (1, 1), (0, 0)),
    (2, 2, 6, 10, 3, 4, 2, (2, 3), (0, 2)),
    (1, 2, 5, 6, 2, 5, 3, (1, 2), (2, 0)),
    (1, 1, 4, 4, 2, 3, 3, (3, 3), (2, 2)),
    (3, 2, 4, 7, 1, 2, 5, (1, 3), (1, 2)),
    (8, 16, 28, 28, 32, 3, 3, (1, 1), (1, 1)),       # a real layer: 2^16+ threads per launch
]
CASE_IDS = [f"x{c[0]}x{c[1]}x{c[2]}x{c[3]}-w{c[4]}x{c[5]}x{c[6]}-s{c[7][0]}{c[7][1]}"
            f"-p{c[8][0]}{c[8][1]}" for c in CASES]
POOL_CASES = [
    (2, 3, 6, 6, (2, 2), (2, 2)),
    (1, 2, 7, 8, (3, 3), (2, 2)),
    (2, 1, 9, 7, (3, 2), (1, 3)),
    (1, 2, 5, 9, (2, 4), (3, 2)),
    (1, 1, 4, 4, (4, 4), (1, 1)),
    (8, 16, 28, 28, (2, 2), (2, 2)),
]
DTYPES = [np.float32, np.float64]


def tol(dtype):
    return dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)


def data(case, dtype):
    n, c, h, w, m, kh, kw, stride, padding = case
    rng = np.random.default_rng(CASES.index(case))
    ho, wo = out_size(h, w, kh, kw, stride, padding)
    return (rng.standard_normal((n, c, h, w)).astype(dtype),
            rng.standard_normal((m, c, kh, kw)).astype(dtype),
            rng.standard_normal((n, m, ho, wo)).astype(dtype))


def torch_device(torch):
    """cuda when torch has it, with TF32 off so float32 is compared at full precision
    (CuPy's cuBLAS calls use plain FP32 unless CUPY_TF32=1)."""
    if not torch.cuda.is_available():
        return "cpu"
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return "cuda"


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
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
def test_conv_cupy_matches_numpy_and_torch(algo, case, dtype):
    import cupy as cp

    x, w, dy = data(case, dtype)
    stride, padding = case[7], case[8]
    y = kernels.conv2d_forward(cp.asarray(x), cp.asarray(w), stride, padding, algo=algo,
                               backend="cupy")
    dx, dw = kernels.conv2d_backward(cp.asarray(dy), cp.asarray(x), cp.asarray(w), stride,
                                     padding, algo=algo, backend="cupy")
    assert isinstance(y, cp.ndarray) and y.dtype == dtype and dx.dtype == dw.dtype == dtype
    y, dx, dw = cp.asnumpy(y), cp.asnumpy(dx), cp.asnumpy(dw)

    y_np = kernels.conv2d_forward(x, w, stride, padding, algo=algo, backend="numpy")
    dx_np, dw_np = kernels.conv2d_backward(dy, x, w, stride, padding, algo=algo,
                                           backend="numpy")
    np.testing.assert_allclose(y, y_np, **tol(dtype))
    np.testing.assert_allclose(dx, dx_np, **tol(dtype))
    np.testing.assert_allclose(dw, dw_np, **tol(dtype))

    torch = pytest.importorskip("torch")
    dev = torch_device(torch)
    xt = torch.tensor(x, device=dev, requires_grad=True)
    wt = torch.tensor(w, device=dev, requires_grad=True)
    ty = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=padding)
    ty.backward(torch.tensor(dy, device=dev))
    np.testing.assert_allclose(y, ty.detach().cpu().numpy(), **tol(dtype))
    np.testing.assert_allclose(dx, xt.grad.cpu().numpy(), **tol(dtype))
    np.testing.assert_allclose(dw, wt.grad.cpu().numpy(), **tol(dtype))


@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
def test_conv_cupy_is_deterministic(algo):
    """Gathers, not atomics: two runs give the same bits."""
    import cupy as cp

    x, w, dy = (cp.asarray(a) for a in data(CASES[-1], np.float32))
    runs = [kernels.conv2d_backward(dy, x, w, 1, 1, algo=algo, backend="cupy")
            for _ in range(2)]
    for a, b in zip(*runs, strict=True):
        assert bool((a == b).all())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pcase", POOL_CASES)
def test_maxpool_cupy_matches_numpy_and_torch(pcase, dtype):
    import cupy as cp

    n, c, h, w, kernel, stride = pcase
    rng = np.random.default_rng(6)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    y, arg = kernels.maxpool2d_forward(cp.asarray(x), kernel, stride, backend="cupy")
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = kernels.maxpool2d_backward(cp.asarray(dy), arg, x.shape, kernel, stride,
                                    backend="cupy")
    y, arg, dx = cp.asnumpy(y), cp.asnumpy(arg), cp.asnumpy(dx)

    y_np, arg_np = kernels.maxpool2d_forward(x, kernel, stride, backend="numpy")
    dx_np = kernels.maxpool2d_backward(dy, arg_np, x.shape, kernel, stride, backend="numpy")
    np.testing.assert_array_equal(y, y_np)
    np.testing.assert_array_equal(arg, arg_np)
    np.testing.assert_allclose(dx, dx_np, **tol(dtype))

    torch = pytest.importorskip("torch")
    dev = torch_device(torch)
    xt = torch.tensor(x, device=dev, requires_grad=True)
    ty, targ = torch.nn.functional.max_pool2d(xt, kernel, stride, return_indices=True)
    ty.backward(torch.tensor(dy, device=dev))
    np.testing.assert_array_equal(y, ty.detach().cpu().numpy())
    np.testing.assert_array_equal(arg, targ.cpu().numpy())
    np.testing.assert_allclose(dx, xt.grad.cpu().numpy(), **tol(dtype))


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
