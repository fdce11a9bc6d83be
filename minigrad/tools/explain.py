"""`minigrad explain ALGO`: see how one convolution algorithm lowers a small input to GEMM.

    minigrad explain im2col                         # explain-im2col.png and .svg
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
Winograd works in a transformed domain, so its GEMM operands are not copies of x or w but
sums of them; their IDs name entries of the arrays kernels/winograd.py builds, and the
drawn transforms (B^T, G, A^T, applied to the drawn tiles and filters) produce them:
    "u"  U = G g G^T  1 + flat index into U (16, M, C)                       label U12m0c1
    "v"  V = B^T d B  1 + flat index into V (16, C, P), P = N*th*tw tiles    label V12c0t3
    "m"  Mw = U . V   1 + flat index into Mw (16, M, P)                      label M12m0t3
(U12m0c1 = position (xi, nu) = (1, 2) of the 4x4 Winograd domain, filter 0, channel 1;
t3 = tile 3, counted over (n, t, u)).
"""
import argparse
import sys

import numpy as np

from .. import kernels

ALGOS = kernels.ALGORITHMS
KINDS = ("x", "w", "p", "y", "u", "v", "m")


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
    if not kernels.supports(algo, w_shape, stride):
        raise ValueError(f"{algo}: Winograd F(2x2, 3x3) needs a 3x3 kernel and stride 1, got "
                         f"kernel {kh}x{kw} and stride {stride}; try --kernel 3 --stride 1")
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

    if algo == "winograd":
        _winograd(d, mat)
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


def _winograd(d, mat):
    """F(2x2, 3x3) (kernels/winograd.py): tiles, transforms and the 16 GEMMs, as IDs."""
    from ..kernels import winograd as wg

    n, c, h, wd = d["x_shape"]
    m = d["w_shape"][0]
    _, _, ho, wo = d["y_shape"]
    ph, pw = d["padding"]
    th, tw = (ho + 1) // 2, (wo + 1) // 2
    p = n * th * tw
    # tiles[n, c, t, u] = the 4x4 input tile at rows 2t - ph.., cols 2u - pw.. (0 outside x)
    grid = np.zeros((n, c, 2 * th + 2, 2 * tw + 2), dtype=np.int64)
    rows, cols = min(h, 2 * th + 2 - ph), min(wd, 2 * tw + 2 - pw)
    grid[:, :, ph:ph + rows, pw:pw + cols] = d["x"][:, :, :rows, :cols]
    tiles = np.zeros((n, c, th, tw, 4, 4), dtype=np.int64)
    for t in range(th):
        for u in range(tw):
            tiles[:, :, t, u] = grid[:, :, 2 * t:2 * t + 4, 2 * u:2 * u + 4]
    # blocks[n, m, t, u] = the y IDs of the 2x2 output block of tile (t, u) (0: cropped)
    full = np.zeros((n, m, 2 * th, 2 * tw), dtype=np.int64)
    full[:, :, :ho, :wo] = d["y"]
    blocks = full.reshape(n, m, th, 2, tw, 2).transpose(0, 1, 2, 4, 3, 5).copy()
    bt, g, at = (a.astype(np.float64) for a in wg.matrices(np.float64))
    d.update(tiles=tiles, blocks=blocks, tile_grid=(th, tw),
             transforms={"B^T": bt, "G": g, "A^T": at},
             winograd_shapes={"u": (16, m, c), "v": (16, c, p), "m": (16, m, p)})
    u_ids, v_ids, m_ids = (_ids(d["winograd_shapes"][k]) for k in "uvm")
    mnames = [f"m{mm}" for mm in range(m)]
    cnames = [f"c{ci}" for ci in range(c)]
    tnames = [f"t{q}" for q in range(p)]
    for k in range(16):
        xi, nu = divmod(k, 4)
        mat(f"U[{xi},{nu}]", "u", u_ids[k], mnames, cnames)
        mat(f"V[{xi},{nu}]", "v", v_ids[k], cnames, tnames)
        mat(f"M[{xi},{nu}]", "m", m_ids[k], mnames, tnames)
        d["gemms"].append(dict(a=f"U[{xi},{nu}]", b=f"V[{xi},{nu}]", c=f"M[{xi},{nu}]", M=m,
                               N=p, K=c, count=1,
                               note=f"Winograd position ({xi},{nu}), one of 16"))
    d["steps"] = [
        f"winograd F(2x2, 3x3): every 2x2 block of y comes from the 4x4 input tile d under "
        f"it (tiles overlap by 2; {th} x {tw} tiles per image, P = {p} in all).",
        "V = B^T d B (input tile),  U = G g G^T (each 3x3 filter g, per channel),  "
        "M = sum over c of U ⊙ V (16 products per channel, where a direct 2x2 block takes "
        "4 x 9 = 36),  Y = A^T M A (the 2x2 block).",
        f"Across channels the products are 16 GEMMs, one per position (xi, nu) of the 4x4 "
        f"domain:  M[xi,nu] = U[xi,nu] @ V[xi,nu]:  M = {m} (filters), N = {p} (tiles), "
        f"K = {c} (C).",
        f"workspace (float32): {d['workspace_bytes']} bytes",
    ]


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
    if kind in ("u", "v", "m"):
        k, a, b = np.unravel_index(i - 1, d["winograd_shapes"][kind])
        xi, nu = divmod(int(k), 4)
        return {"u": f"U{xi}{nu}m{a}c{b}", "v": f"V{xi}{nu}c{a}t{b}",
                "m": f"M{xi}{nu}m{a}t{b}"}[kind]
    b, mm, oh, ow = np.unravel_index(i - 1, d["y_shape"])
    return f"{f'n{b}' if many else ''}y{mm}({oh},{ow})"


