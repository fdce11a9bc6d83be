"""kernels.gemm on every micro-kernel this CPU runs (avx512, avx2, scalar), against NumPy,
and im2col's fused Numba paths with the AVX2/FMA micro-kernel forced, against the oracle."""
import numpy as np
import oracle
import pytest
from minigrad.kernels import gemm as G

ISAS = G.supported()


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    monkeypatch.setattr(G, "MODE", "numba")
    old = G.set_isa(request.param)
    yield request.param
    G.set_isa(old)


SHAPES = [(1, 1, 1), (7, 5, 3), (13, 37, 300), (33, 97, 400), (5, 3, 2100), (64, 288, 300)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_gemm_every_isa(isa, shape, dtype):
    """packed operands (C and transposed A), and the dot path (A by rows, B by columns)."""
    m, n, k = shape
    rng = np.random.default_rng(m + n + k)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    want = a.astype(np.float64) @ b
    tol = dict(rtol=1e-4, atol=1e-4 * np.sqrt(k)) if dtype == np.float32 else dict(
        rtol=1e-11, atol=1e-11 * np.sqrt(k))
    for aa, bb in ((a, b), (np.asfortranarray(a), b), (a, np.asfortranarray(b))):
        np.testing.assert_allclose(G.gemm(aa, bb), want, **tol)
    out = np.ones((m, n), dtype)
    G.gemm(a, np.asfortranarray(b), out=out, accumulate=True)
    np.testing.assert_allclose(out, 1 + want, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(13, 37, 5), (30, 100, 900), (6, 64, 50)])
