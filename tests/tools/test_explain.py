"""`minigrad explain`: the source-ID matrices it draws must be the matrices `kernels/` builds.

Everything is checked from the data, never from the image: mapping the IDs of each lowered
matrix to real values must give what the kernels' own lowering code builds from those values,
the GEMMs (and, for the kn2row family, the shift-adds) on the mapped values must give
kernels.conv2d_forward(..., backend="numpy"), and each cell's colour is its source pixel's.
"""
import argparse

import numpy as np
import pytest
from minigrad.kernels import im2col as k_im2col
from minigrad.kernels import im2row as k_im2row
from minigrad.kernels import kn2col as k_kn2col
from minigrad.kernels import kn2row as k_kn2row
from minigrad.kernels import winograd as k_winograd
from minigrad.kernels._common import pad_nchw

from minigrad import kernels
from minigrad.tools import explain

CASES = [  # x_shape, w_shape, stride, padding
    ((1, 2, 4, 4), (2, 2, 3, 3), (1, 1), (1, 1)),      # the default picture
    ((2, 3, 5, 6), (2, 3, 3, 2), (2, 1), (0, 1)),      # batch, odd kernel, mixed stride/pad
    ((1, 1, 7, 5), (3, 1, 3, 3), (2, 2), (2, 1)),      # stride 2, padding wider than needed
]
WINOGRAD_CASES = [  # 3x3, stride 1: the shapes winograd computes
    ((1, 2, 4, 4), (2, 2, 3, 3), (1, 1), (1, 1)),      # the default picture
    ((2, 3, 5, 6), (2, 3, 3, 3), (1, 1), (0, 1)),      # batch, odd Ho: cropped blocks
    ((1, 1, 7, 5), (3, 1, 3, 3), (1, 1), (2, 1)),      # padding 2: tiles reach past the input
]


def _skip_unsupported(algo, case):
    if not kernels.supports(algo, case[1], case[2]):
        pytest.skip(f"{algo}: 3x3 stride 1 only")


def _data(algo, case, seed=0):
    x_shape, w_shape, stride, padding = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    d = explain.lowering(algo, x_shape, w_shape, stride, padding)
    y = kernels.conv2d_forward(x, w, stride, padding, algo=algo, backend="numpy")
    return d, x, w, y


def _vals(d, name, x, w):
    kind = d["kinds"][name]
    assert kind in ("x", "w"), name
    return explain.values(d["matrices"][name], x if kind == "x" else w)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
def test_lowered_matrices_are_the_kernels_matrices(algo, case):
    _skip_unsupported(algo, case)
    d, x, w, _ = _data(algo, case)
    x_shape, w_shape, stride, padding = case
    m, c, kh, kw = w_shape
    h, wd = x_shape[2:]
    if algo == "direct":
        xp = pad_nchw(x, padding)
        win = explain.values(d["windows"], x)
        _, ho, wo = win.shape[:3]
        for oh in range(ho):
            for ow in range(wo):
                r, s = oh * stride[0], ow * stride[1]
                np.testing.assert_array_equal(win[:, oh, ow], xp[:, :, r:r + kh, s:s + kw])
        assert d["matrices"] == {} and d["workspace_bytes"] == 0
    elif algo == "im2col":
        np.testing.assert_array_equal(_vals(d, "cols", x, w),
                                      k_im2col.im2col_numpy(x, kh, kw, stride, padding))
        np.testing.assert_array_equal(_vals(d, "W_mat", x, w), w.reshape(m, -1))
    elif algo == "im2row":
        np.testing.assert_array_equal(_vals(d, "rows", x, w),
                                      k_im2row.im2row_numpy(x, kh, kw, stride, padding))
        np.testing.assert_array_equal(_vals(d, "W_mat^T", x, w), w.reshape(m, -1).T)
    elif algo == "kn2row":
        np.testing.assert_array_equal(_vals(d, "Wk", x, w), k_kn2row.kernel_matrix(w))
        np.testing.assert_array_equal(_vals(d, "x[0]", x, w), x[0].reshape(c, h * wd))
    elif algo == "kn2col":
        np.testing.assert_array_equal(_vals(d, "Wc", x, w), k_kn2col.kernel_matrix_t(w))
        np.testing.assert_array_equal(_vals(d, "x[0]^T", x, w), x[0].reshape(c, h * wd).T)
    elif algo == "winograd":
        _check_winograd_matrices(d, x, w, padding)
    else:  # kn2row-aa: one (W_ij, band of x[0]) pair per tap that reaches an output
        for g in d["gemms"]:
            i, j = (int(a) for a in g["a"][2:])
            np.testing.assert_array_equal(_vals(d, g["a"], x, w), w[:, :, i, j])
            band = _vals(d, g["b"], x, w)
            r0 = int(g["b"].split()[-1].split("-")[0])
            rows = band.shape[1] // wd
            np.testing.assert_array_equal(band, x[0, :, r0:r0 + rows].reshape(c, -1))
    # no lowered cell ever names a padding zero in the kn2row family: it never pads
    if algo in ("kn2row", "kn2row-aa", "kn2col"):
        assert all((ids > 0).all() for ids in d["matrices"].values())
    assert d["workspace_bytes"] == kernels.workspace_bytes(algo, x_shape, w_shape, stride,
                                                           padding)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