PAD_GREY = (0.78, 0.78, 0.78)
CONST_BLUE = (0.84, 0.91, 0.97)     # the entries of Winograd's B^T, G, A^T


def color(kind, i, d):
    """RGB of one ID: inputs hue = position, lightness = channel; grey = padding zero."""
    import matplotlib

    i = int(i)
    if kind == "k":                               # a constant of a transform matrix
        return CONST_BLUE
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
    if kind == "u":                               # a transformed filter: the weights' purple
        _, mm, _ = np.unravel_index(i - 1, d["winograd_shapes"]["u"])
        n_f = d["w_shape"][0]
        return tuple(matplotlib.colormaps["Purples"](0.2 + 0.3 * mm / max(n_f - 1, 1))[:3])
    if kind == "v":                               # a transformed tile: hue = tile
        _, ci, q = np.unravel_index(i - 1, d["winograd_shapes"]["v"])
        p = d["winograd_shapes"]["v"][2]
        base = np.array(matplotlib.colormaps["hsv"](q / p * 0.92)[:3])
        lighten = 0.35 + 0.4 * ci / max(c - 1, 1)
        return tuple(base * (1 - lighten) + lighten)
    if kind == "m":                               # a Winograd-domain product: y's orange
        _, mm, _ = np.unravel_index(i - 1, d["winograd_shapes"]["m"])
    else:
        mm = np.unravel_index(i - 1, d["y_shape"])[1]
    n_f = d["y_shape"][1]
    return tuple(matplotlib.colormaps["YlOrBr"](0.12 + 0.25 * mm / max(n_f - 1, 1))[:3])


# --------------------------------------------------------------------------- text


def _table(ids, kind, d, indent="    ", rows=None, cols=None):
    cells = [[label(kind, v, d) for v in row] for row in np.atleast_2d(ids)]
    if cols:
        cells = [list(cols)] + cells
    if rows:
        if cols:
            cells = [[""] + cells[0]] + [[r] + row
                                         for r, row in zip(rows, cells[1:], strict=True)]
        else:
            cells = [[r] + row for r, row in zip(rows, cells, strict=True)]
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
    if d["algo"] == "winograd":
        out[1] += ("; U12m0c1 = U = G g G^T at Winograd position (xi, nu) = (1, 2), filter 0, "
                   "channel 1; V12c0t3 = V = B^T d B of channel 0, tile t3; M12m0t3 = M = "
                   "U ⊙ V summed over channels, filter 0, tile t3")
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
    if d["algo"] == "winograd":
        out += _winograd_text(d)
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


