"""kernels.gemm: the Numba GEMM against NumPy on every path (packed, dot, splits, edges)."""
import numpy as np
import pytest
from minigrad.kernels import gemm as G

SHAPES = [  # m, n, k: tiny, edges in every direction, each parallel split, each kernel
    (1, 1, 1), (7, 5, 3), (8, 48, 16), (9, 49, 17), (33, 97, 400), (64, 288, 300),
    (300, 70, 64), (64, 2000, 288), (5, 3, 5000), (64, 288, 12544 // 4), (2, 130, 2100),
]


def _operand(rng, shape, layout, dtype):
    """A (rows, cols) operand stored C-order, as the transpose of a C array, or strided."""
    r, c = shape
    if layout == "C":
        return rng.standard_normal((r, c)).astype(dtype)
    if layout == "T":
        return rng.standard_normal((c, r)).astype(dtype).T
    return rng.standard_normal((r, 2 * c)).astype(dtype)[:, ::2]  # neither: copied


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layouts", ["CC", "CT", "TC", "TT", "SC"])
@pytest.mark.parametrize("shape", SHAPES)
def test_gemm_matches_numpy(shape, layouts, dtype):
    m, n, k = shape
    rng = np.random.default_rng(m * 1000 + n + k)
    a = _operand(rng, (m, k), layouts[0], dtype)
    b = _operand(rng, (k, n), layouts[1], dtype)
    want = a.astype(np.float64) @ b.astype(np.float64)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    scale = np.sqrt(k)
    got = G.gemm(a, b)
    assert got.dtype == dtype and got.shape == (m, n)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)
    out = rng.standard_normal((m, n)).astype(dtype)
    start = out.copy()
    G.gemm(a, b, out=out, accumulate=True)
    np.testing.assert_allclose(out, start + want, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("threads", [1, 2])
def test_gemm_any_thread_count(threads):
    import numba

    rng = np.random.default_rng(0)
    a = rng.standard_normal((70, 900)).astype(np.float32)
    b = rng.standard_normal((900, 130)).astype(np.float32)
    old = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        for bb in (b, np.asfortranarray(b)):  # packed path, dot path
            np.testing.assert_allclose(G.gemm(a, bb), a @ b, rtol=1e-4, atol=1e-3)
    finally:
        numba.set_num_threads(old)


def test_gemm_zero_sizes():
    a = np.ones((3, 0), np.float32)
    b = np.ones((0, 4), np.float32)
    np.testing.assert_array_equal(G.gemm(a, b), np.zeros((3, 4), np.float32))
    out = np.full((3, 4), 2.0, np.float32)
    G.gemm(a, b, out=out, accumulate=True)
    np.testing.assert_array_equal(out, 2.0)
    assert G.gemm(np.ones((0, 5), np.float32), np.ones((5, 4), np.float32)).shape == (0, 4)


@pytest.mark.parametrize("a, b, out, match", [
    (np.ones((2, 3), np.float32), np.ones((4, 2), np.float32), None, r"\(2, 3\) by \(4, 2\)"),
    (np.ones((2, 3), np.float32), np.ones((3, 2), np.float64), None, "float32 and float64"),
    (np.ones((2, 3), np.int32), np.ones((3, 2), np.int32), None, "int32"),
    (np.ones((2, 3), np.float32), np.ones((3, 2), np.float32), np.ones((2, 2), np.float32).T,
     "C-contiguous"),
    (np.ones((2, 3), np.float32), np.ones((3, 2), np.float32), np.ones((3, 2), np.float32),
     r"shape \(2, 2\)"),
])
def test_gemm_bad_input(a, b, out, match):
    with pytest.raises(ValueError, match=match):
        G.gemm(a, b, out=out)


@pytest.mark.parametrize("mode", G.MODES)
def test_matmul_modes(monkeypatch, mode):
    """matmul gives a @ b under every MODE, for 2-D and stacked 3-D operands."""
    monkeypatch.setattr(G, "MODE", mode)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 20, 30)).astype(np.float32)
    b = rng.standard_normal((4, 30, 50)).astype(np.float32)
    np.testing.assert_allclose(G.matmul(a, b), a @ b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(G.matmul(a[0], b[0].T.copy().T), a[0] @ b[0], rtol=1e-4, atol=1e-4)
    out = np.ones((20, 50), np.float32)
    G.matmul(a[0], b[0], out=out, accumulate=True)
    np.testing.assert_allclose(out, 1 + a[0] @ b[0], rtol=1e-4, atol=1e-4)
    assert G.uses_numba(np.float32) == (mode == "numba" or (mode == "auto" and G.available()))


def test_matmul_rejects_unknown_mode(monkeypatch):
    monkeypatch.setattr(G, "MODE", "mkl")
    with pytest.raises(ValueError, match="auto.*numba.*blas"):
        G.matmul(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))


