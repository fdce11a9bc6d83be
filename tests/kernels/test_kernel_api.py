"""The kernels package's public interface: what the engine uses, and the option contract.

conv2d_forward/backward hand the options in kernels.OPTIONS (`saved`, `need_dx`) to the
algorithm functions that take them and deliberately not to the others (each only saves
work); an option OPTIONS does not list, or an algorithm parameter it does not list, is a
TypeError naming the option, the op, the algorithm and the backend.
"""
import importlib
import types

import numpy as np
import pytest
from minigrad.kernels import _common, _numba, gemm

from minigrad import kernels

PUBLIC = ("conv2d_forward", "conv2d_backward", "workspace_bytes", "supports",
          "maxpool2d_forward", "maxpool2d_backward", "matmul", "gemm_info", "bias_add",
          "bias_grad", "threading_layer", "blas_info")


# --------------------------------------------------------------------------- public names


def test_all_lists_the_public_interface():
    for name in PUBLIC + ("ALGORITHMS", "BACKENDS", "OPTIONS"):
        assert name in kernels.__all__, name
        assert hasattr(kernels, name), name
    for name in kernels.__all__:
        assert not name.startswith("_"), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_is_a_product(dtype):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((37, 19)).astype(dtype)
    b = rng.standard_normal((19, 53)).astype(dtype)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(kernels.matmul(a, b), a.astype(np.float64) @ b, rtol=tol,
                               atol=tol)
    out = np.ones((37, 53), dtype)
    kernels.matmul(a, b, out=out, accumulate=True)
    np.testing.assert_allclose(out, 1 + a.astype(np.float64) @ b, rtol=tol, atol=tol)
    stack = rng.standard_normal((3, 19, 53)).astype(dtype)
    np.testing.assert_allclose(kernels.matmul(a, stack), a.astype(np.float64) @ stack,
                               rtol=tol, atol=tol)


def test_matmul_accumulate_needs_out():
    a = np.ones((2, 2), np.float32)
    with pytest.raises(ValueError, match="matmul: accumulate=True"):
        kernels.matmul(a, a, accumulate=True)