def _frac(v, half="1/2"):
    """A transform constant as printed: 1, -1, 0, 1/2, -1/2 (the picture: ½, -½)."""
    v = float(v)
    return str(int(v)) if v == int(v) else ("-" if v < 0 else "") + half


def _winograd_text(d):
    n, c, _, _ = d["x_shape"]
    m = d["w_shape"][0]
    th, tw = d["tile_grid"]
    ph, pw = d["padding"]
    out = []
    for name, a in d["transforms"].items():
        out.append(f"{name}  ({a.shape[0]} x {a.shape[1]}):")
        width = max(len(_frac(v)) for v in a.ravel())
        out += ["    " + " ".join(_frac(v).rjust(width) for v in row) for row in a]
    for b in range(n):
        for t in range(th):
            for u in range(tw):
                q = (b * th + t) * tw + u
                out.append(f"tile t{q} = image {b}, rows {2 * t - ph}..{2 * t + 3 - ph}, cols "
                           f"{2 * u - pw}..{2 * u + 3 - pw} (0 = padding), per channel; its "
                           "2x2 output block per filter (0 = cropped):")
                for ci in range(c):
                    out.append(f"  channel {ci}:")
                    out.append(_table(d["tiles"][b, ci, t, u], "x", d))
                for mm in range(m):
                    out.append(f"  filter {mm}, its 2x2 block of y:")
                    out.append(_table(d["blocks"][b, mm, t, u], "y", d))
    out.append("")
    return out


# --------------------------------------------------------------------------- picture
#
# Sized for a slide: at most MAX_WIDTH_IN inches wide (1600 px at the default DPI) with
# every text at least 14 pt. Cells are labelled with their IDs (a number, see the module
# docstring) rather than "c0(1,2)": the input grids show the same numbers, so a lowered
# cell is traced to its pixel by number and colour, and `--text` prints the long labels.
# A GEMM C = A @ B is drawn the way it is taught: B above C, A to the left of C, so a cell
# of C sits at the crossing of the row of A and the column of B that make it.

DPI = 150
MAX_WIDTH_IN = 1600 / DPI       # 10.67 in: 1600 px at DPI
MAX_CELL_IN = 0.36              # a cell is at most this wide (small inputs)
GAP = 1.0                       # cells between items
FONT = 14                       # notes, matrix titles, legend (pt)
TITLE_FONT = 16
SUB_FONT = 14                   # a matrix's shape under its title (grey)
OP_FONT = 22                    # "+", "="
CHAR_EM = 0.58                  # average character width of DejaVu Sans, in em
FORMATS = ("png", "svg", "pdf")


def _text_in(s, size, bold=False):
    """Width in inches of the widest line of s at `size` pt (an estimate)."""
    return max(len(line) for line in s.split("\n")) * size * (CHAR_EM + 0.06 * bold) / 72


def _lines_in(n, size):
    return n * size * 1.45 / 72


