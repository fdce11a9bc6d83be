"""The Numba im2row's paths against its NumPy reference (and PyTorch), with honest workspace.

    fused        kernels.gemm: chunks of output pixels lowered into packed MR-row panels in
                 L2 (forward: threads take chunks; backward: threads take images)
    fused-small  the same with CHUNK_BYTES = 1: every chunk one MR-row panel, several chunks
                 per image, the last one partial
    batch        NumPy's BLAS (MINIGRAD_GEMM=blas): the batch's patch matrix, one GEMM each
"""
import numba
import numpy as np
import oracle
import pytest
from minigrad.kernels import gemm as G
from minigrad.kernels import im2row
from test_conv_workspace import SLACK, measured_workspace

from minigrad import kernels

CASES = [  # x shape, w shape, stride, padding
    ((5, 3, 9, 8), (4, 3, 3, 2), (2, 1), (1, 1)),     # C = 3 < MR, stride 2 x 1
    ((4, 2, 7, 7), (50, 2, 1, 4), (1, 3), (0, 2)),    # M over one NR panel, 1 x 4 taps
    ((3, 17, 6, 11), (9, 17, 3, 3), (1, 1), (1, 1)),  # C*K*K = 153: several NR panels
    ((2, 1, 30, 30), (5, 1, 5, 5), (3, 2), (2, 0)),   # one channel, CKK = 25, odd strides
    ((4, 9, 12, 10), (20, 9, 3, 4), (1, 1), (2, 1)),  # non-square, uneven padding
    ((3, 10, 5, 6), (4, 10, 1, 1), (1, 1), (0, 0)),   # 1 x 1
    ((1, 6, 13, 9), (7, 6, 3, 3), (2, 2), (2, 2)),    # one image (forward: threads share it)
    ((6, 32, 7, 7), (64, 32, 3, 3), (1, 1), (1, 1)),  # MNIST-conv2-like channels, odd size
    ((1, 1, 1, 3), (1, 1, 1, 2), (1, 1), (1, 0)),     # 6 pixels: a partial 8-row panel whose
]                                                     # repeated last pixel is 7 past the first
PATHS = ("fused", "fused-small", "batch")