def test_plan_splits():
    assert G.plan(64, 12544, 288, 2) == (1, 2)  # wide output: split the columns
    assert G.plan(4096, 64, 288, 2) == (0, 2)  # tall output: split the rows
    assert G.plan(64, 288, 12544, 2) == (2, 2)  # deep product: split the depth
    assert G.plan(64, 288, 12544, 1) == (1, 1)


ROWS_SHAPES = [  # m, n, k: one tile, edges (1-, 2-, 3-vector kernels), several depth blocks
    (8, 48, 16), (13, 37, 5), (9, 10, 1), (64, 224, 288), (30, 100, 900), (3, 20, 40),
    (6, 64, 50), (288, 64, 224), (20, 120, 30),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", ROWS_SHAPES)
def test_macro_kernels_reading_rows_in_place(shape, dtype):
    """macro_kernel_rows_b / _rows_d: one operand read through a row table (rows anywhere in
    an array, overlapping), the other packed, against NumPy; overwrite and accumulate."""
    m, n, k = shape
    blk = G.BLOCKING[np.dtype(dtype)]
    mr, nr, kc, vl = blk["mr"], blk["nr"], blk["kc"], blk["vl"]
    rng = np.random.default_rng(m + n + k)
    tile = np.zeros((mr, nr), dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    tol["atol"] *= np.sqrt(k)

    a = rng.standard_normal((m, k)).astype(dtype)
    apack = np.zeros(-(-m // mr) * mr * k, dtype)
    G.pack_a(a, False, 0, m, 0, k, mr, apack)
    src = rng.standard_normal(300 + n + vl).astype(dtype)  # B's rows overlap in here
    b_tab = rng.integers(0, 300, k).astype(np.int64)
    b = np.stack([src[t:t + n] for t in b_tab])
    c = rng.standard_normal((m, n)).astype(dtype)
    start = c.copy()
    G.macro_kernel_rows_b(G.isa(), k, apack, src, b_tab, c, m, n, True, mr, nr, kc, tile)
    np.testing.assert_allclose(c, start + a @ b, **tol)
    G.macro_kernel_rows_b(G.isa(), k, apack, src, b_tab, c, m, n, False, mr, nr, kc, tile)
    np.testing.assert_allclose(c, a @ b, **tol)

    mr, nr = G.tile_shape(dtype, "rows")  # a tile of its own
    tile = np.zeros((mr, nr), dtype)
    src = rng.standard_normal(300 + k).astype(dtype)  # A's rows overlap in here
    a_tab = rng.integers(0, 300, -(-m // mr) * mr).astype(np.int64)
    a = np.stack([src[t:t + k] for t in a_tab[:m]])
    b = rng.standard_normal((k, n)).astype(dtype)
    bpack = np.zeros(-(-n // nr) * nr * k, dtype)
    G.pack_b(b, False, 0, k, 0, n, nr, bpack)
    straight = np.arange(k)  # a depth table that reads the rows straight
    G.macro_kernel_rows_d(G.isa(), k, src, a_tab, straight, bpack, c, m, n, False, mr, nr, kc,
                          tile)
    np.testing.assert_allclose(c, a @ b, **tol)
    start = c.copy()
    G.macro_kernel_rows_d(G.isa(), k, src, a_tab, straight, bpack, c, m, n, True, mr, nr, kc,
                          tile)
    np.testing.assert_allclose(c, start + a @ b, **tol)


def test_microkernel_modes_are_checked():
    with pytest.raises(ValueError, match="rows"):
        G.make_microkernel(None, "rows", "rows")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 5, 3), (65, 70, 300), (130, 260, 520)])
def test_reference_gemm_matches_numpy(shape, dtype):
    """The plain-Numba reference (kernels/gemm/reference.py): odd sizes, every block edge."""
    from minigrad.kernels.gemm import reference

    m, n, k = shape
    rng = np.random.default_rng(k)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(reference.gemm_reference(a, b), a.astype(np.float64) @ b,
                               rtol=tol, atol=tol * np.sqrt(k))


TAPS_SHAPES = [  # m, n, k, taps: one tile, edges (1-, 2-vector and scratch), depth blocks
    (8, 48, 16, 1), (13, 37, 5, 3), (9, 10, 1, 9), (64, 224, 32, 9), (30, 100, 900, 2),
    (3, 20, 40, 4), (32, 32, 1, 9), (840, 32, 1, 9), (16, 64, 3, 5),
]


@pytest.mark.parametrize("isa", G.supported())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", TAPS_SHAPES)
def test_macro_kernel_taps(monkeypatch, isa, shape, dtype):
    """macro_kernel_taps: several products, each added into C at its own (overlapping)
    offset; per-tap A with a shared B, and a shared A with per-tap B; every ISA."""
    monkeypatch.setattr(G, "MODE", "numba")
    old = G.set_isa(isa)
    try:
        m, n, k, taps = shape
        blk = G.blocking(dtype)
        mr, nr, kc = blk["mr"], blk["nr"], blk["kc"]
        rng = np.random.default_rng(m + n + k + taps)
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-11,
                                                                          atol=1e-12)
        tol["atol"] *= np.sqrt(k) * taps
        a = rng.standard_normal((taps, m, k)).astype(dtype)
        b = rng.standard_normal((taps, k, n)).astype(dtype)
        pa, pb = G.panels(m, mr) * k, G.panels(n, nr) * k
        apack = np.zeros(taps * pa, dtype)
        bpack = np.zeros(taps * pb, dtype)
        for t in range(taps):
            G.pack_a(a[t], False, 0, m, 0, k, mr, apack[t * pa:])
            G.pack_b(b[t], False, 0, k, 0, n, nr, bpack[t * pb:])
        ldc = n + 7
        c_offs = rng.integers(0, 3 * ldc, taps).astype(np.int64)  # overlapping shifts
        rows = m + 4
        tile = np.zeros((mr, nr), dtype)
        for shared in ("b", "a"):
            a_offs = np.arange(taps, dtype=np.int64) * pa if shared == "b" else np.zeros(
                taps, np.int64)
            b_offs = np.arange(taps, dtype=np.int64) * pb if shared == "a" else np.zeros(
                taps, np.int64)
            c = rng.standard_normal((rows, ldc)).astype(dtype)
            want = c.astype(np.float64).ravel()
            for t in range(taps):
                at = a[t] if shared == "b" else a[0]
                bt = b[t] if shared == "a" else b[0]
                prod = at.astype(np.float64) @ bt
                for i in range(m):
                    o = c_offs[t] + i * ldc
                    want[o:o + n] += prod[i]
            G.macro_kernel_taps(G.isa(), k, apack, a_offs, bpack, b_offs, c, c_offs, m, n,
                                mr, nr, kc, tile)
            np.testing.assert_allclose(c.ravel(), want, **tol)
    finally:
        G.set_isa(old)