class _Canvas:
    """Items laid out in rows, left to right, wrapping at the figure's width; sizes in cell
    units once the cell size is known (render), y pointing down."""

    def __init__(self, d):
        self.d, self.entries = d, []
        self.fixed = [0.0]          # widths in cells of the items that cannot shrink

    def newline(self):
        self.entries.append(None)

    def grid(self, ids, kind, title, fade=None, labels=None, outline=None, sub=None):
        """A matrix of IDs of `kind`; labels (strings) replace the IDs where given."""
        ids = np.atleast_2d(ids)
        self.fixed.append(ids.shape[1])
        self.entries.append(("grid", dict(ids=ids, kind=kind, title=title, fade=fade,
                                          labels=labels, outline=outline, sub=sub)))

    def gemm(self, g):
        """The GEMM g = {a, b, c, ...} as a block: B above C, A left of C."""
        m = self.d["matrices"]
        self.fixed.append(m[g["a"]].shape[1] + GAP + m[g["b"]].shape[1])
        self.entries.append(("gemm", g))

    def note(self, s, size=FONT, weight="normal", full=False):
        """Text, wrapped to the figure's width (full=True: on a row of its own)."""
        if full:
            self.newline()
        self.entries.append(("note", dict(s=s, size=size, weight=weight)))
        if full:
            self.newline()

    def op(self, s):
        self.entries.append(("op", s))

    # ---- sizes, in cells, once the cell size `c` (inches) is known

    def _grid_size(self, it, c):
        r, k = it["ids"].shape
        head = _lines_in(1, FONT) + (_lines_in(1, SUB_FONT) if it["sub"] else 0)
        w = max(k, _text_in(it["title"], FONT, True) / c,
                _text_in(it["sub"] or "", SUB_FONT) / c)
        return w, r + head / c + 0.2, head / c

    def _size(self, kind, it, c, width):
        if kind == "grid":
            return self._grid_size(it, c)[:2]
        if kind == "gemm":
            m = self.d["matrices"]
            a, b = m[it["a"]], m[it["b"]]
            wa = max(a.shape[1], _text_in(self._gemm_titles(it)[0], FONT, True) / c)
            _, tb, tc = self._gemm_titles(it)
            wb = max(b.shape[1], max(_text_in(tb, FONT, True), _text_in(tc, FONT, True)) / c)
            head = (_lines_in(1, FONT) + _lines_in(1, SUB_FONT)) / c + 0.2
            return wa + GAP + wb, b.shape[0] + head + GAP + a.shape[0] + head
        if kind == "op":
            return 1.4, 1.4
        lines = self._wrapped(it, c, width)
        return (_text_in(lines, it["size"]) / c + 0.3,
                _lines_in(lines.count("\n") + 1, it["size"]) / c + 0.3)

    def _wrapped(self, it, c, width):
        import textwrap

        chars = max(20, int(width * c * 72 / (it["size"] * CHAR_EM)) - 2)
        return "\n".join(textwrap.fill(par, chars) for par in it["s"].split("\n"))

    @staticmethod
    def _gemm_titles(g):
        return (f"A = {g['a']}", f"B = {g['b']}", f"C = A @ B = {g['c']}")

    # ---- drawing

    def _draw_grid(self, ax, it, x0, y0, c, cell_font):
        from matplotlib.patches import Rectangle

        d, ids, kind = self.d, it["ids"], it["kind"]
        r, k = ids.shape
        _, _, head = self._grid_size(it, c)
        tx = it.get("title_x", x0)       # a GEMM's A: its title starts left of the matrix
        ax.text(tx, y0 + _lines_in(1, FONT) / c * 0.8, it["title"], fontsize=FONT,
                weight="bold", va="bottom")
        if it["sub"]:
            ax.text(tx, y0 + head - 0.1, it["sub"], fontsize=SUB_FONT, va="bottom",
                    color="0.3")
        top = y0 + head + 0.1
        fade, labels = it["fade"], it["labels"]
        for i in range(r):
            for j in range(k):
                v = ids[i, j]
                faded = fade is not None and fade[i, j]
                ax.add_patch(Rectangle((x0 + j, top + i), 1, 1, facecolor=color(kind, v, d),
                                       edgecolor="white" if faded else "0.35", lw=0.5,
                                       alpha=0.25 if faded else 1.0))
                t = labels[i][j] if labels is not None else str(int(v))
                ax.text(x0 + j + 0.5, top + i + 0.52, t, ha="center", va="center",
                        fontsize=cell_font, color="0.55" if faded else "black")
        for (i, j, hh, ww) in it["outline"] or ():
            ax.add_patch(Rectangle((x0 + j, top + i), ww, hh, fill=False, edgecolor="black",
                                   lw=2.5))

    def _draw_gemm(self, ax, g, x0, y0, c, cell_font):
        m, kinds = self.d["matrices"], self.d["kinds"]
        ta, tb, tc = self._gemm_titles(g)
        a, b = m[g["a"]], m[g["b"]]
        wa = max(a.shape[1], _text_in(ta, FONT, True) / c)
        xa = x0 + wa - a.shape[1]                       # A right-aligned, next to C
        xb = x0 + wa + GAP
        head = (_lines_in(1, FONT) + _lines_in(1, SUB_FONT)) / c + 0.2
        yc = y0 + b.shape[0] + head + GAP
        sub = "{} x {}".format
        self._draw_grid(ax, dict(ids=b, kind=kinds[g["b"]], title=tb, sub=sub(*b.shape),
                                 fade=None, labels=None, outline=None), xb, y0, c, cell_font)
        self._draw_grid(ax, dict(ids=a, kind=kinds[g["a"]], title=ta, sub=sub(*a.shape),
                                 fade=None, labels=None, outline=None, title_x=x0), xa, yc, c,
                        cell_font)
        self._draw_grid(ax, dict(ids=m[g["c"]], kind=kinds[g["c"]], title=tc,
                                 sub=sub(*m[g["c"]].shape), fade=None, labels=None,
                                 outline=None), xb, yc, c, cell_font)

    def render(self, title, legend):
        """The figure (matplotlib), laid out; the caller saves and closes it."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch

        ids = [it["ids"] for kind, it in filter(None, self.entries) if kind == "grid"]
        ids += [self.d["matrices"][it[k]] for kind, it in filter(None, self.entries)
                if kind == "gemm" for k in ("a", "b", "c")]
        digits = max(len(str(int(a.max()))) for a in ids) if ids else 1
        labelled = [len(t) for kind, it in filter(None, self.entries)
                    if kind == "grid" and it["labels"] for row in it["labels"] for t in row]
        digits = max([digits] + labelled)
        # the cell size: at most MAX_CELL_IN, or what FONT-sized cell numbers need (3-digit
        # IDs: winograd); and the widest item that cannot wrap must fit
        usable = MAX_WIDTH_IN - 0.3
        legible = FONT * 0.64 * digits / (0.88 * 72)
        c = min(max(MAX_CELL_IN, legible), usable / (max(self.fixed) + 0.5))
        width = usable / c                               # the row width, in cells
        cell_font = min(FONT, 0.88 * c * 72 / (0.64 * digits))
        # rows of (w, h, kind, item), wrapping at `width`
        rows, row, used = [], [], 0.0
        for e in self.entries + [None]:
            if e is None:
                if row:
                    rows.append(row)
                row, used = [], 0.0
                continue
            w, h = self._size(*e, c, width)
            if row and used + GAP + w > width:
                rows.append(row)
                row, used = [], 0.0
            row.append((w, h) + e)
            used += w + (GAP if len(row) > 1 else 0)
        fig_w = max(sum(w for w, *_ in r) + GAP * (len(r) - 1) for r in rows) + 0.6
        body_h = sum(max(h for _, h, *_ in r) + GAP for r in rows)
        title_h = (_lines_in(title.count("\n") + 1, TITLE_FONT) + 0.2) / c
        # the legend: two columns where they fit in the picture's width, else one
        entry_in = max(_text_in(e[0], FONT) for e in legend) + 0.6
        ncols = 2 if 2 * entry_in + 0.3 <= fig_w * c else 1
        fig_w = max(fig_w, (entry_in + 0.3) / c)
        legend_h = (_lines_in(-(-len(legend) // ncols), FONT * 1.1) + 0.5) / c
        fig_h = title_h + body_h + legend_h
        fig = plt.figure(figsize=(fig_w * c, fig_h * c))
        ax = fig.add_axes([0, 0, 1, 1])
        ax.set_xlim(-0.3, fig_w - 0.3)
        ax.set_ylim(fig_h, 0)
        ax.axis("off")
        ax.text(0, 0.2, title, fontsize=TITLE_FONT, weight="bold", va="top")
        y = title_h
        for r in rows:
            rh = max(h for _, h, *_ in r)
            x = 0.0
            for w, h, kind, it in r:
                y0 = y + (rh - h) / 2                   # centred in its row
                if kind == "grid":
                    self._draw_grid(ax, it, x, y0, c, cell_font)
                elif kind == "gemm":
                    self._draw_gemm(ax, it, x, y0, c, cell_font)
                elif kind == "op":
                    ax.text(x + w / 2, y0 + h / 2, it, fontsize=OP_FONT, weight="bold",
                            ha="center", va="center")
                else:
                    ax.text(x, y0 + h / 2, self._wrapped(it, c, width), fontsize=it["size"],
                            weight=it["weight"], va="center", ha="left", linespacing=1.35)
                x += w + GAP
            y += rh + GAP
        handles = [Patch(facecolor=fc, edgecolor=ec, lw=lw, alpha=alpha, label=text)
                   for text, fc, ec, lw, alpha in legend]
        fig.legend(handles=handles, loc="lower left", ncols=ncols, fontsize=FONT,
                   frameon=False, bbox_to_anchor=(0.0, 0.0), handlelength=1.4,
                   columnspacing=1.2)
        return fig


def _gemm_row(cv, d, g):
    cv.gemm(g)
    cv.note(f"GEMM {g['c']} = {g['a']} @ {g['b']}\nM = {g['M']}, N = {g['N']}, "
            f"K = {g['K']}\nx{g['count']}: {g['note']}")
    cv.newline()


def _shift_rows(cv, d, mm=0, unread="computed by the GEMM but read by no output"):
    """The K*K partial maps of filter mm as H x W grids: each cell an output reads is
    labelled with that output's ID (as in y, drawn last); the rest (never read) is faded."""
    n, c, h, wd = d["x_shape"]
    _, _, kh, kw = d["w_shape"]
    _, m, ho, wo = d["y_shape"]
    ph, pw = d["padding"]
    pos = np.arange(1, h * wd + 1).reshape(h, wd)
    cv.note(f"Shift-add for filter m = {mm}: each partial-map cell is labelled with the ID of "
            f"the output y[0, {mm}] it is added into; faded cells are {unread}.", full=True)
    for i in range(kh):
        for j in range(kw):
            s = d["shift"][i, j]
            labels = [["" for _ in range(wd)] for _ in range(h)]
            fade = np.ones((h, wd), dtype=bool)
            for oh in range(ho):
                for ow in range(wo):
                    if s[oh, ow]:
                        ih, iw = divmod(int(s[oh, ow]) - 1, wd)
                        labels[ih][iw] = str(1 + (mm * ho + oh) * wo + ow)
                        fade[ih, iw] = False
            cv.grid(pos, "p", f"P_{i}{j}", fade=fade, labels=labels,
                    sub=f"shift ({i - ph},{j - pw})")
            if (i, j) != (kh - 1, kw - 1):
                cv.op("+")
    cv.op("=")
    cv.grid(d["y"][0, mm], "y", f"y[0, {mm}]", sub=f"{ho} x {wo}")
    cv.newline()