def _use_path(monkeypatch, path):
    monkeypatch.setattr(G, "MODE", "blas" if path == "batch" else "numba")
    if path == "fused-small":
        monkeypatch.setattr(im2row, "CHUNK_BYTES", 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-p{c[3]}")
@pytest.mark.parametrize("path", PATHS)
def test_im2row_numba_paths(monkeypatch, path, case, dtype):
    _use_path(monkeypatch, path)
    xs, ws, stride, padding = case
    rng = np.random.default_rng(2)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    want = "batch" if path == "batch" else "fused"
    assert im2row._numba_path(xs[0], dtype)[0] == want
    y = im2row.forward_numba(x, w, stride, padding)
    oracle.assert_close(y, im2row.forward_numpy(x, w, stride, padding), f"y, {path}", dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw = im2row.backward_numba(dy, x, w, stride, padding)
    dx_ref, dw_ref = im2row.backward_numpy(dy, x, w, stride, padding)
    oracle.assert_close(dx, dx_ref, f"dx, {path}", dtype)
    oracle.assert_close(dw, dw_ref, f"dw, {path}", dtype)
    none, dw2 = im2row.backward_numba(dy, x, w, stride, padding, need_dx=False)
    assert none is None
    oracle.assert_close(dw2, dw_ref, f"dw (need_dx=False), {path}", dtype)
    got = measured_workspace(im2row.forward_numba, x, w, stride, padding, "numba")
    claimed = kernels.workspace_bytes("im2row", xs, ws, stride, padding, dtype, "numba")
    assert claimed <= got <= claimed + SLACK, (path, claimed, got)


@pytest.mark.parametrize("path", PATHS)
def test_im2row_numba_against_torch(monkeypatch, path):
    """MNIST conv2's shape (fewer images), through the dispatcher, against PyTorch."""
    _use_path(monkeypatch, path)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 32, 14, 14)).astype(np.float32)
    w = rng.standard_normal((64, 32, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((4, 64, 14, 14)).astype(np.float32)
    y = kernels.conv2d_forward(x, w, 1, 1, algo="im2row", backend="numba")
    dx, dw = kernels.conv2d_backward(dy, x, w, 1, 1, algo="im2row", backend="numba")
    y_ref, dx_ref, dw_ref = oracle.torch_conv(x, w, dy, (1, 1), (1, 1))
    oracle.assert_conv_close((y, dx, dw), (y_ref, dx_ref, dw_ref), np.float32, path)


def test_im2row_backward_path_and_threads(monkeypatch):
    """The backward shares images between threads: with one image it takes the batch path;
    the forward shares chunks of pixels, so one image is enough for it."""
    monkeypatch.setattr(G, "MODE", "numba")
    threads = numba.get_num_threads()
    assert im2row._numba_path(1, np.float32)[0] == "fused"
    assert im2row._numba_path(1, np.float32, backward=True)[0] == (
        "batch" if threads > 1 else "fused")
    assert im2row._numba_path(2, np.float32, backward=True)[0] == "fused"
    monkeypatch.setattr(G, "MODE", "blas")
    assert im2row._numba_path(64, np.float32)[0] == "batch"


def test_im2row_chunks():
    """Chunks are whole MR-row panels, at most CHUNK_BYTES of packed rows (unless one panel
    is more), and at least as many per image as the threads need."""
    # MNIST conv2, float32, MR = 8: one image (196 x 288 floats, 221 KiB) is one chunk
    assert im2row.chunk_pixels(196, 288, 4, 8) == 200
    assert im2row.chunk_pixels(196, 288, 4, 8, min_chunks=2) == 104
    # the wide layer: 3136 x 576 floats (7 MiB) in 29 chunks of 112 pixels
    assert im2row.chunk_pixels(3136, 576, 4, 8) == 112
    for hw, ckk, mr in ((5, 7, 8), (784, 9, 6), (3136, 576, 4), (99, 1000, 8)):
        chunk = im2row.chunk_pixels(hw, ckk, 4, mr)
        assert chunk % mr == 0 and chunk - mr < hw
        assert chunk * ckk * 4 <= max(im2row.CHUNK_BYTES, mr * ckk * 4 * 2)


def test_im2row_workspace_formula(monkeypatch):
    """MNIST conv2, float32: per thread a padded image (32 x 16 x 16), the image's rows in
    8-row panels (200 x 288) and its Y_rows (200 x 64); the weights packed once in 48-column
    panels (96 x 288); the int64 tap and pixel tables (288 + 196). NumPy: rows + Y_rows."""
    monkeypatch.setattr(G, "MODE", "numba")
    if G.BLOCKING[np.dtype(np.float32)]["mr"] != 8 or G.BLOCKING[np.dtype(np.float32)][
            "nr"] != 48:
        pytest.skip("numbers for the AVX-512 tile (8 x 48)")
    args = ((64, 32, 14, 14), (64, 32, 3, 3), 1, 1)
    threads = numba.get_num_threads()
    per_thread = 32 * 16 * 16 + 200 * 288 + 200 * 64
    assert kernels.workspace_bytes("im2row", *args, backend="numba") == (
        4 * (threads * per_thread + 96 * 288) + 8 * (288 + 196))
    assert kernels.workspace_bytes("im2row", *args, backend="numpy") == 4 * (288 + 64) * 12544
    monkeypatch.setattr(G, "MODE", "blas")
    assert kernels.workspace_bytes("im2row", *args, backend="numba") == 4 * (288 + 64) * 12544


@pytest.mark.parametrize("isa", [i for i in G.supported() if i != G.ISA])
def test_im2row_fused_on_other_isas(monkeypatch, isa):
    """Other micro-kernels have other tiles (AVX2: 6 x 16, scalar: 4 x 4): the lowering's
    general MR path and the narrow-tile edges, against PyTorch."""
    monkeypatch.setattr(G, "MODE", "numba")
    old = G.set_isa(isa)
    try:
        rng = np.random.default_rng(4)
        for xs, ws, stride, padding in (CASES[0], CASES[4], CASES[6]):
            x = rng.standard_normal(xs).astype(np.float32)
            w = rng.standard_normal(ws).astype(np.float32)
            y = im2row.forward_numba(x, w, stride, padding)
            dy = rng.standard_normal(y.shape).astype(np.float32)
            dx, dw = im2row.backward_numba(dy, x, w, stride, padding)
            y_ref, dx_ref, dw_ref = oracle.torch_conv(x, w, dy, stride, padding)
            oracle.assert_conv_close((y, dx, dw), (y_ref, dx_ref, dw_ref), np.float32, isa)
    finally:
        G.set_isa(old)
