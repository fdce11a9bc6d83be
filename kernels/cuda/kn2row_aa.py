"""kn2row-aa ("accumulating") on the GPU: one partial map, K^2 GEMMs, shift-add as you go.

    y = 0
    for each tap k = (kh, kw):
        P = w[:, :, kh, kw] @ x[n]     (M, H*W) per image, batched into one (N, M, H*W)
                                       buffer that every tap reuses (cupy.matmul(out=P))
        y += shift_k(P)                [kernel kn2row_shift_add with nk=1, kn2row.cu]

Backward, tap by tap with one dP buffer:
    dP  = shift_gather_k(dy)           (N, M, H*W)      [kn2row_shift_gather, nk=1]
    dx += w[:, :, kh, kw]^T @ dP[n]    (C, H*W)
    dw[:, :, kh, kw] = sum_n dP[n] @ x[n]^T

Workspace (forward, bytes allocated besides x, w and y): one M x H*W partial map per image
instead of kn2row's K^2 of them (the price: K^2 smaller GEMMs and K^2 shift-add launches),
plus each tap's contiguous M x C weight slice (short-lived):
    itemsize * (N*M*H*W + KH*KW * M*C [if KH*KW > 1])
Backward also keeps dP (N*M*H*W), dx's per-tap term (N*C*H*W) and the (C, M) slices.
"""
from . import _runtime as rt


def workspace_bytes(x_shape, w_shape, stride, padding, itemsize):
    n, c, h, w, m, kh, kw, sh, sw, ph, pw, ho, wo = rt.conv_geometry(
        x_shape, w_shape, stride, padding)
    return itemsize * (n * m * h * w + (kh * kw * m * c if kh * kw > 1 else 0))


def forward(x, w, stride, padding):
    cp = rt.get_cupy()
    g = rt.conv_geometry(x.shape, w.shape, stride, padding)
    n, c, h, wd, m, kh, kw, sh, sw, ph, pw, ho, wo = g
    xr = x.reshape(n, c, h * wd)
    P = cp.empty((n, m, h * wd), dtype=x.dtype)
    y = cp.empty((n, m, ho, wo), dtype=x.dtype)
    for k in range(kh * kw):
        cp.matmul(cp.ascontiguousarray(w[:, :, k // kw, k % kw]), xr, out=P)
        rt.launch("kn2row", "kn2row_shift_add", x.dtype, y.size, (y.size, P.size),
                  (P, y) + g + (k, 1, int(k > 0)))      # tap 0 writes y, later taps add
    return y


def backward(dy, x, w, stride, padding):
    cp = rt.get_cupy()
    g = rt.conv_geometry(x.shape, w.shape, stride, padding)
    n, c, h, wd, m, kh, kw, sh, sw, ph, pw, ho, wo = g
    dy = cp.ascontiguousarray(dy)
    xt = x.reshape(n, c, h * wd).transpose(0, 2, 1)             # (N, H*W, C) view
    dP = cp.empty((n, m, h * wd), dtype=x.dtype)
    dx = cp.empty((n, c, h * wd), dtype=x.dtype)
    term = cp.empty((n, c, h * wd), dtype=x.dtype)
    dw = cp.empty(w.shape, dtype=w.dtype)
    for k in range(kh * kw):
        i, j = k // kw, k % kw
        rt.launch("kn2row", "kn2row_shift_gather", x.dtype, dP.size, (dP.size, dy.size),
                  (dy, dP) + g + (k, 1))
        wt = cp.ascontiguousarray(w[:, :, i, j].T)              # (C, M)
        if k == 0:
            cp.matmul(wt, dP, out=dx)
        else:
            cp.matmul(wt, dP, out=term)
            dx += term
        dw[:, :, i, j] = cp.matmul(dP, xt).sum(axis=0)          # (M, C)
    return dx.reshape(x.shape), dw
