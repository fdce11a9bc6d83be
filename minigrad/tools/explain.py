"""`minigrad explain ALGO`: see how one convolution algorithm lowers a small input to GEMM.

    minigrad explain im2col                         # writes explain-im2col.png
    minigrad explain kn2row --text                  # the same story as text
    minigrad explain im2row --input 1,2,5,5 --kernel 3,3 --filters 2 --stride 2 --padding 1

How the pictures are made (and why you can trust their colours)
---------------------------------------------------------------
The lowering is run on *pixel IDs* instead of pixel values: input pixel x[n, c, h, w] gets the
ID 1 + its flat index in x, and 0 stands for a padding zero. Every lowered matrix is then a
matrix of IDs, built here by plain index arithmetic (the same formulas as the kernels'
headers), and each cell is coloured by the pixel its ID names: hue = position (h, w),
lightness = channel c, grey = padding zero. `tests/test_explain.py` checks, from the data, that
mapping these IDs to real values gives exactly the matrices `kernels/` builds from the values
(im2col_numpy, im2row_numpy, kernel_matrix, ...), and that the GEMMs and shift-adds drawn
here reproduce `kernels.conv2d_forward(..., backend="numpy")`.

`lowering(algo, x_shape, w_shape, stride, padding)` returns the data; `draw()` and `text()`
render it. The IDs of a matrix are interpreted through its *kind*:

    "x"  input pixel  1 + flat index into x (N, C, H, W); 0 = padding zero   label c0(1,2)
    "w"  weight       1 + flat index into w (M, C, KH, KW)                   label m1c0(2,1)
    "p"  partial-map  1 + flat index into (N, H, W): the sum over channels   label p(1,2)
         entry        at input position (h, w) for the tap and filter of its row/column
    "y"  output       1 + flat index into y (N, M, Ho, Wo)                   label y1(0,1)
(with N > 1 the labels of x, p and y start with the image, e.g. n1c0(1,2)).
"""
import argparse
import sys

import numpy as np

from .. import kernels

ALGOS = kernels.ALGORITHMS
KINDS = ("x", "w", "p", "y")


# --------------------------------------------------------------------------- index arithmetic


def _pair(v):
    return (int(v), int(v)) if np.isscalar(v) else tuple(int(a) for a in v)


def _out(h, wd, kh, kw, stride, padding):
    (sh, sw), (ph, pw) = stride, padding
    return (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1


def _ids(shape):
    """1, 2, ... in C order: the ID array of a tensor (0 is kept for padding zeros)."""
    return np.arange(1, int(np.prod(shape)) + 1, dtype=np.int64).reshape(shape)


def _padded(x_ids, padding):
    ph, pw = padding
    n, c, h, wd = x_ids.shape
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=np.int64)
    xp[:, :, ph:ph + h, pw:pw + wd] = x_ids
    return xp


def _tap_span(o_size, in_size, offset, stride):
    """Outputs o with o*stride + offset inside [0, in_size): (o0, o1), o1 == o0 if none."""
    inside = [o for o in range(o_size) if 0 <= o * stride + offset < in_size]
    return (inside[0], inside[-1] + 1) if inside else (0, 0)


