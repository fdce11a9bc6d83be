"""Winograd F(2x2, 3x3) (kernels/winograd.py) against PyTorch and the direct algorithm.

The module is called directly (kernels.ALGORITHMS' sweeps cover it through the public API
where the shape allows, tests/kernels/test_conv_parity.py): values, dx and dw in
float32 and float64, NumPy and Numba, on odd and even sizes, 1 to 17 channels and filters,
paddings 0 to 3, batches 1 to 3; the Numba path's chunks ending inside images and rows of
tiles, and its BLAS path; its small-C path (rows of tiles narrower and wider than a
segment, its dy read in place and copied, its chunks of tile rows) against PyTorch and
the chunked path; the float32 error against a float32 GEMM lowering's (im2col); the shape
errors; and workspace_bytes against what forward really allocates.
"""
import tracemalloc

import numba
import numpy as np
import oracle
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from minigrad.kernels import direct, gemm, im2col, winograd

pytest.importorskip("torch")

BACKENDS = ("numpy", "numba")

# (N, C, H, W, M, padding)
CASES = [
    (1, 1, 3, 3, 1, 0),      # one tile, one output
    (1, 1, 4, 4, 1, 0),      # exactly one 2x2 block
    (2, 3, 5, 7, 4, 1),      # odd H and W: the last tiles are cropped
    (3, 17, 9, 8, 5, 2),     # C = 17, padding 2
    (2, 4, 6, 6, 17, 0),     # M = 17
    (1, 2, 4, 9, 3, 2),
    (3, 1, 11, 5, 2, 1),     # C = 1 (a first layer)
    (2, 5, 7, 7, 3, 3),      # padding 3 > 2: dx runs on a cropped dy (negative padding)
    (1, 8, 14, 14, 16, 1),   # MNIST conv2's spatial size
    (2, 16, 3, 10, 7, 0),    # a single row of tiles, Ho = 1
]


def _ids(c):
    return "x{}x{}x{}x{}-m{}-p{}".format(*c)


def data(case, dtype, seed=0):
    n, c, h, w, m, p = case
    rng = np.random.default_rng([seed, *case])
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((m, c, 3, 3)).astype(dtype)
    dy = rng.standard_normal((n, m, h + 2 * p - 2, w + 2 * p - 2)).astype(dtype)
    return x, wt, dy, (p, p)


def run(backend, x, w, dy, padding, need_dx=True):
    y = getattr(winograd, "forward_" + backend)(x, w, (1, 1), padding)
    dx, dw = getattr(winograd, "backward_" + backend)(dy, x, w, (1, 1), padding,
                                                      need_dx=need_dx)
    return y, dx, dw


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", oracle.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_against_torch_and_direct(case, dtype, backend):
    x, w, dy, padding = data(case, dtype)
    got = run(backend, x, w, dy, padding)
    tag = f"winograd/{backend} case {case} {np.dtype(dtype).name}"
    oracle.assert_conv_close(got, oracle.torch_conv(x, w, dy, 1, padding), dtype,
                             f"vs torch, {tag}")
    want = (direct.forward_numpy(x, w, (1, 1), padding),
            *direct.backward_numpy(dy, x, w, (1, 1), padding))
    oracle.assert_conv_close(got, [a.astype(np.float64) for a in want], dtype,
                             f"vs direct, {tag}")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 3), c=st.integers(1, 17), m=st.integers(1, 17),
       h=st.integers(1, 12), w=st.integers(1, 12), p=st.integers(0, 2),
       backend=st.sampled_from(BACKENDS))