def _winograd_rows(cv, d):
    """The transforms, one tile's trip through them, and the first of the 16 GEMMs."""
    n, c, _, _ = d["x_shape"]
    shapes = d["winograd_shapes"]
    for name, a in d["transforms"].items():
        cv.grid(np.zeros(a.shape, dtype=np.int64), "k", name, fade=(a == 0),
                labels=[[_frac(v, "½") for v in row] for row in a], sub="{} x {}".format(*a.shape))
    cv.note("B^T and A^T hold only 0 and ±1 (the input and output transforms are additions); "
            "G adds halves.")
    cv.newline()
    # tile t0 of image 0, filter 0: V per channel, U per channel, M, Y
    shown = min(c, 2)
    pos = np.arange(16).reshape(4, 4)                 # position k = 4*xi + nu of the domain
    cv.note(f"Tile t0 (image 0, rows {-d['padding'][0]}.., cols {-d['padding'][1]}..) and "
            "filter 0, as the 16 GEMMs compute them:", full=True)
    for ci in range(shown):
        cv.grid(d["tiles"][0, ci, 0, 0], "x", f"d: x[0, {ci}] tile t0", sub="4 x 4")
        cv.op("→")
        v = 1 + np.ravel_multi_index((pos, ci, 0), shapes["v"])
        cv.grid(v, "v", "V = B^T d B", sub=f"channel {ci}")
        cv.op("⊙")
        u = 1 + np.ravel_multi_index((pos, 0, ci), shapes["u"])
        cv.grid(u, "u", "U = G g G^T", sub=f"w[0, {ci}]")
        cv.op("+" if ci < shown - 1 or c > shown else "=")
    if c > shown:
        cv.note(f"... {c - shown} more\nchannels")
        cv.op("=")
    cv.grid(1 + np.ravel_multi_index((pos, 0, 0), shapes["m"]), "m", "M",
            sub="16 products / channel")
    cv.op("→")
    cv.grid(d["blocks"][0, 0, 0, 0], "y", "Y = A^T M A", sub="y[0, 0] block")
    cv.newline()
    cv.note(f"Each 2x2 block of outputs costs 16 multiplications per channel instead of 36. "
            f"Summing over channels makes the 16 positions (xi, nu) of the 4x4 domain 16 "
            f"independent GEMMs, (M x C) @ (C x P) = ({shapes['u'][1]} x {shapes['u'][2]}) @ "
            f"({shapes['v'][1]} x {shapes['v'][2]}); cell numbers are IDs of U, V and M "
            "(--text names them).", full=True)
    for g in d["gemms"][:1]:
        _gemm_row(cv, d, g)
    cv.note("... and 15 more GEMMs, one per position (xi, nu); then Y = A^T M A turns each "
            "tile's 16 numbers of M into its 2x2 block of y (run --text to see them all)",
            full=True)