def _shift(h, wd, kh, kw, ho, wo, stride, padding):
    """shift[i, j, oh, ow] = 1 + ih*W + iw, the input position whose tap-(i, j) partial is
    added into output (oh, ow) (ih = oh*sh - ph + i, iw = ow*sw - pw + j), or 0 when that
    position is outside the input (the kn2row family never pads: the term is dropped)."""
    (sh, sw), (ph, pw) = stride, padding
    s = np.zeros((kh, kw, ho, wo), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            for oh in range(ho):
                for ow in range(wo):
                    ih, iw = oh * sh - ph + i, ow * sw - pw + j
                    if 0 <= ih < h and 0 <= iw < wd:
                        s[i, j, oh, ow] = 1 + ih * wd + iw
    return s


def lowering(algo, x_shape=(1, 2, 4, 4), w_shape=(2, 2, 3, 3), stride=1, padding=1):
    """The lowering of `algo` as matrices of source IDs (see the module docstring).

    Returns a dict: algo, x_shape, w_shape, y_shape, stride, padding, workspace_bytes,
    x / x_padded / w / y (ID tensors), matrices {name: 2-D IDs}, kinds {name: kind},
    gemms [{a, b, c, M, N, K, count, note}] (c = a @ b, on the matrices named),
    for the kn2row family shift (KH, KW, Ho, Wo) and tap / filter {partial name: 2-D ints}
    (the tap index i*KW + j and filter m of each partial entry), for direct windows
    (N, Ho, Wo, C, KH, KW), and steps (the text the picture and --text narrate).
    """
    if algo not in ALGOS:
        raise ValueError(f"unknown algorithm {algo!r}; choose from {', '.join(ALGOS)}")
    x_shape, w_shape = tuple(int(s) for s in x_shape), tuple(int(s) for s in w_shape)
    stride, padding = _pair(stride), _pair(padding)
    n, c, h, wd = x_shape
    m, cw, kh, kw = w_shape
    if min(x_shape) < 1 or min(w_shape) < 1:
        raise ValueError(f"shapes must be positive, got x {x_shape} and w {w_shape}")
    if cw != c:
        raise ValueError(f"input has C={c} channels but the kernel expects {cw}")
    if min(stride) < 1 or min(padding) < 0:
        raise ValueError(f"stride must be >= 1 and padding >= 0, got {stride}, {padding}")
    if kh > h + 2 * padding[0] or kw > wd + 2 * padding[1]:
        raise ValueError(f"kernel {kh}x{kw} is larger than the padded input")
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = _out(h, wd, kh, kw, stride, padding)
    x, w, y = _ids(x_shape), _ids(w_shape), _ids((n, m, ho, wo))
    xp = _padded(x, padding)
    d = dict(algo=algo, x_shape=x_shape, w_shape=w_shape, y_shape=(n, m, ho, wo),
             stride=stride, padding=padding, x=x, x_padded=xp, w=w, y=y,
             workspace_bytes=kernels.workspace_bytes(algo, x_shape, w_shape, stride, padding),
             matrices={}, kinds={}, rownames={}, colnames={}, gemms=[], steps=[])
    ckk = c * kh * kw
    ckk_names = [f"c{ci}({i},{j})" for ci in range(c) for i in range(kh) for j in range(kw)]
    pix_names = [(f"n{b}" if n > 1 else "") + f"({oh},{ow})"
                 for b in range(n) for oh in range(ho) for ow in range(wo)]
    tap_names = [f"t({i},{j})m{mm}" for i in range(kh) for j in range(kw) for mm in range(m)]

    def mat(name, kind, ids, rows=None, cols=None):
        """Record a matrix of IDs; rows / cols name what each row / column stands for."""
        d["matrices"][name] = np.asarray(ids, dtype=np.int64)
        d["kinds"][name] = kind
        d["rownames"][name], d["colnames"][name] = rows, cols

    if algo == "direct":
        win = np.zeros((n, ho, wo, c, kh, kw), dtype=np.int64)
        for oh in range(ho):
            for ow in range(wo):
                win[:, oh, ow] = xp[:, :, oh * sh:oh * sh + kh, ow * sw:ow * sw + kw]
        d["windows"] = win
        d["steps"] = [
            "No lowering and no GEMM: each output pixel is one dot product of length "
            f"C*KH*KW = {ckk}, read in place from the (zero-padded) input.",
            f"y[n, m, oh, ow] = sum_(c,i,j) w[m, c, i, j] * xpad[n, c, oh*{sh} + i, ow*{sw} + j]",
            f"{n * m * ho * wo} dot products, 2*N*M*Ho*Wo*C*KH*KW = "
            f"{2 * n * m * ho * wo * ckk} flops; workspace 0 bytes.",
        ]
        return d

    if algo in ("im2col", "im2row"):
        # cols[(c, i, j), (n, oh, ow)] = xpad[n, c, oh*sh + i, ow*sw + j]
        cols = np.zeros((c, kh, kw, n, ho, wo), dtype=np.int64)
        for ci in range(c):
            for i in range(kh):
                for j in range(kw):
                    for b in range(n):
                        for oh in range(ho):
                            for ow in range(wo):
                                cols[ci, i, j, b, oh, ow] = xp[b, ci, oh * sh + i, ow * sw + j]
        cols = cols.reshape(ckk, n * ho * wo)
        w_mat = w.reshape(m, ckk)
        y_mat = y.transpose(1, 0, 2, 3).reshape(m, n * ho * wo)   # row m: filter m everywhere
        if algo == "im2col":
            mat("W_mat", "w", w_mat, [f"m{mm}" for mm in range(m)], ckk_names)
            mat("cols", "x", cols, ckk_names, pix_names)
            mat("Y_mat", "y", y_mat, [f"m{mm}" for mm in range(m)], pix_names)
            d["gemms"].append(dict(a="W_mat", b="cols", c="Y_mat", M=m, N=n * ho * wo, K=ckk,
                                   count=1, note="one GEMM for the whole batch"))
            d["steps"] = [
                f"im2col: copy every receptive field into a column: cols is C*KH*KW x N*Ho*Wo "
                f"= {ckk} x {n * ho * wo}; column (n, oh, ow) is the window under output "
                "pixel (oh, ow), unrolled c, then kh, then kw.",
                f"GEMM  Y_mat = W_mat @ cols:  M = {m} (filters), N = {n * ho * wo} "
                f"(N*Ho*Wo), K = {ckk} (C*KH*KW).",
                "Row m of Y_mat is output channel m over every image and pixel; reshape "
                "(M, N, Ho, Wo) and transpose to y (N, M, Ho, Wo).",
            ]
        else:
            mat("rows", "x", cols.T, pix_names, ckk_names)
            mat("W_mat^T", "w", w_mat.T, ckk_names, [f"m{mm}" for mm in range(m)])
            mat("Y_rows", "y", y_mat.T, pix_names, [f"m{mm}" for mm in range(m)])  # NHWC
            d["gemms"].append(dict(a="rows", b="W_mat^T", c="Y_rows", M=n * ho * wo, N=m,
                                   K=ckk, count=1, note="weights on the right"))
            d["steps"] = [
                f"im2row: copy every receptive field into a ROW: rows is N*Ho*Wo x C*KH*KW "
                f"= {n * ho * wo} x {ckk} (the transpose of im2col's cols).",
                f"GEMM  Y_rows = rows @ W_mat^T:  M = {n * ho * wo} (N*Ho*Wo), N = {m} "
                f"(filters), K = {ckk} (C*KH*KW).",
                "Y_rows is y in channels-last (NHWC) order; one transpose gives y (N, M, Ho, "
                "Wo).",
            ]
        d["steps"].append(f"workspace (float32): {d['workspace_bytes']} bytes")
        return d

    # ---- the kn2row family: GEMMs on the kernel side, then K*K shift-adds (image 0 shown)
    hw = h * wd
    x0 = x[0].reshape(c, hw)
    pos = np.arange(1, hw + 1, dtype=np.int64)                    # p-IDs of image 0
    shift = _shift(h, wd, kh, kw, ho, wo, stride, padding)
    d["shift"], d["tap"], d["filter"] = shift, {}, {}
    taps = [(i, j) for i in range(kh) for j in range(kw)]
    shift_step = (f"shift-add: tap (i, j)'s partial map is shifted by (i - {ph}, j - {pw}), "
                  f"read at stride ({sh}, {sw}), clipped at the borders (no padding is ever "
                  f"materialised) and added into y: y[m, oh, ow] = sum_ij "
                  f"P_ij[m, oh*{sh} - {ph} + i, ow*{sw} - {pw} + j].")

    if algo == "kn2row":
        wk = w.transpose(2, 3, 0, 1).reshape(kh * kw * m, c)        # row (i*KW + j)*M + m
        mat("Wk", "w", wk, tap_names, [f"c{ci}" for ci in range(c)])
        mat("x[0]", "x", x0, [f"c{ci}" for ci in range(c)], None)
        mat("P", "p", np.broadcast_to(pos, (kh * kw * m, hw)), tap_names, None)
        rows = np.arange(kh * kw * m)
        d["tap"]["P"] = np.broadcast_to((rows // m)[:, None], (kh * kw * m, hw)).copy()
        d["filter"]["P"] = np.broadcast_to((rows % m)[:, None], (kh * kw * m, hw)).copy()
        d["gemms"].append(dict(a="Wk", b="x[0]", c="P", M=kh * kw * m, N=hw, K=c, count=n,
                               note="one GEMM per image, x used as is"))
        d["steps"] = [
            f"kn2row: unroll the KERNEL, not the input. Each tap (i, j) is an M x C matrix "
            f"w[:, :, i, j]; stacked they form Wk, KH*KW*M x C = {kh * kw * m} x {c}.",
            f"GEMM  P = Wk @ x[n] (x[n] seen as C x H*W, no copy):  M = {kh * kw * m} "
            f"(KH*KW*M), N = {hw} (H*W), K = {c} (C); once per image.",
            "P holds K*K partial maps: row block (i, j) is what tap (i, j) contributes at "
            "every input pixel.",
            shift_step,
        ]
    elif algo == "kn2col":
        wc = w.transpose(1, 2, 3, 0).reshape(c, kh * kw * m)        # column (i*KW + j)*M + m
        mat("x[0]^T", "x", x0.T, None, [f"c{ci}" for ci in range(c)])
        mat("Wc", "w", wc, [f"c{ci}" for ci in range(c)], tap_names)
        mat("P", "p", np.broadcast_to(pos[:, None], (hw, kh * kw * m)), None, tap_names)
        cols_ = np.arange(kh * kw * m)
        d["tap"]["P"] = np.broadcast_to((cols_ // m)[None, :], (hw, kh * kw * m)).copy()
        d["filter"]["P"] = np.broadcast_to((cols_ % m)[None, :], (hw, kh * kw * m)).copy()
        d["gemms"].append(dict(a="x[0]^T", b="Wc", c="P", M=hw, N=kh * kw * m, K=c, count=n,
                               note="one GEMM per image; x[n]^T is a free transposed view"))
        d["steps"] = [
            f"kn2col: kn2row transposed (channels-last). x[n] is read as H*W x C = {hw} x "
            f"{c} (one row per pixel), the kernel matrix Wc is C x KH*KW*M = {c} x "
            f"{kh * kw * m}.",
            f"GEMM  P = x[n]^T @ Wc:  M = {hw} (H*W), N = {kh * kw * m} (KH*KW*M), K = {c} "
            "(C); once per image.",
            "Row p of P holds, for input pixel p, the M outputs of every tap side by side; "
            "the shift-add moves whole M-vectors.",
            shift_step,
        ]
    else:  # kn2row-aa
        d["gemms"] = []
        for i, j in taps:
            oh0, oh1 = _tap_span(ho, h, i - ph, sh)
            ow0, ow1 = _tap_span(wo, wd, j - pw, sw)
            if oh1 == oh0 or ow1 == ow0:
                continue                                          # tap reaches no output
            r0, r1 = oh0 * sh - ph + i, (oh1 - 1) * sh - ph + i + 1   # input rows read
            band = slice(r0 * wd, r1 * wd)
            t = f"{i}{j}"
            mnames, cnames = [f"m{mm}" for mm in range(m)], [f"c{ci}" for ci in range(c)]
            mat(f"W_{t}", "w", w[:, :, i, j], mnames, cnames)
            mat(f"x[0] rows {r0}-{r1 - 1}", "x", x0[:, band], cnames, None)
            mat(f"P_{t}", "p", np.broadcast_to(pos[band], (m, r1 * wd - r0 * wd)), mnames, None)
            d["tap"][f"P_{t}"] = np.full((m, (r1 - r0) * wd), i * kw + j, dtype=np.int64)
            d["filter"][f"P_{t}"] = np.broadcast_to(np.arange(m)[:, None],
                                                    (m, (r1 - r0) * wd)).copy()
            d["gemms"].append(dict(a=f"W_{t}", b=f"x[0] rows {r0}-{r1 - 1}", c=f"P_{t}", M=m,
                                   N=(r1 - r0) * wd, K=c, count=n,
                                   note=f"tap ({i},{j}), input rows {r0}..{r1 - 1}"))
        d["steps"] = [
            "kn2row-aa (accumulating kn2row): K*K small GEMMs instead of one big one, and "
            "each partial is shift-added into y right away, so only ONE M x H*W partial is "
            "ever alive.",
            f"GEMM per tap (i, j) and image:  P_ij = W_ij @ x[n][:, band]:  M = {m} (M), "
            f"N = R*W (the R input rows the tap can reach), K = {c} (C).",
            shift_step,
        ]
    d["steps"].append(f"workspace (float32): {d['workspace_bytes']} bytes")
    return d


def values(ids, array):
    """Replace each ID by the value it names in `array` (0 -> 0.0): ids -> numbers."""
    flat = np.concatenate([[0], np.asarray(array).ravel()])
    return flat[np.asarray(ids)]


# --------------------------------------------------------------------------- labels, colours


def label(kind, i, d):
    """The text of one ID of `kind` (see the module docstring)."""
    i = int(i)
    if i == 0:
        return "0"
    n, c, h, wd = d["x_shape"]
    many = n > 1
    if kind == "x":
        b, ci, hh, ww = np.unravel_index(i - 1, d["x_shape"])
        return f"{f'n{b}' if many else ''}c{ci}({hh},{ww})"
    if kind == "w":
        mm, ci, ii, jj = np.unravel_index(i - 1, d["w_shape"])
        return f"m{mm}c{ci}({ii},{jj})"
    if kind == "p":
        b, hh, ww = np.unravel_index(i - 1, (n, h, wd))
        return f"{f'n{b}' if many else ''}p({hh},{ww})"
    b, mm, oh, ow = np.unravel_index(i - 1, d["y_shape"])
    return f"{f'n{b}' if many else ''}y{mm}({oh},{ow})"


PAD_GREY = (0.78, 0.78, 0.78)


def color(kind, i, d):
    """RGB of one ID: inputs hue = position, lightness = channel; grey = padding zero."""
    import matplotlib

    i = int(i)
    if i == 0:
        return PAD_GREY
    n, c, h, wd = d["x_shape"]

    def pixel(hh, ww, lighten):
        base = np.array(matplotlib.colormaps["hsv"]((hh * wd + ww) / (h * wd) * 0.92)[:3])
        return tuple(base * (1 - lighten) + lighten)

    if kind == "x":
        _, ci, hh, ww = np.unravel_index(i - 1, d["x_shape"])
        return pixel(hh, ww, 0.35 + 0.4 * ci / max(c - 1, 1))
    if kind == "p":
        _, hh, ww = np.unravel_index(i - 1, (n, h, wd))
        return pixel(hh, ww, 0.5)
    if kind == "w":
        mm, n_f = np.unravel_index(i - 1, d["w_shape"])[0], d["w_shape"][0]
        return tuple(matplotlib.colormaps["Purples"](0.2 + 0.3 * mm / max(n_f - 1, 1))[:3])
    mm, n_f = np.unravel_index(i - 1, d["y_shape"])[1], d["y_shape"][1]
    return tuple(matplotlib.colormaps["YlOrBr"](0.12 + 0.25 * mm / max(n_f - 1, 1))[:3])


# --------------------------------------------------------------------------- text


def _table(ids, kind, d, indent="    ", rows=None, cols=None):
    cells = [[label(kind, v, d) for v in row] for row in np.atleast_2d(ids)]
    if cols:
        cells = [list(cols)] + cells
    if rows:
        cells = [[""] + cells[0]] + [[r] + row for r, row in zip(rows, cells[1:])] if cols \
            else [[r] + row for r, row in zip(rows, cells)]
    width = max(len(s) for row in cells for s in row)
    return "\n".join(indent + " ".join(s.rjust(width) for s in row) for row in cells)


def text(d):
    """The lowering as text: every matrix cell labelled by its source (0 = padding zero)."""
    n, c, h, wd = d["x_shape"]
    m, _, kh, kw = d["w_shape"]
    _, _, ho, wo = d["y_shape"]
    out = [f"{d['algo']}: x {d['x_shape']} (N, C, H, W), w {d['w_shape']} (M, C, KH, KW), "
           f"stride {d['stride']}, padding {d['padding']} -> y {d['y_shape']}",
           "labels: c0(1,2) = input x[n, c=0, h=1, w=2]; 0 = padding zero; m1c0(2,1) = weight "
           "w[m=1, c=0, i=2, j=1]; p(1,2) = partial (sum over c) at input pixel (1,2); "
           "y1(0,1) = y[n, m=1, oh=0, ow=1]; row/column headers: c0(1,2) = (c, kh, kw), "
           "(0,1) = output pixel (oh, ow), t(0,1)m1 = tap (i, j) of filter m", ""]
    for b in range(n):
        for ci in range(c):
            out.append(f"input x[{b}, {ci}] with padding {d['padding']}:")
            out.append(_table(d["x_padded"][b, ci], "x", d))
    out.append("")
    out += ["  " + s for s in d["steps"]]
    out.append("")
    if d["algo"] == "direct":
        for oh in range(ho):
            for ow in range(wo):
                win = d["windows"][0, oh, ow].reshape(c, kh * kw)
                out.append(f"output pixel ({oh},{ow}) reads this window (C x KH*KW) in place:")
                out.append(_table(win, "x", d))
    for g in d["gemms"]:
        out.append(f"GEMM {g['c']} = {g['a']} @ {g['b']}   (M={g['M']}, N={g['N']}, "
                   f"K={g['K']}; x{g['count']}: {g['note']})")
    out.append("")
    for name, ids in d["matrices"].items():
        r, k = ids.shape
        out.append(f"{name}  ({r} x {k}):")
        out.append(_table(ids, d["kinds"][name], d, rows=d["rownames"][name],
                          cols=d["colnames"][name]))
    if "shift" in d:
        out.append("")
        out.append("shift-add: output (oh, ow) of filter m adds P_ij[m] at input pixel (ih, iw) "
                   "(- = outside the input, dropped):")
        for i in range(kh):
            for j in range(kw):
                grid = [[("p(%d,%d)" % divmod(int(s) - 1, wd)) if s else "-"
                         for s in row] for row in d["shift"][i, j]]
                out.append(f"  tap ({i},{j}), shift ({i - d['padding'][0]},"
                           f"{j - d['padding'][1]}):")
                width = max(len(s) for row in grid for s in row)
                out += ["      " + " ".join(s.rjust(width) for s in row) for row in grid]
    out.append("")
    out.append("result y (N, M, Ho, Wo):")
    for b in range(n):
        for mm in range(m):
            out.append(_table(d["y"][b, mm], "y", d))
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- picture

CELL = 0.42          # inches per matrix cell
GAP = 1.2            # cells between items


class _Canvas:
    """Items laid out in rows, in cell units, y pointing down; drawn on one axes at the end."""

    def __init__(self, d):
        self.d, self.rows, self.row = d, [], []

    def add(self, w, h, fn):
        self.row.append((w, h, fn))

    def newline(self):
        if self.row:
            self.rows.append(self.row)
        self.row = []

    def grid(self, ids, kind, title, fade=None, labels=None, outline=None, sub=None,
             rows=None, cols=None):
        ids = np.atleast_2d(ids)
        r, k = ids.shape
        d = self.d
        name_w = max(len(a) for a in rows) * 5 * 0.6 / 72 / CELL + 0.2 if rows else 0.0
        name_h = max(len(a) for a in cols) * 5 * 0.6 / 72 / CELL + 0.2 if cols else 0.0

        def draw(ax, x0, y0):
            from matplotlib.patches import Rectangle

            x0 += name_w
            if rows:
                for a, t in enumerate(rows):
                    ax.text(x0 - 0.1, y0 + name_h + (0.45 if sub else 0.1) + a + 0.5, t,
                            fontsize=5, ha="right", va="center", color="0.25")
            if cols:
                for b, t in enumerate(cols):
                    ax.text(x0 + b + 0.5, y0 + name_h + (0.45 if sub else 0.1) - 0.1, t,
                            fontsize=5, ha="center", va="bottom", rotation=90, color="0.25")
            ax.text(x0, y0 - 0.35, title, fontsize=8, weight="bold", va="bottom")
            if sub:
                ax.text(x0, y0 - 0.05, sub, fontsize=6.5, va="bottom", color="0.3")
            top = y0 + (0.45 if sub else 0.1) + name_h
            for a in range(r):
                for b in range(k):
                    v = ids[a, b]
                    faded = fade is not None and fade[a, b]
                    ax.add_patch(Rectangle((x0 + b, top + a), 1, 1, facecolor=color(kind, v, d),
                                           edgecolor="white" if faded else "0.35", lw=0.4,
                                           alpha=0.25 if faded else 1.0))
                    s = labels[a][b] if labels is not None else label(kind, v, d)
                    ax.text(x0 + b + 0.5, top + a + 0.5, s, ha="center", va="center",
                            fontsize=4.6 if len(s) > 6 else 5.5,
                            color="0.55" if faded else "black")
            if outline:
                for (a, b, hh, ww) in outline:
                    ax.add_patch(Rectangle((x0 + b, top + a), ww, hh, fill=False,
                                           edgecolor="black", lw=1.8))

        self.add(k + name_w, r + (1.0 if sub else 0.6) + name_h, draw)

    def note(self, s, width=None, height=None, size=9, weight="normal"):
        lines = s.split("\n")
        if width is None:   # about 0.6 em per character, in cells
            width = max(len(a) for a in lines) * size * 0.6 / 72 / CELL
        if height is None:
            height = len(lines) * size * 1.5 / 72 / CELL

        def draw(ax, x0, y0):
            ax.text(x0, y0 + height / 2, s, fontsize=size, va="center", ha="left",
                    weight=weight, linespacing=1.4)

        self.add(width, height, draw)

    def op(self, s):
        self.note(s, 1.3, 1.0, size=16, weight="bold")

    def render(self, title, path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.newline()
        width = max(sum(w for w, _, _ in row) + GAP * (len(row) - 1) for row in self.rows)
        height = sum(max(h for _, h, _ in row) + GAP for row in self.rows)
        fig = plt.figure(figsize=((width + 1) * CELL, (height + 2) * CELL))
        ax = fig.add_axes([0, 0, 1, 1])
        ax.set_xlim(-0.5, width + 0.5)
        ax.set_ylim(height + 0.5, -1.5)
        ax.axis("off")
        ax.text(-0.3, -1.2, title, fontsize=12, weight="bold", va="top")
        y = 0.6
        for row in self.rows:
            rh = max(h for _, h, _ in row)
            x = 0.0
            for w, h, fn in row:
                fn(ax, x, y + (rh - h) / 2)          # centred in its row
                x += w + GAP
            y += rh + GAP
        fig.savefig(path, dpi=150)
        plt.close(fig)


def _wrap(s, width=130):
    import textwrap

    return "\n".join(textwrap.wrap(s, width))


def _gemm_row(cv, d, g, shapes=True):
    mats, kinds = d["matrices"], d["kinds"]

    def item(name):
        r, k = mats[name].shape
        cv.grid(mats[name], kinds[name], name, sub=f"{r} x {k}", rows=d["rownames"][name],
                cols=d["colnames"][name])

    item(g["a"])
    cv.op("@")
    item(g["b"])
    cv.op("=")
    item(g["c"])
    if shapes:
        cv.note(f"GEMM\nM = {g['M']}\nN = {g['N']}\nK = {g['K']}\n"
                f"x{g['count']}: {g['note']}", size=8)
    cv.newline()


def _shift_rows(cv, d, mm=0, unread="computed by the GEMM but read by no output"):
    """The K*K partial maps of filter mm as H x W grids: cells each output reads are bold and
    labelled with that output; the rest (never read) is faded."""
    n, c, h, wd = d["x_shape"]
    _, _, kh, kw = d["w_shape"]
    _, _, ho, wo = d["y_shape"]
    ph, pw = d["padding"]
    pos = np.arange(1, h * wd + 1).reshape(h, wd)
    for i in range(kh):
        for j in range(kw):
            s = d["shift"][i, j]
            labels = [["" for _ in range(wd)] for _ in range(h)]
            fade = np.ones((h, wd), dtype=bool)
            for oh in range(ho):
                for ow in range(wo):
                    if s[oh, ow]:
                        ih, iw = divmod(int(s[oh, ow]) - 1, wd)
                        labels[ih][iw] = f"y{mm}({oh},{ow})"
                        fade[ih, iw] = False
            cv.grid(pos, "p", f"P_{i}{j}[m={mm}]", fade=fade, labels=labels,
                    sub=f"shift ({i - ph},{j - pw})")
            if j < kw - 1:
                cv.op("+")
        if i < kh - 1:
            cv.op("+")
        cv.newline()
    cv.op("=")
    cv.grid(d["y"][0, mm], "y", f"y[0, {mm}]", sub=f"{ho} x {wo}")
    cv.note("each partial-map cell is labelled with the output it is added into;\n"
            f"faded cells are {unread}", size=8)
    cv.newline()


def draw(d, path):
    """Draw the lowering `d` (from `lowering`) to the PNG `path`."""
    n, c, h, wd = d["x_shape"]
    m, _, kh, kw = d["w_shape"]
    _, _, ho, wo = d["y_shape"]
    ph, pw = d["padding"]
    cv = _Canvas(d)
    # row 1: the input (padded, per channel) and the weights
    for b in range(n):
        for ci in range(c):
            outline = None
            if d["algo"] == "direct" and b == 0:
                outline = [(0, 0, kh, kw)]
            cv.grid(d["x_padded"][b, ci], "x", f"x[{b}, {ci}]",
                    sub=f"{h}x{wd}" + (f" + padding {ph},{pw}" if ph or pw else ""),
                    outline=outline)
    cv.op(" ")
    for mm in range(m):
        for ci in range(c):
            cv.grid(d["w"][mm, ci], "w", f"w[{mm}, {ci}]", sub=f"{kh}x{kw}")
    cv.newline()
    cv.note("\n".join(_wrap(s) for s in d["steps"][:-1]), size=8.5)
    cv.newline()
    if d["algo"] == "direct":
        shown = [(oh, ow) for oh in range(ho) for ow in range(wo)][:4]
        for oh, ow in shown:
            cv.grid(d["windows"][0, oh, ow].reshape(c, kh * kw), "x",
                    f"window of y[0, :, {oh}, {ow}]", sub=f"C x KH*KW = {c} x {kh * kw}")
        cv.note("read in place:\nnothing is copied\n(workspace 0 bytes)", size=8)
        cv.newline()
    elif d["algo"] == "kn2row-aa":
        for g in d["gemms"][:3]:
            _gemm_row(cv, d, g)
        if len(d["gemms"]) > 3:
            cv.note(f"... and {len(d['gemms']) - 3} more taps, each GEMM followed at once by "
                    "its shift-add into y (run --text to see them all)", size=9)
            cv.newline()
        _shift_rows(cv, d, unread="read by no output (rows outside a tap's band are "
                                  "not even computed)")
    else:
        for g in d["gemms"]:
            _gemm_row(cv, d, g)
        if "shift" in d:
            _shift_rows(cv, d)
    # the result
    for b in range(n):
        for mm in range(m):
            cv.grid(d["y"][b, mm], "y", f"y[{b}, {mm}]", sub=f"{ho}x{wo}")
    cv.note(f"result y {d['y_shape']}   (workspace {d['workspace_bytes']} bytes, "
            "from kernels.workspace_bytes)", size=9)
    title = (f"{d['algo']}:  x {d['x_shape']} (NCHW),  w {d['w_shape']} (MCKK),  "
             f"stride {d['stride']},  padding {d['padding']}  ->  y {d['y_shape']}")
    cv.render(title, path)
    return path


# --------------------------------------------------------------------------- command line


def _ints(n_expected, name):
    def parse(s):
        try:
            v = tuple(int(a) for a in s.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected integers, got {s!r}") from None
        if len(v) not in n_expected or min(v) < 0:
            raise argparse.ArgumentTypeError(
                f"{name}: expected {' or '.join(map(str, n_expected))} non-negative integers "
                f"separated by commas, got {s!r}")
        return v
    return parse


def run(args):
    kernel = args.kernel if len(args.kernel) == 2 else args.kernel * 2
    stride = args.stride if len(args.stride) == 2 else args.stride * 2
    padding = args.padding if len(args.padding) == 2 else args.padding * 2
    x_shape = args.input
    w_shape = (args.filters, x_shape[1], *kernel)
    try:
        d = lowering(args.algo, x_shape, w_shape, stride, padding)
    except ValueError as e:
        print(f"minigrad explain: {e}", file=sys.stderr)
        return 2
    if args.text:
        print(text(d), end="")
    out = args.out or f"explain-{args.algo}.png"
    draw(d, out)
    print(f"wrote {out}")
    return 0


def add_parser(subparsers):
    """Register `minigrad explain` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "explain", help="draw how a convolution algorithm lowers a small input to GEMM",
        description="Draw (PNG) and optionally print (--text) how ALGO lowers a small "
                    "convolution to matrix multiplication: every lowered-matrix cell is "
                    "coloured and labelled by the input pixel it came from (grey 0 = padding).")
    p.add_argument("algo", choices=ALGOS)
    p.add_argument("--input", type=_ints((4,), "--input"), default=(1, 2, 4, 4),
                   metavar="N,C,H,W", help="input shape (default 1,2,4,4)")
    p.add_argument("--kernel", type=_ints((1, 2), "--kernel"), default=(3, 3),
                   metavar="KH,KW", help="kernel size (default 3,3)")
    p.add_argument("--filters", type=int, default=2, metavar="M",
                   help="output channels (default 2)")
    p.add_argument("--stride", type=_ints((1, 2), "--stride"), default=(1,),
                   metavar="S[,S]", help="stride (default 1)")
    p.add_argument("--padding", type=_ints((1, 2), "--padding"), default=(1,),
                   metavar="P[,P]", help="zero padding (default 1)")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="PNG to write (default explain-ALGO.png)")
    p.add_argument("--text", action="store_true", help="also print the lowering as text")
    p.set_defaults(func=run)
    return p


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="minigrad")
    add_parser(_p.add_subparsers(dest="command", required=True))
    _a = _p.parse_args()
    sys.exit(_a.func(_a))