def test_drawn_gemms_and_shift_adds_give_the_convolution(algo, case):
    """Run what the picture shows, on values: it must equal kernels.conv2d_forward."""
    _skip_unsupported(algo, case)
    d, x, w, y = _data(algo, case)
    if algo == "winograd":
        _check_winograd_convolution(d, x, w, y)
        return
    n, m, ho, wo = d["y_shape"]
    assert y.shape == d["y_shape"]
    if algo == "direct":
        win = explain.values(d["windows"], x)                  # (N, Ho, Wo, C, KH, KW)
        np.testing.assert_allclose(np.einsum("nhwcij,mcij->nmhw", win, w), y, rtol=1e-12)
        return
    y0 = np.zeros((m, ho, wo))
    for g in d["gemms"]:
        a, b = _vals(d, g["a"], x, w), _vals(d, g["b"], x, w)
        assert a.shape == ((g["M"], g["K"])) and b.shape == (g["K"], g["N"])
        prod = a @ b
        ids, kind = d["matrices"][g["c"]], d["kinds"][g["c"]]
        assert ids.shape == prod.shape
        if kind == "y":                    # the GEMM writes outputs: each cell names its y
            assert sorted(ids.ravel()) == list(range(1, y.size + 1))
            np.testing.assert_allclose(explain.values(ids, y), prod, rtol=1e-10, atol=1e-12)
            continue
        assert kind == "p"                 # a partial map: shift-add it as drawn
        tap, filt = d["tap"][g["c"]], d["filter"][g["c"]]
        h, wd = d["x_shape"][2:]
        kw = d["w_shape"][3]
        for (r, k), v in np.ndenumerate(prod):
            t, mm, pos = tap[r, k], filt[r, k], ids[r, k]
            hits = d["shift"][t // kw, t % kw] == pos       # outputs this cell is added into
            y0[mm][hits] += v
    if any(d["kinds"][g["c"]] == "p" for g in d["gemms"]):
        np.testing.assert_allclose(y0, y[0], rtol=1e-10, atol=1e-12)


def _winograd_operands(d, x, w):
    """V = B^T d B and U = G g G^T, computed from the drawn tiles and transform matrices."""
    t = d["transforms"]
    tiles = explain.values(d["tiles"], x)                     # (N, C, th, tw, 4, 4)
    v = np.einsum("ai,nctuij,bj->abcntu", t["B^T"], tiles, t["B^T"])
    u = np.einsum("ai,mcij,bj->abmc", t["G"], w, t["G"])
    return u.reshape(d["winograd_shapes"]["u"]), v.reshape(d["winograd_shapes"]["v"])


def _check_winograd_matrices(d, x, w, padding):
    """The drawn transforms are F(2x2, 3x3)'s, the drawn tiles give the kernels' V, the
    drawn filter transform their U, and each GEMM operand's IDs name U[k] / V[k]."""
    for drawn, kernel in zip(d["transforms"].values(), k_winograd.matrices(np.float64),
                             strict=True):
        np.testing.assert_array_equal(drawn, kernel)
    u, v = _winograd_operands(d, x, w)
    th, tw = d["tile_grid"]
    np.testing.assert_allclose(v, k_winograd.input_transform(x, padding, th, tw), rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_allclose(u, k_winograd.filter_transform(w), rtol=1e-12, atol=1e-12)
    assert len(d["gemms"]) == 16
    for k, g in enumerate(d["gemms"]):
        assert (d["kinds"][g["a"]], d["kinds"][g["b"]], d["kinds"][g["c"]]) == ("u", "v", "m")
        np.testing.assert_array_equal(explain.values(d["matrices"][g["a"]], u), u[k])
        np.testing.assert_array_equal(explain.values(d["matrices"][g["b"]], v), v[k])


def _check_winograd_convolution(d, x, w, y):
    """The 16 drawn GEMMs on the drawn V and U, then Y = A^T M A into the drawn blocks:
    every output written exactly once, equal to conv2d_forward(algo="winograd")."""
    u, v = _winograd_operands(d, x, w)
    mw = np.full(d["winograd_shapes"]["m"], np.nan)
    for g in d["gemms"]:
        a = explain.values(d["matrices"][g["a"]], u)
        b = explain.values(d["matrices"][g["b"]], v)
        assert a.shape == (g["M"], g["K"]) and b.shape == (g["K"], g["N"])
        mw.ravel()[d["matrices"][g["c"]] - 1] = a @ b
    assert not np.isnan(mw).any()
    n, m = d["y_shape"][:2]
    th, tw = d["tile_grid"]
    at = d["transforms"]["A^T"]
    blocks = np.einsum("ax,xymntu,by->nmtuab", at, mw.reshape(4, 4, m, n, th, tw), at)
    got = np.full(y.size, np.nan)
    ids = d["blocks"]
    assert sorted(ids[ids > 0]) == list(range(1, y.size + 1))   # each output once
    got[ids[ids > 0] - 1] = blocks[ids > 0]
    np.testing.assert_allclose(got.reshape(y.shape), y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", WINOGRAD_CASES)
def test_winograd_transforms_and_gemms_give_the_convolution(case):
    d, x, w, y = _data("winograd", case)
    _check_winograd_matrices(d, x, w, case[3])
    _check_winograd_convolution(d, x, w, y)
    assert d["workspace_bytes"] == kernels.workspace_bytes("winograd", *case)
    # the tile walk-through of the picture: tile t0 of image 0 is the padded input's corner
    xp = pad_nchw(x, case[3])
    np.testing.assert_array_equal(explain.values(d["tiles"][0, :, 0, 0], x),
                                  np.pad(xp, ((0, 0), (0, 0), (0, 4), (0, 4)))[0, :, :4, :4])


@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
def test_each_cell_is_coloured_by_its_source_pixel(algo):
    d = explain.lowering(algo)
    n, c, h, wd = d["x_shape"]
    pad = explain.color("x", 0, d)
    assert pad == explain.PAD_GREY
    # every input pixel (c, h, w) has its own colour, and none is the padding grey
    pixel = {int(i): explain.color("x", i, d) for i in d["x"].ravel()}
    assert len(set(pixel.values())) == n * c * h * wd and pad not in pixel.values()
    # the padded input draws padding cells grey and pixel cells in the pixel's colour
    for v in d["x_padded"].ravel():
        assert explain.color("x", v, d) == (pixel[int(v)] if v else pad)
    # a lowered matrix cell gets exactly the colour of the pixel its ID names
    for name, ids in d["matrices"].items():
        if d["kinds"][name] != "x":
            continue
        for v in np.unique(ids):
            assert explain.color("x", v, d) == (pixel[int(v)] if v else pad)
    # and the labels name the source: c{c}({h},{w}), 0 for padding
    assert explain.label("x", 0, d) == "0"
    assert explain.label("x", 1 + 1 * h * wd + 1 * wd + 2, d) == "c1(1,2)"


def _cli(argv):
    p = argparse.ArgumentParser(prog="minigrad")
    explain.add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.func(args)


@pytest.fixture
def no_png(monkeypatch):
    """The text tests need no picture (drawing is tested below, on smaller inputs)."""
    monkeypatch.setattr(explain, "draw", lambda d, *paths: list(paths))


def test_text_labels_cells_by_source_pixel(capsys, tmp_path, no_png):
    assert _cli(["explain", "im2col", "--text", "--out", str(tmp_path / "a.png")]) == 0
    out = capsys.readouterr().out
    assert "GEMM Y_mat = W_mat @ cols   (M=2, N=16, K=18" in out
    assert "cols  (18 x 16):" in out
    # row (c=0, i=0, j=0) of cols with padding 1: output (0, 0) reads a padding zero there,
    # output (1, 1) reads x[0, 0, 0, 0]
    lines = out.splitlines()
    start = lines.index("cols  (18 x 16):")
    assert lines[start + 1].split()[:2] == ["(0,0)", "(0,1)"]         # columns: (oh, ow)
    cells = lines[start + 2].split()
    assert cells[0] == "c0(0,0)"                                       # rows: (c, kh, kw)
    cells = cells[1:]
    assert cells[0] == "0" and cells[5] == "c0(0,0)" and cells[15] == "c0(2,2)"
    assert out.rstrip().endswith(f"wrote {tmp_path / 'a.png'}\nwrote {tmp_path / 'a.svg'}")


def test_text_kn2row_shows_kernel_matrix_and_shift(capsys, tmp_path, no_png):
    assert _cli(["explain", "kn2row", "--text", "--padding", "0",
                 "--out", str(tmp_path / "k.png")]) == 0
    out = capsys.readouterr().out
    assert "Wk  (18 x 2):" in out and "P  (18 x 16):" in out
    assert "t(2,1)m1 m1c0(2,1) m1c1(2,1)" in " ".join(out.split())
    assert "tap (2,2), shift (2,2):" in out


@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
def test_png_written(algo, tmp_path, capsys):
    if algo == "winograd":
        pytest.skip("winograd: 3x3 stride 1 only")   # test_winograd_cli below
    out = tmp_path / f"explain-{algo}.png"
    assert _cli(["explain", algo, "--out", str(out), "--input", "1,2,3,3", "--kernel", "2",
                 "--filters", "2"]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert b"<svg" in out.with_suffix(".svg").read_bytes()[:1000]   # SVG by default too
    assert capsys.readouterr().out.split() == ["wrote", str(out), "wrote",
                                               str(out.with_suffix(".svg"))]


def _texts(fig):
    """Every text on the figure: titles, notes, cell numbers and the legend's."""
    texts = [t for ax in fig.axes for t in ax.texts] + list(fig.texts)
    for leg in fig.legends:
        texts += leg.get_texts()
    return [t for t in texts if t.get_text().strip()]


@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
def test_default_picture_fits_a_slide(algo):
    """At most 1600 px wide at the default DPI, every font at least 14 pt, and a legend
    that says what the colours and numbers mean."""
    import matplotlib.pyplot as plt

    fig = explain.picture(explain.lowering(algo))
    try:
        assert fig.get_figwidth() * explain.DPI <= 1600
        sizes = [t.get_fontsize() for t in _texts(fig)]
        assert min(sizes) >= 14
        legend = " | ".join(t.get_text() for t in fig.legends[0].get_texts())
        assert "padding zero" in legend and "input pixel" in legend
        assert "numbers are IDs" in legend
        assert ("partial map" in legend) == (algo in ("kn2row", "kn2row-aa", "kn2col"))
        assert ("window of output" in legend) == (algo == "direct")
    finally:
        plt.close(fig)


def test_a_big_input_is_scaled_to_the_width():
    import matplotlib.pyplot as plt

    fig = explain.picture(explain.lowering("im2col", (1, 3, 8, 8), (4, 3, 3, 3)))
    try:
        assert fig.get_figwidth() * explain.DPI <= 1600
    finally:
        plt.close(fig)


def test_out_in_a_missing_directory_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "no" / "such" / "x.png"
    assert _cli(["explain", "im2col", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"minigrad explain: --out {out}: the directory {out.parent} does not "
                   "exist; create it first (mkdir -p) or choose another path\n")
    assert not out.parent.exists()
    assert _cli(["explain", "im2col", "--out", str(tmp_path / "x.jpg")]) == 2
    assert capsys.readouterr().err.startswith(
        f"minigrad explain: --out {tmp_path / 'x.jpg'}: unknown suffix '.jpg'; ")
    assert _cli(["explain", "im2col", "--format", "gif"]) == 2
    assert capsys.readouterr().err == ("minigrad explain: --format: unknown format gif; "
                                       "choose from png, svg, pdf, comma-separated\n")


def test_format_and_out_without_suffix(tmp_path, capsys):
    assert _cli(["explain", "kn2col", "--out", str(tmp_path / "k"), "--format", "svg",
                 "--input", "1,1,3,3", "--filters", "1"]) == 0
    assert [f.name for f in tmp_path.iterdir()] == ["k.svg"]


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit) as e:
        _cli(["explain", "im2col", "--input", "1,2,4"])
    assert e.value.code == 2
    assert "--input" in capsys.readouterr().err
    assert _cli(["explain", "im2col", "--kernel", "9,9", "--padding", "0"]) == 2
    assert "larger than the padded input" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown algorithm"):
        explain.lowering("fft")


def test_winograd_cli(tmp_path, capsys):
    """PNG and text on a 3x3 layer; another kernel or stride is refused in one line that
    names the constraint."""
    out = tmp_path / "explain-winograd.png"
    assert _cli(["explain", "winograd", "--text", "--out", str(out), "--input", "1,1,4,4",
                 "--filters", "2"]) == 0
    text = capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "GEMM M[3,3] = U[3,3] @ V[3,3]   (M=2, N=4, K=1" in text
    assert "B^T  (4 x 4):" in text and "G  (4 x 3):" in text and "A^T  (2 x 4):" in text
    assert "1/2 -1/2  1/2" in text
    assert "U[1,2]  (2 x 1):" in text and "U12m1c0" in text
    for argv in (["--kernel", "5"], ["--stride", "2"]):
        assert _cli(["explain", "winograd", "--out", str(out), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("minigrad explain: winograd: ") and err.count("\n") == 1
        assert "3x3 kernel and stride 1" in err
