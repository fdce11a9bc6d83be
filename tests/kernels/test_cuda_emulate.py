"""The CUDA kernels, run on the CPU: kernels/cuda/*.cu compiled as C++ under emulate.h.

Each kernel is launched like on a GPU, one (block, thread) at a time, with the launch
shapes the launchers use and with odd ones (a few small blocks, a single thread) so the
grid-stride loops really loop. Every output array starts as NaN and sits between guard
cells (kernels/cuda/emulate.py), so a missed element, an out-of-bounds read or an
out-of-bounds write fails the test.

1. kernel by kernel against numpy references written here, and the adjoint identity
   <A x, y> == <x, A^T y> for each lowering/un-lowering pair;
2. the real Python launchers (kernels.cuda.<algo>.forward/backward) end to end, with a
   numpy stand-in for CuPy, against the numpy backend of kernels.conv2d_* and PyTorch
   (tests/oracle.py, whose case grids test_cuda_gpu.py shares);
3. thread-order independence, the 64-bit index variants, and the harness's own alarms.
"""
import importlib

import minigrad.kernels.cuda as kc
import numpy as np
import oracle
import pytest
from minigrad.kernels.cuda import _runtime, emulate, launch
from oracle import CUDA_CASES as CASES
from oracle import POOL_CASES, out_size

from minigrad import kernels

pytestmark = pytest.mark.skipif(emulate.find_cxx() is None, reason="no C++ compiler")

# The shared CUDA grid (oracle.CUDA_CASES): strides 1-3, paddings 0-2, non-square kernels,
# windows that hang over the padded edge (output sizes rounded down).
CASE_IDS = oracle.ids(CASES)
POOL_IDS = oracle.ids(POOL_CASES)
DTYPES = oracle.DTYPES
# launch shapes: what launch.plan picks, a few small blocks, one thread doing everything
CONFIGS = {"plan": None, "3x32": (3, 32), "1x1": (1, 1)}
# winograd computes 3x3 kernels at stride 1 only: odd sizes (cropped blocks), paddings 0-3
# (3 > 2: dx runs on a cropped dy), more channels than filters
WINOGRAD_CASES = [oracle.ConvCase.of(2, 3, 7, 6, 4, 3, 3, 1, 1),
                  oracle.ConvCase.of(1, 17, 9, 8, 5, 3, 3, 1, 2),
                  oracle.ConvCase.of(2, 5, 7, 7, 3, 3, 3, 1, 3),
                  oracle.ConvCase.of(3, 2, 4, 4, 2, 3, 3, 1, 0)]


def skip_unsupported(module, case):
    algo = module.replace("_", "-")
    if not kernels.supports(algo, case.w_shape, case.stride):
        pytest.skip(f"{algo}: 3x3 stride 1 only")


@pytest.fixture(scope="session")
def emu_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cuda-emu")


@pytest.fixture
def fake(emu_dir):
    return emulate.FakeCupy(emu_dir)


def close(got, want, what):
    """A kernel's output (its dtype is the kernel's) against a float64 reference."""
    oracle.assert_close(got, want, what)


def close_dot(a, b, dtype):
    """Two float64 dot products of `dtype` data (the adjoint identity)."""
    np.testing.assert_allclose(a, b, **oracle.tol(dtype, b))


def geometry(case):
    return _runtime.conv_geometry(case.x_shape, case.w_shape, case.stride, case.padding)


def run(fake, stem, base, dtype, n_threads, args, config="plan"):
    """Launch one emulated kernel the way kernels.cuda._runtime.launch does."""
    sizes = [a.size for a in args if isinstance(a, np.ndarray)]
    if CONFIGS[config] is None:
        name, grid, block = launch.plan(base, dtype, n_threads, sizes)
    else:
        name, (grid, block) = launch.kernel_name(base, dtype, False), CONFIGS[config]
    fn = fake.RawModule(code=_runtime.source(stem)).get_function(name)
    fn((grid,), (block,), launch.pack_args(args))


# ------------------------------------------------------------------ numpy references