def legend(d):
    """(text, facecolour, edgecolour, line width, alpha) of each legend entry of d's picture."""
    n, c, h, wd = d["x_shape"]
    x0 = color("x", 1, d)
    entries = [
        ("input pixel x: hue = position (h, w), lighter = later channel", x0, "0.35", 0.5, 1),
        ("padding zero (ID 0)", PAD_GREY, "0.35", 0.5, 1),
        ("weight w: darker = later filter", color("w", d["w"].max(), d), "0.35", 0.5, 1),
        ("output y: darker = later filter", color("y", d["y"].max(), d), "0.35", 0.5, 1),
    ]
    if "shift" in d:
        entries += [("partial map P: the input position it belongs to", color("p", 1, d),
                     "0.35", 0.5, 1),
                    ("faded: computed, read by no output", color("p", 1, d), "white", 0.5,
                     0.25)]
    if d["algo"] == "direct":
        entries.append(("black frame: the window of output (0, 0)", "white", "black", 2.5, 1))
    if d["algo"] == "winograd":
        entries += [
            ("U = G g G^T: a filter in the Winograd domain", color("u", 1, d), "0.35", 0.5, 1),
            ("V = B^T d B: an input tile (hue = tile, lighter = later channel)",
             color("v", 1, d), "0.35", 0.5, 1),
            ("M = sum_c U ⊙ V: darker = later filter", color("m", 1, d), "0.35", 0.5, 1),
            ("entry of B^T, G or A^T (faded: 0)", CONST_BLUE, "0.35", 0.5, 1)]
    arrays = "x, w, y, U, V or M" if d["algo"] == "winograd" else "x, w or y"
    entries.append((f"numbers are IDs: 1 + the element's flat index in {arrays}", "white",
                    "white", 0, 0))
    return entries