def test_rows_operands_every_isa(isa, shape, dtype):
    m, n, k = shape
    blk = G.blocking(dtype)
    rng = np.random.default_rng(k)
    tol = dict(rtol=1e-4, atol=1e-4 * np.sqrt(k)) if dtype == np.float32 else dict(
        rtol=1e-11, atol=1e-11 * np.sqrt(k))
    mr, nr = blk["mr"], blk["nr"]
    a = rng.standard_normal((m, k)).astype(dtype)
    apack = np.zeros(-(-m // mr) * mr * k, dtype)
    G.pack_a(a, False, 0, m, 0, k, mr, apack)
    src = rng.standard_normal(300 + n + blk["vl"]).astype(dtype)
    b_tab = rng.integers(0, 300, k).astype(np.int64)
    c = np.empty((m, n), dtype)
    G.macro_kernel_rows_b(G.isa(), k, apack, src, b_tab, c, m, n, False, mr, nr, blk["kc"],
                          np.zeros((mr, nr), dtype))
    np.testing.assert_allclose(c, a @ np.stack([src[t:t + n] for t in b_tab]), **tol)
    mr, nr = G.tile_shape(dtype, "rows")
    src = rng.standard_normal(300 + k).astype(dtype)
    a_tab = rng.integers(0, 300, -(-m // mr) * mr).astype(np.int64)
    b = rng.standard_normal((k, n)).astype(dtype)
    bpack = np.zeros(-(-n // nr) * nr * k, dtype)
    G.pack_b(b, False, 0, k, 0, n, nr, bpack)
    G.macro_kernel_rows_d(G.isa(), k, src, a_tab, np.arange(k), bpack, c, m, n, False, mr, nr,
                          blk["kc"], np.zeros((mr, nr), dtype))
    np.testing.assert_allclose(c, np.stack([src[t:t + k] for t in a_tab[:m]]) @ b, **tol)
    # the same rows stepped along by a depth table (here: skipping every third number)
    d_tab = (np.arange(k) * 3 // 2).astype(np.int64)
    src = rng.standard_normal(300 + 2 * k).astype(dtype)
    G.macro_kernel_rows_d(G.isa(), k, src, a_tab, d_tab, bpack, c, m, n, False, mr, nr,
                          blk["kc"], np.zeros((mr, nr), dtype))
    np.testing.assert_allclose(c, np.stack([src[t + d_tab] for t in a_tab[:m]]) @ b, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 37, 5), (14, 64, 288), (5, 16, 900), (2, 8, 1)])
def test_cols_operand_every_isa(isa, shape, dtype):
    """A read in place by columns: panel p of MR rows starts at its own offset, and column kk
    of A is MR side-by-side numbers at a_tab[kk] from there (full, narrow and edge tiles,
    several depth blocks; overwrite and accumulate)."""
    panels_, n, k = shape
    blk = G.blocking(dtype)
    mr, nr = G.tile_shape(dtype, "cols")
    m = panels_ * mr - (1 if panels_ > 2 else 0)  # an edge panel of MR - 1 rows when > 2
    rng = np.random.default_rng(k + n)
    tol = dict(rtol=1e-4, atol=1e-4 * np.sqrt(k)) if dtype == np.float32 else dict(
        rtol=1e-11, atol=1e-11 * np.sqrt(k))
    src = rng.standard_normal(400 + mr).astype(dtype)
    a_tab = rng.integers(0, 200, k).astype(np.int64)
    a_offs = rng.integers(0, 200, panels_).astype(np.int64)
    a = np.array([[src[a_tab[kk] + a_offs[i // mr] + i % mr] for kk in range(k)]
                  for i in range(m)])
    b = rng.standard_normal((k, n)).astype(dtype)
    bpack = np.zeros(-(-n // nr) * nr * k, dtype)
    G.pack_b(b, False, 0, k, 0, n, nr, bpack)
    c = np.full((m, n), 7, dtype)
    tile = G.scratch_tiles(dtype, 1, "cols")[0]
    G.macro_kernel_cols_a(G.isa(), k, src, a_tab, a_offs, bpack, c, m, n, False, mr, nr,
                          blk["kc"], tile)
    np.testing.assert_allclose(c, a @ b, **tol)
    G.macro_kernel_cols_a(G.isa(), k, src, a_tab, a_offs, bpack, c, m, n, True, mr, nr,
                          blk["kc"], tile)
    np.testing.assert_allclose(c, 2 * (a @ b), **tol)


def test_gemm_info_names_the_microkernel(isa):
    info = G.gemm_info()
    assert info["isa"] == isa
    mr, nr = G.tile_shape(np.float32)
    assert G.ISAS[isa].title in info["float32"] and f"{mr}x{nr} tile" in info["float32"]
    assert G.available() == (isa in ("avx512", "avx2"))


def test_set_isa_rejects_unknown():
    with pytest.raises(ValueError, match="avx512"):
        G.set_isa("neon")


@pytest.mark.skipif("avx2" not in ISAS, reason="this CPU has no AVX2/FMA")
@pytest.mark.parametrize("path,stride,xs", [("windows", (1, 1), (4, 9, 12, 10)),
                                             ("windows_t", (1, 1), (4, 9, 12, 14)),
                                             ("packed", (2, 1), (4, 9, 12, 10))])
def test_im2col_fused_paths_on_avx2(monkeypatch, path, stride, xs):
    from minigrad.kernels import im2col, im2col_fused

    monkeypatch.setattr(G, "MODE", "numba")
    old = G.set_isa("avx2")
    try:
        rng = np.random.default_rng(0)
        ws, padding = (20, 9, 3, 3), (1, 1)
        assert im2col_fused.uses_windows_t(np.float32, xs[3], 1, 1) == (path == "windows_t")
        path = "windows" if path == "windows_t" else path  # _numba_path's name for both
        x = rng.standard_normal(xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        ho, wo = oracle.conv_out_shape(xs, ws, stride, padding)[2:]
        assert im2col._numba_path(xs, ws, stride, padding, ho, wo, np.float32,
                                  need_dx=True)[0] == path
        y = im2col.forward_numba(x, w, stride, padding)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx, dw = im2col.backward_numba(dy, x, w, stride, padding)
        y_ref, dx_ref, dw_ref = oracle.torch_conv(x, w, dy, stride, padding)
    finally:
        G.set_isa(old)
    oracle.assert_close(y, y_ref, f"y, {path}", np.float32)
    oracle.assert_close(dx, dx_ref, f"dx, {path}", np.float32)
    oracle.assert_close(dw, dw_ref, f"dw, {path}", np.float32)
