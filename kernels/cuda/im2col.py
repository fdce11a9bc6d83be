"""im2col on the GPU: one patch matrix for the whole batch, one cuBLAS GEMM.

    x (N, C, H, W) --im2col--> col (C*KH*KW, N*Ho*Wo)           [kernel im2col, im2col.cu]
    y = w (M, C*KH*KW) @ col              -> (M, N*Ho*Wo) -> (N, M, Ho, Wo)

Backward (col is rebuilt from x rather than kept from the forward pass):
    dy -> dY (M, N*Ho*Wo)
    dw   = dY @ col^T                      (M, C*KH*KW)
    dcol = w^T @ dY                        (C*KH*KW, N*Ho*Wo) --col2im--> dx (gather)

Workspace (forward, bytes allocated besides x, w and y; the same lowering as the CPU
version, whose layout this kernel reproduces):
    itemsize * (C*KH*KW * N*Ho*Wo             # col, the whole batch at once
                + M * N*Ho*Wo [if N, M > 1])  # GEMM output before its NCHW transpose
Backward holds col, dY, dcol (col's size) and dw.
"""
from . import _runtime as rt


def workspace_bytes(x_shape, w_shape, stride, padding, itemsize):
    n, c, h, w, m, kh, kw, sh, sw, ph, pw, ho, wo = rt.conv_geometry(
        x_shape, w_shape, stride, padding)
    return itemsize * (c * kh * kw * n * ho * wo + (m * n * ho * wo if n > 1 and m > 1 else 0))


def _im2col(cp, x, g):
    n, c, h, w, m, kh, kw, sh, sw, ph, pw, ho, wo = g
    col = cp.empty((c * kh * kw, n * ho * wo), dtype=x.dtype)
    rt.launch("im2col", "im2col", x.dtype, col.size, (x.size, col.size), (x, col) + g)
    return col


def forward(x, w, stride, padding):
    cp = rt.get_cupy()
    g = rt.conv_geometry(x.shape, w.shape, stride, padding)
    n, c, h, wd, m, kh, kw, sh, sw, ph, pw, ho, wo = g
    col = _im2col(cp, x, g)
    y = cp.matmul(w.reshape(m, c * kh * kw), col)                 # (M, N*Ho*Wo)
    return cp.ascontiguousarray(y.reshape(m, n, ho, wo).transpose(1, 0, 2, 3))


def backward(dy, x, w, stride, padding):
    cp = rt.get_cupy()
    g = rt.conv_geometry(x.shape, w.shape, stride, padding)
    n, c, h, wd, m, kh, kw, sh, sw, ph, pw, ho, wo = g
    col = _im2col(cp, x, g)
    dY = cp.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(m, n * ho * wo)
    dw = cp.matmul(dY, col.T).reshape(w.shape)
    del col
    dcol = cp.ascontiguousarray(cp.matmul(w.reshape(m, c * kh * kw).T, dY))
    dx = cp.empty(x.shape, dtype=x.dtype)
    rt.launch("im2col", "col2im", x.dtype, dx.size, (dx.size, dcol.size), (dcol, dx) + g)
    return dx, dw