def ref_im2col(x, kh, kw, stride, padding):
    """col[(c, i, j), (n, oh, ow)] = x[n, c, oh*sh - ph + i, ow*sw - pw + j] (0 off-image)."""
    n, c, h, w = x.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = out_size(h, w, kh, kw, stride, padding)
    col = np.zeros((c, kh, kw, n, ho, wo), x.dtype)
    for i in range(kh):
        for j in range(kw):
            for oh in range(ho):
                for ow in range(wo):
                    ih, iw = oh * sh - ph + i, ow * sw - pw + j
                    if 0 <= ih < h and 0 <= iw < w:
                        col[:, i, j, :, oh, ow] = x[:, :, ih, iw].T
    return col.reshape(c * kh * kw, n * ho * wo)


def ref_col2im(col, x_shape, kh, kw, stride, padding):
    """Adjoint of ref_im2col: add each entry back onto its pixel."""
    n, c, h, w = x_shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = out_size(h, w, kh, kw, stride, padding)
    col = col.reshape(c, kh, kw, n, ho, wo)
    dx = np.zeros(x_shape, col.dtype)
    for i in range(kh):
        for j in range(kw):
            for oh in range(ho):
                for ow in range(wo):
                    ih, iw = oh * sh - ph + i, ow * sw - pw + j
                    if 0 <= ih < h and 0 <= iw < w:
                        dx[:, :, ih, iw] += col[:, i, j, :, oh, ow].T
    return dx


def ref_shift_add(P, kh, kw, h, w, stride, padding, k0, nk):
    """P (N, nk, M, H, W), plane j = tap k0 + j -> y (N, M, Ho, Wo)."""
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = out_size(h, w, kh, kw, stride, padding)
    y = np.zeros((P.shape[0], P.shape[2], ho, wo), P.dtype)
    for j in range(nk):
        i, jj = divmod(k0 + j, kw)
        for oh in range(ho):
            for ow in range(wo):
                ih, iw = oh * sh - ph + i, ow * sw - pw + jj
                if 0 <= ih < h and 0 <= iw < w:
                    y[:, :, oh, ow] += P[:, j, :, ih, iw]
    return y


def ref_shift_gather(dy, kh, kw, h, w, stride, padding, k0, nk):
    """Adjoint of ref_shift_add: dP (N, nk, M, H, W)."""
    (sh, sw), (ph, pw) = stride, padding
    n, m, ho, wo = dy.shape
    dP = np.zeros((n, nk, m, h, w), dy.dtype)
    for j in range(nk):
        i, jj = divmod(k0 + j, kw)
        for oh in range(ho):
            for ow in range(wo):
                ih, iw = oh * sh - ph + i, ow * sw - pw + jj
                if 0 <= ih < h and 0 <= iw < w:
                    dP[:, j, :, ih, iw] = dy[:, :, oh, ow]
    return dP


def row_to_col_layout(P, h, w, kk, m):
    """kn2row partial maps (N, KK, M, H, W) -> kn2col layout (N, H*W, KK*M)."""
    return np.ascontiguousarray(P.reshape(-1, kk, m, h * w).transpose(0, 3, 1, 2)).reshape(
        -1, h * w, kk * m)


def ref_conv(x, w, dy, stride, padding):
    """y, dx, dw from ref_im2col and matmul (float64 accumulate)."""
    m, c, kh, kw = w.shape
    n, _, ho, wo = dy.shape
    col = ref_im2col(x.astype(np.float64), kh, kw, stride, padding)
    wm = w.reshape(m, -1).astype(np.float64)
    y = (wm @ col).reshape(m, n, ho, wo).transpose(1, 0, 2, 3)
    dY = dy.astype(np.float64).transpose(1, 0, 2, 3).reshape(m, -1)
    dw = (dY @ col.T).reshape(w.shape)
    dx = ref_col2im(wm.T @ dY, x.shape, kh, kw, stride, padding)
    return y, dx, dw