def draw(d, *paths):
    """Draw the lowering `d` (from `lowering`) to each of `paths` (PNG, SVG or PDF, by the
    suffix); returns the paths."""
    import matplotlib.pyplot as plt

    fig = picture(d)
    try:
        for path in paths:
            fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return list(paths)


def picture(d):
    """The matplotlib figure of the lowering `d`: at most MAX_WIDTH_IN wide, every text at
    least FONT pt (cell numbers shrink only for inputs too big for a slide)."""
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
    for mm in range(m):
        for ci in range(c):
            cv.grid(d["w"][mm, ci], "w", f"w[{mm}, {ci}]", sub=f"{kh}x{kw}")
    cv.note("\n".join(d["steps"][:-1]), full=True)
    if d["algo"] == "direct":
        shown = [(oh, ow) for oh in range(ho) for ow in range(wo)][:2]
        for oh, ow in shown:
            cv.grid(d["windows"][0, oh, ow].reshape(c, kh * kw), "x",
                    f"window of y[0, :, {oh}, {ow}]", sub=f"C x KH*KW = {c} x {kh * kw}")
        cv.note("read in place:\nnothing is copied\n(workspace 0 bytes)")
        cv.newline()
    elif d["algo"] == "winograd":
        _winograd_rows(cv, d)
    elif d["algo"] == "kn2row-aa":
        for g in d["gemms"][:2]:
            _gemm_row(cv, d, g)
        if len(d["gemms"]) > 2:
            cv.note(f"... and {len(d['gemms']) - 2} more taps, each GEMM followed at once by "
                    "its shift-add into y (run --text to see them all)", full=True)
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
    cv.note(f"result y {d['y_shape']}; workspace {d['workspace_bytes']} bytes "
            "(kernels.workspace_bytes)")
    title = (f"{d['algo']}:  x {d['x_shape']} (NCHW),  w {d['w_shape']} (MCKK),\n"
             f"stride {d['stride']},  padding {d['padding']}  ->  y {d['y_shape']}")
    return cv.render(title, legend(d))


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