def test_bias_add_and_bias_grad_match_numpy():
    rng = np.random.default_rng(2)
    y = rng.standard_normal((3, 5, 4, 6)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    want = y + b.reshape(1, -1, 1, 1)
    assert kernels.bias_add(y, b) is y  # in place
    np.testing.assert_allclose(y, want, rtol=1e-6)
    np.testing.assert_allclose(kernels.bias_grad(want), want.sum(axis=(0, 2, 3)), rtol=1e-5)
    with pytest.raises(ValueError, match=r"bias_add: bias of shape \(4,\).*\(3, 5, 4, 6\)"):
        kernels.bias_add(y, b[:4])


def test_threading_layer_is_thread_safe():
    # workqueue would abort the process when two Python threads launch kernels at once
    assert kernels.threading_layer() in ("tbb", "omp")


def test_blas_info_rows():
    rows = kernels.blas_info()
    assert isinstance(rows, list)
    for row in rows:
        assert len(row) == 4  # (library, version, kernel architecture, threads)


@pytest.mark.parametrize("mode", gemm.MODES)
def test_gemm_info_follows_the_mode(mode, monkeypatch):
    monkeypatch.setattr(gemm, "MODE", mode)
    info = kernels.gemm_info()
    assert info["mode"] == mode and info["avx512"] == gemm.HAS_AVX512
    for dtype in ("float32", "float64"):
        if gemm.uses_numba(np.dtype(dtype)):
            mr, nr = gemm.tile_shape(np.dtype(dtype))
            assert info[dtype].startswith("kernels.gemm (Numba, "), info
            assert f"{mr}x{nr} tile" in info[dtype]
        else:
            assert info[dtype] == "NumPy's BLAS", info
    if mode == "blas":
        assert info["float32"] == info["float64"] == "NumPy's BLAS"
    if mode == "numba":
        assert "Numba" in info["float32"] and "Numba" in info["float64"]


def test_gemm_info_rejects_a_bad_mode(monkeypatch):
    monkeypatch.setattr(gemm, "MODE", "fast")
    with pytest.raises(ValueError, match="MODE must be one of"):
        kernels.gemm_info()


# --------------------------------------------------------------------------- options


def _data():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    dy = rng.standard_normal((2, 4, 4, 3))
    return dy, x, w


def _fake_algorithm(monkeypatch, **functions):
    """Make kernels dispatch every algorithm to a module holding `functions`."""
    fake = types.ModuleType("kernels_fake_algo")
    for name, fn in functions.items():
        fn.__module__ = fake.__name__
        setattr(fake, name, fn)
    monkeypatch.setattr(kernels, "_module", lambda name, backend: fake)


def test_unknown_option_is_a_type_error_naming_everything():
    dy, x, w = _data()
    module = importlib.import_module("minigrad.kernels.im2col")
    with pytest.raises(TypeError) as e:
        kernels._call("conv2d_backward", "im2col", module, "backward", "numba", dy, x, w,
                      (1, 1), (0, 0), need_dX=False)
    msg = str(e.value)
    for part in ("conv2d_backward", "'need_dX'", "'im2col'", "'numba'",
                 "backward_numba accepts need_dx, saved"):
        assert part in msg, msg


def test_unknown_option_for_an_algorithm_without_options():
    _, x, w = _data()
    module = importlib.import_module("minigrad.kernels.direct")
    with pytest.raises(TypeError, match=r"conv2d_forward: unknown option 'save' for algo "
                                        r"'direct', backend 'numpy'; .*accepts no options"):
        kernels._call("conv2d_forward", "direct", module, "forward", "numpy", x, w, (1, 1),
                      (0, 0), save={})


def test_misspelled_option_in_an_algorithm_is_a_type_error(monkeypatch):
    """An algorithm whose parameter is spelled differently would never get the option."""
    def backward_numpy(dy, x, w, stride, padding, needdx=True):
        raise AssertionError("must not be called")

    _fake_algorithm(monkeypatch, backward_numpy=backward_numpy)
    dy, x, w = _data()
    with pytest.raises(TypeError, match=r"conv2d_backward: .*backward_numpy \(algo 'kn2row', "
                                        r"backend 'numpy'\) takes option\(s\) needdx"):
        kernels.conv2d_backward(dy, x, w, algo="kn2row", backend="numpy", need_dx=False)


def test_options_reach_only_the_algorithms_that_take_them(monkeypatch):
    seen = {}

    def forward_numpy(x, w, stride, padding):               # takes no option
        seen["forward"] = True
        return np.zeros((2, 4, 4, 3))

    def backward_numpy(dy, x, w, stride, padding, need_dx=True):   # takes need_dx only
        seen["need_dx"] = need_dx
        return (np.ones_like(x) if need_dx else None), np.ones_like(w)

    _fake_algorithm(monkeypatch, forward_numpy=forward_numpy, backward_numpy=backward_numpy)
    dy, x, w = _data()
    kernels.conv2d_forward(x, w, algo="direct", backend="numpy", saved={})
    assert seen["forward"]
    dx, dw = kernels.conv2d_backward(dy, x, w, algo="direct", backend="numpy", saved={},
                                     need_dx=False)
    assert seen["need_dx"] is False and dx is None and dw.shape == w.shape
    dx, _ = kernels.conv2d_backward(dy, x, w, algo="direct", backend="numpy", saved={})
    assert seen["need_dx"] is True and dx.shape == x.shape


def test_need_dx_false_drops_dx_of_an_algorithm_that_computes_it(monkeypatch):
    def backward_numpy(dy, x, w, stride, padding):
        return np.ones_like(x), np.ones_like(w)

    _fake_algorithm(monkeypatch, backward_numpy=backward_numpy)
    dy, x, w = _data()
    dx, dw = kernels.conv2d_backward(dy, x, w, algo="direct", backend="numpy", need_dx=False)
    assert dx is None and dw.shape == w.shape


@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
@pytest.mark.parametrize("backend", kernels.BACKENDS)
def test_every_algorithm_takes_only_known_options(algo, backend):
    """Every algorithm function's parameters past the positional ones are in OPTIONS (the
    CUDA modules import without CuPy: only their signatures are read here)."""
    mod = algo.replace("-", "_")
    package = "minigrad.kernels.cuda" if backend == "cupy" else "minigrad.kernels"
    module = importlib.import_module(f"{package}.{mod}")
    for direction, n_args in (("forward", 4), ("backward", 5)):
        fn = getattr(module, direction if backend == "cupy" else f"{direction}_{backend}")
        accepted = kernels._accepted(fn, "test", algo, backend, direction, n_args)
        assert accepted <= set(kernels.OPTIONS[direction])


def test_options_are_documented():
    assert set(kernels.OPTIONS) == {"forward", "backward"}
    assert set(kernels.OPTIONS["forward"]) == {"saved"}
    assert set(kernels.OPTIONS["backward"]) == {"saved", "need_dx"}


# --------------------------------------------------------------------------- taps


@pytest.mark.parametrize("h, wd, kh, kw, stride, padding", [
    (7, 6, 3, 2, (2, 1), (1, 0)),
    (5, 5, 3, 3, (1, 1), (1, 1)),
    (4, 9, 2, 4, (3, 2), (2, 3)),    # padding >= kernel - 1 and a large stride
    (3, 3, 3, 3, (1, 1), (3, 3)),    # padding as large as the kernel: some taps reach nothing
])
def test_taps_pair_every_output_with_its_input(h, wd, kh, kw, stride, padding):
    """Brute force: through tap (i, j), output (oh, ow) reads input (oh*sh + i - ph,
    ow*sw + j - pw); the taps must list exactly the pairs whose input is inside the image."""
    (sh, sw), (ph, pw) = stride, padding
    x_shape, w_shape = (1, 1, h, wd), (1, 1, kh, kw)
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    got = {}
    for t in _common.taps(x_shape, w_shape, stride, padding):
        assert (t.i, t.j) not in got
        outs = [(oh, ow) for oh in range(ho)[t.oh] for ow in range(wo)[t.ow]]
        ins = [(ih, iw) for ih in range(h)[t.ih] for iw in range(wd)[t.iw]]
        assert outs and len(outs) == len(ins)
        got[t.i, t.j] = list(zip(outs, ins, strict=True))
    want = {}
    for i in range(kh):
        for j in range(kw):
            pairs = [((oh, ow), (oh * sh + i - ph, ow * sw + j - pw))
                     for oh in range(ho) for ow in range(wo)
                     if 0 <= oh * sh + i - ph < h and 0 <= ow * sw + j - pw < wd]
            if pairs:
                want[i, j] = pairs
    assert got == want
    assert list(got) == sorted(got)  # row by row, as the references accumulate


@pytest.mark.parametrize("pad", [0, 1, 2, 4])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_valid_range_brute_force_and_bounds(pad, stride):
    """[lo, hi) are exactly the outputs whose input is inside, and 0 <= lo <= hi <= n_out
    (kernels zero-fill range(lo): lo past the row's end wrote past the buffer, e.g. a 6x9
    kernel on a 4x5 input with padding (1, 2), one output, tap j = 0 gave lo = 2)."""
    for n_in in range(1, 6):
        for kernel in range(1, n_in + 2 * pad + 1):
            n_out = (n_in + 2 * pad - kernel) // stride + 1
            for k in range(kernel):
                lo, hi = _common.valid_range(k, pad, stride, n_in, n_out)
                inside = [o for o in range(n_out) if 0 <= o * stride + k - pad < n_in]
                assert 0 <= lo <= hi <= n_out, (k, pad, stride, n_in, n_out, lo, hi)
                assert list(range(lo, hi)) == inside, (k, pad, stride, n_in, n_out)
                assert _numba.valid_range(k, pad, stride, n_in, n_out) == (lo, hi)


def test_valid_range_is_one_function_in_python_and_numba():
    for k, pad, stride, n_in, n_out in [(0, 1, 1, 5, 5), (2, 0, 2, 7, 3), (3, 3, 1, 3, 7),
                                        (1, 2, 3, 4, 2), (0, 0, 1, 1, 1)]:
        assert _numba.valid_range(k, pad, stride, n_in, n_out) == \
            _common.valid_range(k, pad, stride, n_in, n_out)
    assert _numba.valid_range.py_func is _common.valid_range