def test_random_shapes(n, c, m, h, w, p, backend):
    if h + 2 * p < 3 or w + 2 * p < 3:
        return  # the 3x3 kernel does not fit the padded input
    x, wt, dy, padding = data((n, c, h, w, m, p), np.float64, seed=1)
    oracle.assert_conv_close(run(backend, x, wt, dy, padding),
                             oracle.torch_conv(x, wt, dy, 1, padding), np.float64,
                             f"winograd/{backend} n{n} c{c} m{m} h{h} w{w} p{p}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_square_padding(backend):
    x, w, dy, _ = data((2, 3, 6, 9, 4, 0), np.float64)
    padding = (2, 0)
    dy = np.random.default_rng(3).standard_normal((2, 4, 8, 7))
    oracle.assert_conv_close(run(backend, x, w, dy, padding),
                             oracle.torch_conv(x, w, dy, 1, padding), np.float64,
                             f"winograd/{backend} padding (2, 0)")


@pytest.mark.parametrize("backend", BACKENDS)
def test_need_dx_false(backend):
    x, w, dy, padding = data((2, 3, 5, 6, 4, 1), np.float32)
    _, dx, dw = run(backend, x, w, dy, padding, need_dx=False)
    assert dx is None
    np.testing.assert_array_equal(dw, run(backend, x, w, dy, padding)[2])


def rel_err(got, want):
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_error_is_like_a_float32_gemm(backend):
    """The header's claim: float32 Winograd is as accurate as a float32 GEMM lowering
    (im2col: within 4x of its error) and under 1e-6 of the largest value, y, dx and dw."""
    x, w, dy, padding = data((2, 17, 14, 14, 17, 1), np.float32, seed=5)
    ref = oracle.torch_conv(x, w, dy, 1, padding)
    wino = run(backend, x, w, dy, padding)
    gemm = (im2col.forward_numba(x, w, (1, 1), padding),
            *im2col.backward_numba(dy, x, w, (1, 1), padding))
    for name, g, d, r in zip(("y", "dx", "dw"), wino, gemm, ref, strict=True):
        ew, ei = rel_err(g, r), rel_err(d, r)
        print(f"float32 {name}: winograd {ew:.2e}, im2col {ei:.2e}")
        assert ew < 1e-6, f"{name}: float32 Winograd error {ew:.2e}"
        assert ew < 4 * ei, f"{name}: Winograd {ew:.2e} vs im2col {ei:.2e}"


# (N, C, H, W, M, padding) for the small-C path: SEG = 16 tiles a segment
SMALL_CASES = [
    (1, 1, 3, 3, 1, 0),       # one tile, one thread's worth of work (N < threads)
    (3, 1, 28, 28, 8, 1),     # MNIST conv1's image: 14 tiles a row, one partial segment
    (2, 1, 9, 40, 3, 2),      # 21 tiles a row: a second segment overlapping the first
    (2, 2, 11, 33, 4, 0),     # C = 2, odd Ho and Wo: the last row and column cropped
    (1, 3, 35, 64, 5, 1),     # C = 3, N = 1, odd Ho, exactly 2 segments a row
    (2, 4, 7, 6, 3, 2),       # C = 4, the largest SMALL_C_GRAD
    (2, 2, 9, 8, 1, 3),       # M = 1: dx is a small-C forward with padding -1 (cropped)
]


def _count_calls(monkeypatch, name):
    calls = []
    fn = getattr(winograd, name)
    monkeypatch.setattr(winograd, name, lambda *a: calls.append(1) or fn(*a))
    return calls


@pytest.mark.parametrize("need_dx", [True, False], ids=["dx", "no-dx"])
@pytest.mark.parametrize("dtype", oracle.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", SMALL_CASES, ids=_ids)
def test_small_c_path(case, dtype, need_dx, monkeypatch):
    """The small-C path (C <= SMALL_C_FORWARD for y, <= SMALL_C_GRAD for dw; and y of the
    dx when M is small) against PyTorch, and against the chunked path on the same arrays."""
    c, m = case[1], case[4]
    x, w, dy, padding = data(case, dtype, seed=2)
    fwd = _count_calls(monkeypatch, "_forward_small")
    grad = _count_calls(monkeypatch, "_grad_weight_small")
    got = run("numba", x, w, dy, padding, need_dx=need_dx)
    assert len(fwd) == (c <= winograd.SMALL_C_FORWARD) + (need_dx and m <= winograd.SMALL_C_FORWARD)
    assert len(grad) == (c <= winograd.SMALL_C_GRAD)
    want = oracle.torch_conv(x, w, dy, 1, padding)
    if not need_dx:
        assert got[1] is None
        got, want = got[::2], want[::2]
    tag = f"winograd/numba small C, case {case} {np.dtype(dtype).name}"
    for g, r, name in zip(got, want, ("y", "dx", "dw") if need_dx else ("y", "dw"),
                          strict=True):
        oracle.assert_close(g, r, f"{name} {tag}", dtype)
    monkeypatch.setattr(winograd, "SMALL_C_FORWARD", 0)
    monkeypatch.setattr(winograd, "SMALL_C_GRAD", 0)
    chunked = run("numba", x, w, dy, padding, need_dx=need_dx)
    for g, r in zip(got, chunked[::1 if need_dx else 2], strict=True):
        oracle.assert_close(g, r.astype(np.float64), f"vs the chunked path, {tag}", dtype)


def test_small_c_grad_chunks(monkeypatch):
    """The small-C backward's chunks of tile rows (one tile row each, SMALL_CHUNK_BYTES =
    1), ending inside images; threads with several chunks."""
    monkeypatch.setattr(winograd, "SMALL_CHUNK_BYTES", 1)
    for case in [(3, 1, 10, 12, 4, 1), (2, 3, 9, 40, 5, 0)]:
        for dtype in oracle.DTYPES:
            x, w, dy, padding = data(case, dtype, seed=4)
            _, dw = winograd.backward_numba(dy, x, w, (1, 1), padding, need_dx=False)
            oracle.assert_close(dw, oracle.torch_conv(x, w, dy, 1, padding)[2],
                                f"dw, small C, chunks of one tile row, {case}", dtype)


@pytest.mark.parametrize("case", [(16, 1, 28, 28, 32, 1), (8, 3, 20, 20, 16, 1)],
                         ids=_ids)
def test_small_c_float32_error_is_like_a_float32_gemm(case):
    """As test_float32_error_is_like_a_float32_gemm, on the small-C path: y and dw within
    4x of im2col's float32 error and under 1e-6 of the largest value (dw adds up 16 lanes
    of sums over chunks of tile rows: 6272 tiles a thread on MNIST conv1's batch of 64)."""
    x, w, dy, padding = data(case, np.float32, seed=5)
    ref = oracle.torch_conv(x, w, dy, 1, padding)
    y = winograd.forward_numba(x, w, (1, 1), padding)
    _, dw = winograd.backward_numba(dy, x, w, (1, 1), padding, need_dx=False)
    gy = im2col.forward_numba(x, w, (1, 1), padding)
    _, gdw = im2col.backward_numba(dy, x, w, (1, 1), padding, need_dx=False)
    for name, g, d, r in (("y", y, gy, ref[0]), ("dw", dw, gdw, ref[2])):
        ew, ei = rel_err(g, r), rel_err(d, r)
        print(f"float32 small C {name}: winograd {ew:.2e}, im2col {ei:.2e}")
        assert ew < 1e-6, f"{name}: float32 Winograd error {ew:.2e}"
        assert ew < 4 * ei, f"{name}: Winograd {ew:.2e} vs im2col {ei:.2e}"


def test_matrices_compute_a_1d_correlation():
    """F(2, 3) in one dimension: A^T [(G g) * (B^T d)] = the two outputs of d correlated
    with g, for random d and g (the 2-D algorithm nests this one)."""
    bt, g_mat, at = winograd.matrices(np.float64)
    rng = np.random.default_rng(0)
    for _ in range(5):
        d, g = rng.standard_normal(4), rng.standard_normal(3)
        want = np.array([d[0:3] @ g, d[1:4] @ g])
        np.testing.assert_allclose(at @ ((g_mat @ g) * (bt @ d)), want, rtol=1e-13)


@pytest.mark.parametrize("w_shape, stride", [
    ((4, 3, 5, 5), (1, 1)),
    ((4, 3, 3, 1), (1, 1)),
    ((4, 3, 3, 3), (2, 2)),
    ((4, 3, 3, 3), (1, 2)),
])
@pytest.mark.parametrize("fn", ["forward_numpy", "forward_numba", "backward_numpy",
                                "backward_numba", "workspace_bytes"])
def test_unsupported_shapes_are_clear_errors(fn, w_shape, stride):
    x = np.zeros((1, 3, 8, 8), np.float32)
    w = np.zeros(w_shape, np.float32)
    f = getattr(winograd, fn)
    with pytest.raises(ValueError) as e:
        if fn == "workspace_bytes":
            f(x.shape, w.shape, stride, (0, 0), 4)
        elif fn.startswith("forward"):
            f(x, w, stride, (0, 0))
        else:
            f(np.zeros((1, 4, 6, 6), np.float32), x, w, stride, (0, 0))
    msg = str(e.value)
    assert "winograd" in msg and "3x3 kernel and stride 1" in msg
    assert str(w_shape) in msg and str(stride) in msg and str(x.shape) in msg
    assert not winograd.supports(w_shape, stride)
    assert winograd.supports((4, 3, 3, 3), (1, 1))


WORKSPACE_CASES = [  # x shape, w shape, padding
    ((4, 8, 16, 16), (16, 8, 3, 3), (1, 1)),   # padded, even output
    ((1, 8, 20, 19), (8, 8, 3, 3), (0, 2)),    # odd output width: cropped
    ((3, 4, 17, 17), (6, 4, 3, 3), (0, 0)),    # no padding, odd output: grid padded
    ((3, 4, 18, 18), (6, 4, 3, 3), (0, 0)),    # no padding, tiles fit: no copy at all
    ((64, 32, 14, 14), (64, 32, 3, 3), (1, 1)),  # MNIST conv2: many chunks per thread
    ((4, 1, 28, 28), (32, 1, 3, 3), (1, 1)),   # C = 1 (MNIST conv1): the small-C path
    ((3, 1, 9, 40), (5, 1, 3, 3), (0, 2)),     # small C, rows of tiles wider than SEG
]


@pytest.mark.parametrize("dtype", oracle.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(WORKSPACE_CASES)))
def test_workspace_matches_allocation(case, backend, dtype):
    """workspace_bytes(_numba) is the peak that forward really holds besides y (tracemalloc
    sees every NumPy allocation; 16 KiB of slack for NumPy's own small temporaries)."""
    check_workspace(case, backend, dtype)


@pytest.mark.parametrize("case", range(len(WORKSPACE_CASES)))
def test_workspace_matches_allocation_blas_path(case, monkeypatch):
    """The Numba backend's whole-batch path, taken when NumPy's BLAS does the GEMMs."""
    monkeypatch.setattr(gemm, "MODE", "blas")
    check_workspace(case, "numba", np.float32)


def check_workspace(case, backend, dtype):
    x_shape, w_shape, padding = WORKSPACE_CASES[case]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    fn = getattr(winograd, "forward_" + backend)
    fn(x, w, (1, 1), padding)  # compile (and let the GEMM cache its packing buffers) first
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        y = fn(x, w, (1, 1), padding)
        got = tracemalloc.get_traced_memory()[1] - base - y.nbytes
    finally:
        tracemalloc.stop()
    formula = winograd.workspace_bytes if backend == "numpy" else winograd.workspace_bytes_numba
    want = formula(x_shape, w_shape, (1, 1), padding, np.dtype(dtype).itemsize)
    assert want <= got <= want + 16 * 1024, f"workspace_bytes {want}, allocated {got}"


def test_workspace_mnist_conv2(monkeypatch):
    """The header's example, MNIST conv2 in float32: the NumPy reference's U + V + Mw,
    19.4 MB; the Numba path on 2 threads with the AVX-512 GEMM (MR 8, NR 48: chunks of 96
    tiles), U packed once and per thread a chunk's V and Mw, each of their 16 matrices a
    cache line longer, and four input rows: 1.25 MiB."""
    args = ((64, 32, 14, 14), (64, 32, 3, 3), (1, 1), (1, 1), 4)
    assert winograd.workspace_bytes(*args) == 4 * 16 * (64 * 32 + 32 * 3136 + 64 * 3136)
    if "avx512" not in gemm.supported():
        pytest.skip("the example is for the AVX-512 GEMM's panels")
    monkeypatch.setattr(gemm, "MODE", "numba")
    monkeypatch.setattr(numba, "get_num_threads", lambda: 2)
    old = gemm.set_isa("avx512")
    try:
        want = 4 * (16 * 64 * 32 + 2 * 16 * ((32 * 96 + 16) + (64 * 96 + 16)) + 2 * (64 + 16))
        assert winograd.workspace_bytes_numba(*args) == want == 1_315_456
    finally:
        gemm.set_isa(old)


@pytest.mark.parametrize("mode", ["numba", "blas"])
def test_numba_chunks_and_blas_path(mode, monkeypatch):
    """The Numba path with one NR-wide panel of tiles per chunk (CHUNK_BYTES = 1), so that
    chunks and panels end inside rows of tiles and inside images, and threads take several
    chunks each; and ("blas") the whole-batch path around NumPy's BLAS; also for the small
    C that the small-C path otherwise takes."""
    monkeypatch.setattr(gemm, "MODE", mode)
    monkeypatch.setattr(winograd, "CHUNK_BYTES", 1)
    monkeypatch.setattr(winograd, "SMALL_C_FORWARD", 0)  # not the small-C path, any C
    monkeypatch.setattr(winograd, "SMALL_C_GRAD", 0)
    for case in [(5, 3, 14, 13, 6, 1), (3, 9, 10, 11, 20, 0), (4, 4, 9, 9, 3, 3),
                 (2, 1, 7, 9, 4, 1)]:
        for dtype in oracle.DTYPES:
            x, w, dy, padding = data(case, dtype)
            oracle.assert_conv_close(run("numba", x, w, dy, padding),
                                     oracle.torch_conv(x, w, dy, 1, padding), dtype,
                                     f"winograd/numba {mode} case {case} {np.dtype(dtype)}")


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_cuda_twin_with_numpy_standing_in_for_cupy(case, monkeypatch):
    """kernels/cuda/winograd.py uses only array operations NumPy shares with CuPy, so its
    index math runs here with NumPy as `cupy` (the emulator's stand-in runs it too, in
    test_cuda_emulate.py; the GPU run is in test_cuda_gpu.py)."""
    from minigrad.kernels.cuda import _runtime
    from minigrad.kernels.cuda import winograd as cuda_winograd

    monkeypatch.setattr(_runtime, "get_cupy", lambda: np)
    x, w, dy, padding = data(case, np.float64)
    y = cuda_winograd.forward(x, w, (1, 1), padding)
    dx, dw = cuda_winograd.backward(dy, x, w, (1, 1), padding)
    oracle.assert_conv_close((y, dx, dw), oracle.torch_conv(x, w, dy, 1, padding),
                             np.float64, f"cuda winograd (numpy) case {case}")
    assert y.flags.c_contiguous and dx.flags.c_contiguous and dw.flags.c_contiguous
    assert cuda_winograd.backward(dy, x, w, (1, 1), padding, need_dx=False)[0] is None
    with pytest.raises(ValueError, match="3x3 kernel and stride 1"):
        cuda_winograd.forward(x, w, (2, 2), padding)
    n, c, h, wd, m, p = case
    th, tw = (h + 2 * p - 1) // 2, (wd + 2 * p - 1) // 2
    assert cuda_winograd.workspace_bytes(x.shape, w.shape, (1, 1), padding, 8) == 8 * (
        n * c * (2 * th + 2) * (2 * tw + 2) + 32 * c * n * th * tw + 16 * m * c
        + 16 * m * n * th * tw + 36)