def ref_maxpool(x, kernel, stride):
    kh, kw = kernel
    sh, sw = stride
    n, c, h, w = x.shape
    ho, wo = out_size(h, w, kh, kw, stride)
    y = np.empty((n, c, ho, wo), x.dtype)
    arg = np.empty((n, c, ho, wo), np.int64)
    for oh in range(ho):
        for ow in range(wo):
            win = x[:, :, oh * sh:oh * sh + kh, ow * sw:ow * sw + kw].reshape(n, c, -1)
            k = win.argmax(axis=2)                      # first maximum, row-major
            y[:, :, oh, ow] = np.take_along_axis(win, k[..., None], 2)[..., 0]
            arg[:, :, oh, ow] = (oh * sh + k // kw) * w + ow * sw + k % kw
    return y, arg


def ref_maxpool_backward(dy, arg, x_shape):
    n, c, h, w = x_shape
    dx = np.zeros((n * c, h * w), dy.dtype)
    for p, (a, g) in enumerate(zip(arg.reshape(n * c, -1), dy.reshape(n * c, -1), strict=True)):
        np.add.at(dx[p], a[a >= 0], g[a >= 0])  # -1: clipped by a fused ReLU
    return dx.reshape(x_shape)


def test_references_agree_with_torch():
    """The references above are themselves checked once against PyTorch."""
    pytest.importorskip("torch")
    for case in CASES:
        x, w, dy = case.data(np.float64)
        want = oracle.torch_conv(x, w, dy, case.stride, case.padding)
        ref = ref_conv(x, w, dy, case.stride, case.padding)
        for got, ty in zip(ref, want, strict=True):
            np.testing.assert_allclose(got, ty, rtol=1e-12, atol=1e-12, err_msg=case.id)
    for pcase in POOL_CASES:
        x, dy = pcase.data(np.float64)
        y, arg = ref_maxpool(x, pcase.kernel_pair, pcase.stride_pair)
        ty, targ, tdx = oracle.torch_pool(x, dy, pcase.kernel, pcase.stride)
        np.testing.assert_array_equal(y, ty, err_msg=pcase.id)
        np.testing.assert_array_equal(arg, targ, err_msg=pcase.id)
        np.testing.assert_allclose(ref_maxpool_backward(dy, arg, x.shape), tdx, rtol=1e-12,
                                   atol=1e-12, err_msg=pcase.id)


# ------------------------------------------------------------------ 1. kernel by kernel


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_im2col_and_col2im_kernels(fake, case, dtype, config):
    x, w, dy = case.data(dtype)
    g = geometry(case)
    n, c, h, wd, m, kh, kw, sh, sw, ph, pw, ho, wo = g
    stride, padding = case.stride, case.padding
    xa = fake.asarray(x)
    col = fake.empty((c * kh * kw, n * ho * wo), dtype)
    run(fake, "im2col", "im2col", dtype, col.size, (xa, col) + g, config)
    np.testing.assert_array_equal(col, ref_im2col(x, kh, kw, stride, padding))  # exact copy

    dcol = np.random.default_rng(1).standard_normal(col.shape).astype(dtype)
    dx = fake.empty(x.shape, dtype)
    run(fake, "im2col", "col2im", dtype, dx.size, (fake.asarray(dcol), dx) + g, config)
    close(dx, ref_col2im(dcol, x.shape, kh, kw, stride, padding), "col2im")
    # adjoint identity: <im2col(x), dcol> == <x, col2im(dcol)>
    close_dot(np.vdot(col.astype(np.float64), dcol), np.vdot(x.astype(np.float64), dx), dtype)


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_im2row_and_row2im_kernels(fake, case, dtype, config):
    x, w, dy = case.data(dtype)
    g = geometry(case)
    n, c, h, wd, m, kh, kw, sh, sw, ph, pw, ho, wo = g
    stride, padding = case.stride, case.padding
    row = fake.empty((n * ho * wo, c * kh * kw), dtype)
    run(fake, "im2row", "im2row", dtype, row.size, (fake.asarray(x), row) + g, config)
    np.testing.assert_array_equal(row, ref_im2col(x, kh, kw, stride, padding).T)

    drow = np.random.default_rng(2).standard_normal(row.shape).astype(dtype)
    dx = fake.empty(x.shape, dtype)
    run(fake, "im2row", "row2im", dtype, dx.size, (fake.asarray(drow), dx) + g, config)
    close(dx, ref_col2im(drow.T, x.shape, kh, kw, stride, padding), "row2im")


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_kn2row_shift_add_and_gather_kernels(fake, case, dtype, config):
    x, w, dy = case.data(dtype)
    g = geometry(case)
    n, c, h, wd, m, kh, kw, sh, sw, ph, pw, ho, wo = g
    stride, padding = case.stride, case.padding
    kk = kh * kw
    rng = np.random.default_rng(3)
    P = rng.standard_normal((n, kk, m, h, wd)).astype(dtype)

    # all taps at once (kn2row)
    y = fake.empty((n, m, ho, wo), dtype)
    run(fake, "kn2row", "kn2row_shift_add", dtype, y.size,
        (fake.asarray(P), y) + g + (0, kk, 0), config)
    want = ref_shift_add(P, kh, kw, h, wd, stride, padding, 0, kk)
    close(y, want, "kn2row_shift_add")

    # one tap at a time, accumulating into y (kn2row-aa)
    y1 = fake.empty((n, m, ho, wo), dtype)
    for k in range(kk):
        run(fake, "kn2row", "kn2row_shift_add", dtype, y1.size,
            (fake.asarray(P[:, k:k + 1]), y1) + g + (k, 1, int(k > 0)), config)
    close(y1, want, "kn2row_shift_add, tap by tap")

    # the adjoint gather, all taps and a tail slice of taps
    gathered = {}
    for k0, nk in ((0, kk), (kk // 2, kk - kk // 2)):
        dP = fake.empty((n, nk, m, h, wd), dtype)
        run(fake, "kn2row", "kn2row_shift_gather", dtype, dP.size,
            (fake.asarray(dy), dP) + g + (k0, nk), config)
        np.testing.assert_array_equal(
            dP, ref_shift_gather(dy, kh, kw, h, wd, stride, padding, k0, nk))
        gathered[k0] = dP
    # adjoint identity: <shift_add(P), dy> == <P, shift_gather(dy)>
    close_dot(np.vdot(y.astype(np.float64), dy), np.vdot(P.astype(np.float64), gathered[0]),
              dtype)


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_kn2col_shift_add_and_gather_kernels(fake, case, dtype, config):
    x, w, dy = case.data(dtype)
    g = geometry(case)
    n, c, h, wd, m, kh, kw, sh, sw, ph, pw, ho, wo = g
    stride, padding = case.stride, case.padding
    kk = kh * kw
    P = np.random.default_rng(4).standard_normal((n, kk, m, h, wd)).astype(dtype)
    Pc = row_to_col_layout(P, h, wd, kk, m)

    y = fake.empty((n, m, ho, wo), dtype)
    run(fake, "kn2col", "kn2col_shift_add", dtype, y.size, (fake.asarray(Pc), y) + g, config)
    close(y, ref_shift_add(P, kh, kw, h, wd, stride, padding, 0, kk), "kn2col_shift_add")

    dP = fake.empty((n, h * wd, kk * m), dtype)
    run(fake, "kn2col", "kn2col_shift_gather", dtype, dP.size, (fake.asarray(dy), dP) + g,
        config)
    want = ref_shift_gather(dy, kh, kw, h, wd, stride, padding, 0, kk)
    np.testing.assert_array_equal(dP, row_to_col_layout(want, h, wd, kk, m))


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_direct_kernels(fake, case, dtype, config):
    x, w, dy = case.data(dtype)
    g = geometry(case)
    n, c, h, wd, m, kh, kw, sh, sw, ph, pw, ho, wo = g
    y_ref, dx_ref, dw_ref = ref_conv(x, w, dy, case.stride, case.padding)
    xa, wa, dya = fake.asarray(x), fake.asarray(w), fake.asarray(dy)
    y = fake.empty(dy.shape, dtype)
    dx = fake.empty(x.shape, dtype)
    dw = fake.empty(w.shape, dtype)
    run(fake, "direct", "direct_forward", dtype, y.size, (xa, wa, y) + g, config)
    run(fake, "direct", "direct_backward_data", dtype, dx.size, (dya, wa, dx) + g, config)
    run(fake, "direct", "direct_backward_filter", dtype, dw.size, (dya, xa, dw) + g, config)
    oracle.assert_conv_close((y, dx, dw), (y_ref, dx_ref, dw_ref), dtype, "direct kernels")


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pcase", POOL_CASES, ids=POOL_IDS)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("relu", [False, True], ids=["pool", "pool+relu"])
def test_maxpool_kernels(fake, pcase, dtype, config, ties, relu):
    kernel, stride = pcase.kernel_pair, pcase.stride_pair
    x, dy = pcase.data(dtype, seed=5)
    if ties:                                    # many equal maxima: first one must win
        x = np.round(x)
    y_ref, arg_ref = ref_maxpool(x, kernel, stride)
    if relu:  # fused ReLU: 0, and argmax -1 (no gradient), where the max is <= 0
        arg_ref = np.where(y_ref <= 0, -1, arg_ref)
        y_ref = np.where(y_ref <= 0, 0, y_ref).astype(dtype)
    g = x.shape + kernel + stride + y_ref.shape[2:]
    y = fake.empty(y_ref.shape, dtype)
    arg = fake.empty(y_ref.shape, np.int64)
    run(fake, "pool", "maxpool_forward", dtype, y.size,
        (fake.asarray(x), y, arg) + g + (int(relu),), config)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(arg, arg_ref)

    dx = fake.empty(x.shape, dtype)
    run(fake, "pool", "maxpool_backward", dtype, dx.size,
        (fake.asarray(dy), fake.asarray(arg_ref), dx) + g, config)
    close(dx, ref_maxpool_backward(dy, arg_ref, x.shape), "maxpool_backward")


# ------------------------------------------------------------------ 2. launchers end to end


@pytest.fixture
def emulated(fake, monkeypatch):
    """The real launchers, with the CuPy stand-in (and emulated kernels) behind them."""
    monkeypatch.setattr(_runtime, "get_cupy", lambda: fake)
    return fake


def launchers(module, fake):
    """kernels.cuda.<module>.forward/backward on the stand-in, called like oracle.check_conv
    calls them (numpy arrays in); no output may keep the stand-in's NaN poison."""
    mod = getattr(kc, module)

    def forward(x, w, stride, padding):
        y = mod.forward(fake.asarray(x), fake.asarray(w), stride, padding)
        assert not np.isnan(y).any(), f"{module}: y has unwritten elements"
        return y

    def backward(dy, x, w, stride, padding):
        dx, dw = mod.backward(fake.asarray(dy), fake.asarray(x), fake.asarray(w), stride,
                              padding)
        assert not np.isnan(dx).any(), f"{module}: dx has unwritten elements"
        assert not np.isnan(dw).any(), f"{module}: dw has unwritten elements"
        return dx, dw

    return forward, backward


def launch_conv(module, x, w, dy, stride, padding, fake):
    forward, backward = launchers(module, fake)
    y = forward(x, w, stride, padding)
    dx, dw = backward(dy, x, w, stride, padding)
    for a, shape in ((y, dy.shape), (dx, x.shape), (dw, w.shape)):
        assert a.shape == shape and a.dtype == x.dtype
    return y, dx, dw


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("module", kc.CONV_MODULES)
def test_launcher_matches_numpy_backend_and_torch(emulated, module, case, dtype):
    skip_unsupported(module, case)
    check_launcher(emulated, module, case, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=oracle.ids(WINOGRAD_CASES))
def test_winograd_launcher_matches_numpy_backend_and_torch(emulated, case, dtype):
    """The CUDA grid has no 3x3 stride-1 case: kernels/cuda/winograd.py (array operations,
    no .cu file) on the stand-in, whose NaN poison and guard cells check its slicing."""
    check_launcher(emulated, "winograd", case, dtype)


def check_launcher(emulated, module, case, dtype):
    x, w, dy = case.data(dtype)
    stride, padding = case.stride, case.padding
    pytest.importorskip("torch")
    got = oracle.check_conv(*launchers(module, emulated), x, w, dy, stride, padding,
                            what=f"cuda {module} (emulated)")

    # the CPU twin of the same algorithm (its numpy reference), through the public API
    algo = module.replace("_", "-")
    assert algo in kernels.ALGORITHMS
    y_np = kernels.conv2d_forward(x, w, stride, padding, algo=algo, backend="numpy")
    dx_np, dw_np = kernels.conv2d_backward(dy, x, w, stride, padding, algo=algo,
                                           backend="numpy")
    oracle.assert_conv_close(got, (y_np, dx_np, dw_np), dtype, f"vs numpy {algo}, {case.id}")


def test_cpu_twins_have_numpy_references():
    """Every CUDA module has a CPU module with a numpy reference (fails, never skips)."""
    for module in kc.CONV_MODULES + ("pool",):
        cpu = importlib.import_module(f"minigrad.kernels.{module}")
        assert callable(cpu.forward_numpy) and callable(cpu.backward_numpy), module


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pcase", POOL_CASES, ids=POOL_IDS)
def test_pool_launcher_matches_numpy_backend_and_torch(emulated, pcase, dtype):
    kernel, stride = pcase.kernel_pair, pcase.stride_pair
    x, dy = pcase.data(dtype, seed=6)

    def backward(dy, arg, x_shape, kernel, stride):
        dx = kc.pool.backward(emulated.asarray(dy), arg, x_shape, kernel, stride)
        assert dx.shape == x_shape and not np.isnan(dx).any()
        return dx

    pytest.importorskip("torch")
    y, arg, dx = oracle.check_pool(
        lambda x, k, s: kc.pool.forward(emulated.asarray(x), k, s), backward,
        x, dy, kernel, stride, what="cuda pool (emulated)")

    y_np, arg_np = kernels.maxpool2d_forward(x, kernel, stride, backend="numpy")
    dx_np = kernels.maxpool2d_backward(dy, arg_np, x.shape, kernel, stride, backend="numpy")
    np.testing.assert_array_equal(y, y_np)
    np.testing.assert_array_equal(arg, arg_np)
    oracle.assert_close(dx, dx_np, f"dx vs numpy, {pcase.id}", dtype)


def test_kn2row_aa_launches_one_shift_add_per_tap(emulated):
    case = CASES[1]                                         # 3x3 kernel
    x, w, dy = case.data(np.float32)
    launch_conv("kn2row_aa", x, w, dy, case.stride, case.padding, emulated)
    names = [name for name, _, _ in emulated.launches]
    assert names.count("kn2row_shift_add_f32_i32") == 9
    assert names.count("kn2row_shift_gather_f32_i32") == 9


# ------------------------------------------------------------------ 3. properties, harness


@pytest.mark.parametrize("module", kc.CONV_MODULES)
def test_results_do_not_depend_on_thread_order(emu_dir, monkeypatch, module):
    """Gathers: every output element has one writer, so any execution order gives the
    same bits (a scatter with races would not)."""
    case = CASES[2]
    skip_unsupported(module, case)       # winograd: no raw kernels, nothing to reorder
    x, w, dy = case.data(np.float32)
    results = []
    for order in ("forward", "reverse", "shuffle"):
        fake = emulate.FakeCupy(emu_dir, order=order, seed=7)
        monkeypatch.setattr(_runtime, "get_cupy", lambda fake=fake: fake)
        results.append(launch_conv(module, x, w, dy, case.stride, case.padding, fake))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("module", kc.CONV_MODULES + ("pool",))
def test_64bit_index_kernels(emulated, monkeypatch, module, dtype):
    """Force the long long instantiations (used past 2^31 elements) on a small problem."""
    case = CASES[4]
    if module != "pool":
        skip_unsupported(module, case)   # winograd: no raw kernels, no index types
    x, w, dy = case.data(dtype)
    monkeypatch.setattr(launch, "INT32_LIMIT", 0)
    if module == "pool":
        y, arg = kc.pool.forward(emulated.asarray(x), (2, 3), (2, 2))
        dx = kc.pool.backward(emulated.asarray(np.ones_like(y)), arg, x.shape, (2, 3), (2, 2))
        y_ref, arg_ref = ref_maxpool(x, (2, 3), (2, 2))
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(arg, arg_ref)
        np.testing.assert_allclose(dx, ref_maxpool_backward(np.ones_like(y), arg_ref, x.shape))
    else:
        y, dx, dw = launch_conv(module, x, w, dy, case.stride, case.padding, emulated)
        oracle.assert_conv_close((y, dx, dw), ref_conv(x, w, dy, case.stride, case.padding),
                                 dtype, f"{module} with 64-bit indices")
    assert emulated.launches and all(n.endswith("_i64") for n, _, _ in emulated.launches)


BUGGY = r"""
extern "C" __global__ void off_by_one_f32_i32(float* y, long long n) {
  for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    y[i + 1] = 1.0f;
}
extern "C" __global__ void skips_last_f32_i32(float* y, long long n) {
  for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < n - 1;
       i += gridDim.x * blockDim.x)
    y[i] = 1.0f;
}
extern "C" __global__ void reads_before_f32_i32(const float* x, float* y, long long n) {
  for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    y[i] = x[i - 1];
}
"""


def test_harness_catches_index_bugs(fake):
    mod = fake.RawModule(code=BUGGY)
    n = np.int64(100)
    with pytest.raises(AssertionError, match="guard"):
        mod.get_function("off_by_one_f32_i32")((2,), (64,), (fake.empty(100, np.float32), n))
    y = fake.empty(100, np.float32)
    mod.get_function("skips_last_f32_i32")((2,), (64,), (y, n))
    assert np.isnan(y[-1]) and not np.isnan(y[:-1]).any()          # poison shows the hole
    y = fake.empty(100, np.float32)
    mod.get_function("reads_before_f32_i32")((1,), (32,), (fake.zeros(100, np.float32), y, n))
    assert np.isnan(y[0])                                           # read a guard cell


def test_harness_rejects_what_a_raw_kernel_would_misread(fake):
    fn = fake.RawModule(code=BUGGY).get_function("skips_last_f32_i32")
    y = fake.empty((10, 10), np.float32)
    with pytest.raises(ValueError, match="contiguous"):
        fn((1,), (32,), (y.T, np.int64(100)))
    with pytest.raises(TypeError, match="int64"):
        fn((1,), (32,), (y, 100))                                   # unpacked Python int
    with pytest.raises(TypeError, match="float64"):
        fn((1,), (32,), (fake.empty(100, np.float64), np.int64(100)))
    with pytest.raises(ValueError, match="stand-in"):
        fn((1,), (32,), (np.empty(100, np.float32), np.int64(100)))


def test_harness_refuses_cooperative_cuda(fake):
    """emulate.h leaves __syncthreads/__shared__/atomics undefined on purpose."""
    src = 'extern "C" __global__ void k(float* y) { __syncthreads(); y[0] = 0; }'
    with pytest.raises(RuntimeError, match="emulation build failed"):
        fake.RawModule(code=src)


WORKSPACE_CASES = CASES + WINOGRAD_CASES + [
    oracle.ConvCase.of(1, 3, 6, 5, 4, 3, 3, 1, 1),   # N = 1
    oracle.ConvCase.of(2, 3, 6, 5, 1, 1, 1),         # M = 1, 1x1 kernel
    oracle.ConvCase.of(2, 3, 6, 5, 4, 1, 1, 2, 0)]


@pytest.mark.parametrize("case", WORKSPACE_CASES, ids=oracle.ids(WORKSPACE_CASES))
@pytest.mark.parametrize("module", kc.CONV_MODULES)
def test_workspace_bytes_is_what_forward_allocates(emulated, module, case):
    """kernels.cuda.<algo>.workspace_bytes == bytes the launcher allocates besides y
    (the CuPy stand-in counts them; allocations inside cuBLAS/CuPy are not included)."""
    skip_unsupported(module, case)
    x, w, dy = case.data(np.float32)
    xa, wa = emulated.asarray(x), emulated.asarray(w)
    before = emulated.allocated_bytes
    y = getattr(kc, module).forward(xa, wa, case.stride, case.padding)
    used = emulated.allocated_bytes - before - y.nbytes
    assert used == getattr(kc, module).workspace_bytes(x.shape, w.shape, case.stride,
                                                       case.padding, 4)