def _outputs(out, algo, formats):
    """The files to write: --out's path with each format's suffix (--out explain.png and
    formats png,svg: explain.png and explain.svg). ValueError says what is wrong and what
    to do."""
    from pathlib import Path

    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"--format: unknown format {', '.join(bad) or '(none)'}; choose "
                         f"from {', '.join(FORMATS)}, comma-separated")
    path = Path(out or f"explain-{algo}.png")
    if path.suffix and path.suffix[1:].lower() not in FORMATS:
        raise ValueError(f"--out {path}: unknown suffix {path.suffix!r}; end it in "
                         f"{', '.join('.' + f for f in FORMATS)} or leave the suffix off")
    folder = path.parent
    if not folder.is_dir():
        what = "is not a directory" if folder.exists() else "does not exist"
        raise ValueError(f"--out {path}: the directory {folder} {what}; create it first "
                         "(mkdir -p) or choose another path")
    return [path.with_suffix("." + f) for f in formats]


def run(args):
    kernel = args.kernel if len(args.kernel) == 2 else args.kernel * 2
    stride = args.stride if len(args.stride) == 2 else args.stride * 2
    padding = args.padding if len(args.padding) == 2 else args.padding * 2
    x_shape = args.input
    w_shape = (args.filters, x_shape[1], *kernel)
    formats = [f.strip().lower() for f in args.format.split(",") if f.strip()]
    try:
        d = lowering(args.algo, x_shape, w_shape, stride, padding)
        paths = _outputs(args.out, args.algo, formats)
    except ValueError as e:
        print(f"minigrad explain: {e}", file=sys.stderr)
        return 2
    if args.text:
        print(text(d), end="")
    try:
        draw(d, *paths)
    except OSError as e:                       # e.g. a read-only directory
        print(f"minigrad explain: cannot write {e.filename or paths[0]} "
              f"({e.strerror or e}); choose a writable --out path", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path}")
    return 0


def add_parser(subparsers):
    """Register `minigrad explain` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "explain", help="draw how a convolution algorithm lowers a small input to GEMM",
        description="Draw (PNG and SVG) and optionally print (--text) how ALGO lowers a "
                    "small convolution to matrix multiplication: every lowered-matrix cell "
                    "is coloured and numbered by the element it came from (grey 0 = "
                    "padding). The picture is at most 1600 px wide, for slides.")
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
                   help="file to write, one per --format with its suffix (default "
                        "explain-ALGO.png and .svg); its directory must exist")
    p.add_argument("--format", default="png,svg",
                   help=f"comma-separated, from {', '.join(FORMATS)} (default png,svg)")
    p.add_argument("--text", action="store_true", help="also print the lowering as text")
    p.set_defaults(func=run)
    return p


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="minigrad")
    add_parser(_p.add_subparsers(dest="command", required=True))
    _a = _p.parse_args()
    sys.exit(_a.func(_a))
